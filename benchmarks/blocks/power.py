# Measured blocks of the large zoo (issue 16): docs/zoo.md (`large-zoo`), docs/detect.md (`detect-rss`,
# `board-large-detect`, `large-curves`) and docs/leaderboards.md (`power`). Run in benchmarks/render_docs.py's
# namespace (block, fmt, cell, board_table, provenance_line, ...). Every number is read from the source JSON.


@block("large-zoo", "large_zoo.json")
def _large_zoo(d):
    data = d["large_zoo.json"]
    lines = ["| trigger kind | planned | built | rejected by the gate | held out (built) | mean ASR |", "|---|---|---|---|---|---|"]
    for kind, t in data["by_axis"]["kind"].items():
        lines.append(f"| {kind} | {t['planned']} | {t['built']} | {t['rejected']} | {t['held_out_built']} | "
                     f"{fmt(t.get('mean_asr'))} |")
    c, t = data["clean"], data["trojaned"]
    lines.append(f"| (clean) | {c['planned']} | {c['built']} | - | {c['held_out_built']} | - |")
    lines.append(f"| **all trojans** | {t['planned']} | {t['built']} | {t['rejected']} | {t['held_out_built']} | "
                 f"{fmt(t.get('mean_asr'))} |")
    rates = ", ".join(f"{level}: {v['built']} of {v['planned']}" for level, v in data["by_axis"]["rate"].items())
    modes = ", ".join(f"{level}: {v['built']} of {v['planned']}" for level, v in data["by_axis"]["mode"].items())
    return ("\n".join(lines) + f"\n\n{data['models_built']} of {data['models_planned']} models built "
            f"({data['held_out_built']} held out; at least {data['min_held_out_trojans_per_kind']} held-out trojans per "
            f"kind) in {data['build_seconds']:.1f} s of wall time on {data['provenance']['cores']} cores "
            f"({data['models_per_minute']:.2f} models per minute, {data['builds']} build); mean clean accuracy {fmt(data['mean_clean_accuracy'], 4)}. Trojans built "
            f"per poison rate: {rates}; per mode: {modes}.\n\n" + provenance_line(data, "large_zoo.json"))


@block("detect-rss", "detect_rss.json")
def _detect_rss(d):
    data = d["detect_rss.json"]
    lines = ["| zoo | models | held out | track (s) | driver peak RSS (MiB) | largest worker (MiB) | peak, bound (MiB) |",
             "|---|---|---|---|---|---|---|"]
    for name, z in data["zoos"].items():
        lines.append(f"| {name} | {z['models']} | {z['test_models']} | {z['track_seconds']:.1f} | "
                     f"{z['driver_peak_rss_mib']:.1f} | {z['worker_peak_rss_mib']:.1f} | {z['peak_rss_mib']:.1f} |")
    return ("\n".join(lines) + f"\n\n{data['size_factor']:.2f}x the models; peak RSS ratio {data['rss_ratio']:.3f} "
            f"(limit {data['limit']}).\n\n" + provenance_line(data, "detect_rss.json"))


def _large_boards(data):
    return [b for b in data["digits-large"]["boards"] if b["task"] in ("detect-model", "detect-samples")]


@block("board-large-detect", "power.json")
def _board_large_detect(d):
    data = d["power.json"]
    large = data["digits-large"]
    out = [f"Run `{large['run_id']}` of the detect track ({large['run_status']}, {large['jobs_finished']} jobs "
           f"finished), read back by `benchmarks/power.py`."]
    if large["run_status"] != "complete":
        out[0] += (" The run was stopped before all its jobs had finished: a board covers the models its `n` "
                   "column counts, and the sample-level board only the trojans scored before the stop.")
    out.append("")
    for b in _large_boards(data):
        board = b["board"]
        cols = [(board["key"], board["key"].upper() if board["key"] == "auroc" else board["key"])]
        cols += [(m, m) for m in ("auroc[kind=adaptive-blend]", "auroc[kind=adaptive-patch]", "auroc[insidious]")
                 if any(m in t["metrics"] for t in board["tools"])]
        out += [f"#### {board['title']}", "", board_table(board, cols, models=True), ""]
    return "\n".join(out) + provenance_line(data, "power.json")


