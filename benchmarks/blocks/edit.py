# ruff: noqa: F821  (the helpers are names of render_docs, which execs this file)
# Measured blocks of docs/edit.md (run inside benchmarks/render_docs.py's namespace: `block`, `fmt`, `pct`,
# `provenance_line` come from there). Every number comes from the source JSON; none is typed here.


def _edit_score(s: dict) -> str:
    """ASR after / clean cost in points, as edit_tune.py's `score` stores them (fractions)."""
    return f"{pct(s['asr'])} | {fmt(100 * s['clean_cost'], 2)}"


def _edit_setting(row: dict, chosen: dict) -> str:
    """Every field where a sweep row's setting differs from the chosen one (the sweep moves one knob at a time from
    the starting setting, so early rows also differ in the knobs chosen later)."""
    setting = row["setting"]
    knobs = [k for k in setting if setting[k] != chosen.get(k)]
    return ", ".join(f"{k} {setting[k]:g}" if isinstance(setting[k], (int, float)) else f"{k} {setting[k]}"
                     for k in knobs) or "the chosen setting"


@block("edit-tune", "edit_tune.json")
def _edit_tune(d):
    data = d["edit_tune.json"]
    kinds = data.get("kinds")
    out = [f"Dev zoo `{data['zoo']}`, {data['split']} split, {data['models']} all-to-one trojans"
           + (" (" + ", ".join(f"{n} {k}" for k, n in kinds.items()) + ")" if kinds else "")
           + f"; objective: {data['objective']}. ASR after the edit and clean-accuracy cost (points), means over the models.", ""]
    sweeps = [(name, data[name]) for name in ("rome", "finetune-layer", "trigger-key-projection") if name in data]
    if sweeps:
        out += ["| editor | setting | ASR after | clean cost | chosen |", "|---|---|---|---|---|"]
        for name, part in sweeps:
            seen = set()
            for row in part["sweep"]:
                key = repr(sorted(row["setting"].items()))
                if key in seen:  # the sweep scores the current best value again for every knob
                    continue
                seen.add(key)
                mark = "yes" if row["setting"] == part["chosen"] else ""
                out.append(f"| `{name}` | {_edit_setting(row, part['chosen'])} | {_edit_score(row)} | {mark} |")
        out += [""]
        for name, part in sweeps:
            if "start" in part:
                changed = [k for k in part["chosen"] if part["chosen"][k] != part["start"].get(k)]
                out.append(f"`{name}` chosen: " + (", ".join(f"{k} {part['chosen'][k]:g} (start {part['start'][k]:g})"
                                                           for k in changed) or "the starting setting") + ".")
        out += [""]
    if "final" in data:
        out += ["Every registered editor with its defaults, on the same dev models (the tuning set):", "",
                "| editor | ASR after | clean cost | s/model |", "|---|---|---|---|"]
        out += [f"| `{name}` | {_edit_score(s)} | {fmt(s['seconds'], 2)} |" for name, s in data["final"].items()]
        out += [""]
    return "\n".join(out) + "\n" + provenance_line(data, "edit_tune.json")


@block("edit-archs", "edit_archs.json")
def _edit_archs(d):
    data = d["edit_archs.json"]
    archs = data["archs"]
    names = list(dict.fromkeys(n for a in archs.values() for n in a["editors"]))
    per_layer = list(dict.fromkeys(n for a in archs.values() for n in a.get("per_layer", {})))

    def both(m):
        return f"{pct(m['asr'])} / {pct(m['clean_acc'])}"

    head = ["editor", *[f"{arch} (traced `{a['traced_layer']}`)" for arch, a in archs.items()]]
    lines = [f"Trigger: {data['trigger']}; budget: {data['budget']}. ASR after / clean accuracy.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             "| before | " + " | ".join(both(a["before"]) for a in archs.values()) + " |"]
    for name in names:
        cells = []
        for a in archs.values():
            e = a["editors"].get(name)
            if e is None:
                cells.append("-")
                continue
            where = "" if e["layer"] == a["traced_layer"] else f" (at `{e['layer']}`)"
            cells.append(both(e) + where)
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    for name in per_layer:
        cells = [both(a["per_layer"][name]["mean_over_layers"]) + f" (best `{a['per_layer'][name]['best_layer']}`)"
                 if name in a.get("per_layer", {}) else "-" for a in archs.values()]
        lines.append(f"| `{name}`, mean over every layer | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + provenance_line(data, "edit_archs.json")
