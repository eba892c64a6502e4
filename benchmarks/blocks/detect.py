# Measured blocks of docs/detect.md. Run in benchmarks/render_docs.py's namespace (block, fmt, provenance_line, ...).
# Every number a block shows is read from its source JSON (or counted from its per-model rows); none is typed here.

import math
from collections import Counter


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _list_cell(v, digits=3):
    """[value, low, high(, n)] as the detect_dev / mntd_digits scripts store an estimate -> "v [lo, hi]"."""
    if v is None:
        return "-"
    if isinstance(v, (int, float)):
        return "-" if _missing(v) else fmt(v, digits)
    value, low, high = v[0], v[1], v[2]
    if _missing(value):
        return "-"
    if _missing(low) or _missing(high):
        return fmt(value, digits)
    return f"{fmt(value, digits)} [{fmt(low, digits)}, {fmt(high, digits)}]"


def _dev_variant_table(summary: dict, names: list) -> str:
    """Rows of benchmarks/detect_dev.py's study: one per variant, mean / min poisoned-sample AUROC over the dev
    zoo's trojans, by trigger kind, crude trojans only, seconds per model."""
    kinds = sorted({k for n in names for k in summary[n].get("by_kind", {})})
    head = ["variant", "trojans", "mean AUROC", "min AUROC", *kinds, "crude", "s/model"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in names:
        s = summary[n]
        lines.append("| " + " | ".join([f"`{n}`", str(s["models"]), fmt(s["mean_auroc"]), fmt(s["min_auroc"]),
                                        *[fmt(s["by_kind"].get(k)) for k in kinds], fmt(s.get("crude")),
                                        fmt(s.get("mean_seconds"), 2)]) + " |")
    return "\n".join(lines)


@block("detect-dev-ac", "detect_dev.json")
def _detect_dev_ac(d):
    data = d["detect_dev.json"]
    names = [n for n in data["summary"] if n.startswith("ac[")]
    out = [_dev_variant_table(data["summary"], names), ""]
    # what the cluster decisions did in each trojan's target class (the class holding most of its poison), and
    # how many clusters of other classes ExRe confirmed as poison (false alarms), counted from the per-model rows
    head = ["variant", "target class: candidate flagged", "target class: confirmed poison by ExRe",
            "other classes: clusters confirmed poison"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in names:
        flagged = confirmed = false_alarms = trojans = 0
        for m in data["per_model"].values():
            classes = m["ac"][n]
            target = max(classes, key=lambda c: c["poison_in_class"])
            trojans += 1
            flagged += bool(target["flagged"])
            confirmed += bool(target["poison"])
            false_alarms += sum(bool(c["poison"]) for c in classes if c is not target and c["poison_in_class"] == 0)
        out.append(f"| `{n}` | {flagged} of {trojans} | {confirmed} of {trojans} | {false_alarms} |")
    return "\n".join(out) + "\n\n" + provenance_line(data, "detect_dev.json")


@block("detect-dev-strip", "detect_dev.json")
def _detect_dev_strip(d):
    data = d["detect_dev.json"]
    names = [n for n in data["summary"] if n.startswith("strip[")]
    return _dev_variant_table(data["summary"], names) + "\n\n" + provenance_line(data, "detect_dev.json")


@block("detect-dev-baselines", "detect_dev.json")
def _detect_dev_baselines(d):
    data = d["detect_dev.json"]
    names = [n for n in data["summary"] if not n.startswith(("ac[", "strip["))]
    out = [_dev_variant_table(data["summary"], names), ""]
    out += ["| `final-layer-outlier` statistic | model AUROC (all dev models) | target label accuracy | models |",
            "|---|---|---|---|"]
    for n, m in data.get("model_level", {}).items():
        out.append(f"| `{n}` | {fmt(m['auroc'])} | {fmt(m['target_accuracy'])} | {m['models']} |")
    return "\n".join(out) + "\n\n" + provenance_line(data, "detect_dev.json")


@block("detect-dev-final", "detect_dev.json")
def _detect_dev_final(d):
    """`detect_dev.py --final`: the chosen defaults run through the detect task's own scoring on the dev zoo."""
    data = d["detect_dev.json"]
    final = data.get("final_sample_level", {})
    groups = sorted({g for t in final.values() for g in t.get("auroc_by_group", {})})
    head = ["sample-level tool", "trojans", "AUROC [95% CI]", "TPR@5%FPR [95% CI]", *groups, "s/model"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, t in final.items():
        lines.append("| " + " | ".join([f"`{name}`", str(t["auroc"][3]), _list_cell(t["auroc"]), _list_cell(t["tpr@5fpr"]),
                                        *[fmt(t["auroc_by_group"].get(g)) for g in groups],
                                        fmt(t["seconds"][0], 2)]) + " |")
    model = data.get("final_model_level", {})
    if model:
        lines += ["", "| model-level tool | models | AUROC, all dev models [95% CI] | target label accuracy |", "|---|---|---|---|"]
        for name, t in model.items():
            lines.append(f"| `{name}` | {t['models']} | {_list_cell(t['auroc_all_models'])} | {fmt(t['target_accuracy'])} |")
    return "\n".join(lines) + "\n\n" + provenance_line(data, "detect_dev.json")


@block("detect-vs-art-decisions", "vs_art.json")
def _detect_vs_art_decisions(d):
    data = d["vs_art.json"]
    ac = data["summary"]["activation_clustering"]
    return (f"| our activation clustering | TPR | FPR |\n|---|---|---|\n"
            f"| its own decisions (clusters confirmed by ExRe) | {fmt(ac['ours_decisions']['tpr'])} | "
            f"{fmt(ac['ours_decisions']['fpr'])} |\n\n" + provenance_line(data, "vs_art.json"))


# ---- blocks whose source is written by a converted script (rendered once that script has been rerun) ----------

@block("detect-nc-dev", "nc_dev_sweep.json")
def _detect_nc_dev(d):
    """benchmarks/nc_dev.py on the dev zoo's training split: each configuration, cut after fewer epochs."""
    data = d["nc_dev_sweep.json"]
    out = []
    for name, run in data["runs"].items():
        s = run.get("summary", {})
        out += [(f"`{name}`: {s.get('models')} models ({s.get('trojaned')} trojaned), "
                 f"{fmt(s.get('seconds_per_model'), 2)} s a model, {fmt(s.get('mean_epochs'), 1)} epochs a label on average."),
                ""]
        head = ["epochs", "AUROC", "AUROC crude", "target label", "clean models below 2", "trojaned above 2"]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for cap in run.get("by_cap", {}).values():
            if cap:
                out.append("| " + " | ".join([str(cap.get("epochs_cap", "-")), fmt(cap.get("auroc")), fmt(cap.get("auroc_crude")),
                                              fmt(cap.get("target_accuracy")), fmt(cap.get("clean_below_2")),
                                              fmt(cap.get("trojaned_above_2"))]) + " |")
        clean = Counter(r["label"] for r in run["models"] if not r["trojaned"])
        if clean:
            out += ["", "Label of the smallest mask on the clean models (label: models): "
                    + ", ".join(f"{label}: {n}" for label, n in sorted(clean.items(), key=lambda kv: (-kv[1], kv[0]))) + "."]
        out.append("")
    return "\n".join(out).rstrip() + "\n\n" + provenance_line(data, "nc_dev_sweep.json")


@block("detect-nc-batched", "nc_batched.json")
def _detect_nc_batched(d):
    data = d["nc_batched.json"]
    head = ["models", "seconds: batched", "seconds: label by label", "speed-up", "largest mask difference",
            "target label: batched / by label", "trigger IoU: batched / by label"]
    row = [str(data["models"]), fmt(data["seconds_batched"], 2), fmt(data["seconds_per_label_loop"], 2),
           f"{fmt(data['speedup'], 2)}x", fmt(data["max_mask_difference"], 4),
           f"{fmt(data['target_accuracy_batched'])} / {fmt(data['target_accuracy_per_label'])}",
           f"{fmt(data['trigger_iou_batched'])} / {fmt(data['trigger_iou_per_label'])}"]
    return ("| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n| " + " | ".join(row) + " |\n\n"
            + provenance_line(data, "nc_batched.json"))


@block("detect-mntd", "mntd_digits.json")
def _detect_mntd(d):
    """benchmarks/mntd_digits.py: held-out AUROC per zoo; for the shadow-trained detectors also every model."""
    data = d["mntd_digits.json"]
    zoos = data["zoos"]
    names = list(dict.fromkeys(n for z in zoos.values() for n in z["detectors"]))
    head = ["detector"]
    for zname, z in zoos.items():
        head += [f"`{zname}` held out ({z.get('test_clean', '?')} clean, {z['test_trojaned']} trojaned)",
                 f"`{zname}`, all {z.get('all_models', '?')} models"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in names:
        cells = []
        for z in zoos.values():
            e = z["detectors"].get(n, {})
            cells += [_list_cell(e.get("held_out", {}).get("all")), _list_cell(e.get("all_models", {}).get("all"))]
        lines.append(f"| `{n}` | " + " | ".join(cells) + " |")
    builds = []
    for zname, z in zoos.items():
        for n in ("mntd", "mntd-oc"):
            b = z["detectors"].get(n, {}).get("build")
            if b:
                builds.append(f"`{n}` on `{zname}`: {b.get('shadows_trained')} shadows trained in this run, build "
                              f"{fmt(b.get('cpu_seconds'), 1)} CPU-s ({fmt(b.get('wall_seconds'), 1)} s wall), then "
                              f"{fmt(b.get('seconds_per_model_after_build'), 4)} s a model")
    out = "\n".join(lines)
    if builds:
        out += "\n\nCost: " + "; ".join(builds) + "."
    return out + "\n\n" + provenance_line(data, "mntd_digits.json")


@block("detect-mntd-sweep", "mntd_digits.json")
def _detect_mntd_sweep(d):
    """`mntd_digits.py --sweep` on the dev zoo: AUROC over every dev model, mean (and sd) over meta-classifier seeds."""
    data = d["mntd_digits.json"]
    sweep = data["zoos"].get("digits-dev", {}).get("sweep", {})
    lines = ["| shadow recipe / shadows per kind | seeds | AUROC, all dev models: mean | sd | held out (seed 0) |",
             "|---|---|---|---|---|"]
    quality = []
    for name, v in sweep.items():
        if name.endswith("/shadow_quality"):
            quality.append(f"`{name.split('/')[0]}`: clean accuracy {fmt(v['clean_accuracy'])}, jumbo attack success "
                           f"{fmt(v['jumbo_attack_success_rate'])} ({v['shadows']} shadows)")
            continue
        runs = v.get("runs", [])
        sd = fmt(v["all_models_sd"]) if len(runs) > 1 else "-"
        lines.append(f"| `{name}` | {len(runs)} | {fmt(v['all_models_mean'])} | {sd} | "
                     f"{fmt(runs[0]['held_out']) if runs else '-'} |")
    out = "\n".join(lines)
    if quality:
        out += "\n\nShadow quality on the digits test images the auditor does not hold: " + "; ".join(quality) + "."
    return out + "\n\n" + provenance_line(data, "mntd_digits.json")