def curve_tables(boards: list[dict], axes=("poison_rate", "epochs", "lr")) -> list[str]:
    """Each board's key column per level of each axis (power.json's `curves`), one markdown table per axis."""
    out = []
    for b in boards:
        for axis in axes:
            curves = b["curves"].get(axis)
            if not curves:
                continue
            levels = sorted({p["level"] for pts in curves.values() for p in pts})
            counts = {p["level"]: (p["n_trojaned"], p["n_clean"]) for pts in curves.values() for p in pts}
            head = ["tool", *[f"{lv} ({counts[lv][0]}+{counts[lv][1]})" if counts[lv][1] else f"{lv} (n={counts[lv][0]})"
                              for lv in levels]]
            per_level = "trojans + clean models" if any(c[1] for c in counts.values()) else "trojans"
            lines = [f"{b['task']}, {b['key']} by {axis.replace('_', ' ')} ({per_level} per level):", "",
                     "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for tool, pts in curves.items():
                at = {p["level"]: {"n": p["n_trojaned"] + p["n_clean"], **p} for p in pts}
                lines.append("| " + " | ".join([tool, *[cell(at.get(lv)) for lv in levels]]) + " |")
            out += lines + [""]
    return out


@block("large-curves", "power.json")
def _large_curves(d):
    data = d["power.json"]
    return "\n".join(curve_tables(_large_boards(data))) + provenance_line(data, "power.json")


def _carried(section: dict) -> str:
    by = section.get("computed_by")
    return (f", computed by power.py run `{by['run_id']}` at commit `{by['commit'][:12]}` and carried over unchanged "
            "(that run's store is not kept)") if by else ""


@block("power", "power.json")
def _power(d):
    data = d["power.json"]
    lines = ["| zoo | board | key | tools | models (key cell) | widest / median half-width | vs the strongest baseline |",
             "|---|---|---|---|---|---|---|"]
    configs = [c for c in ("digits-bench", "digits-large", "digits-large-repair") if c in data]
    for config in configs:
        for b in data[config]["boards"]:
            n = max((t["n_models"] for t in b["tools"]), default=0)
            hw = b["key_half_width"]
            verdicts = ", ".join(f"{k} {v}" for k, v in b["vs_strongest_baseline"].items()) or "-"
            lines.append(f"| {config.removesuffix('-repair')} | {b['task']} | {b['key']} | {len(b['tools'])} | {n} | "
                         f"{fmt(hw['max']) if hw else '-'} / {fmt(hw['median']) if hw else '-'} | {verdicts} |")
    pairs = ["", "Paired verdicts among each board's top three tools on the large zoo (Holm-corrected within the board; "
             "a's verdict against b):", "", "| board | a | b | difference [interval] | p (Holm) | verdict |", "|---|---|---|---|---|---|"]
    for b in [b for c in configs if c.startswith("digits-large") for b in data[c]["boards"]]:
        for p in b["top_pairs"]:
            ci = f"{p['diff']:+.3f} [{p['low']:+.3f}, {p['high']:+.3f}]"
            pairs.append(f"| {b['task']} | {p['a']} | {p['b']} | {ci} | {fmt(p['p_holm'])} | {p['verdict']} |")
    if old := [f"{c.removesuffix('-repair')} {b['task']}" for c in configs for b in data[c]["boards"] if old_test(b)]:
        pairs += ["", f"The verdicts of {', '.join(old)} {OLD_TEST}."]
    big = data["large_model_detection"]
    runs = " ".join(f"{c}: run `{data[c]['run_id']}` ({data[c]['source']}){_carried(data[c])}." for c in configs)
    return ("\n".join(lines + pairs) + f"\n\nSections: {runs} On the large zoo the widest model-detection AUROC "
            f"interval has half-width {fmt(big['max_auroc_half_width'])} (the issue's limit: {big['limit']}).\n\n"
            + provenance_line(data, "power.json"))


@block("large-repair-curves", "power.json")
def _large_repair_curves(d):
    data = d["power.json"]
    boards = data["digits-large-repair"]["boards"] if "digits-large-repair" in data else []
    return "\n".join(curve_tables(boards, ("poison_rate", "mode", "epochs", "lr"))) + provenance_line(data, "power.json")
