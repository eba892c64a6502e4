# Measured blocks of docs/audit.md (and the README's audit line). Run in benchmarks/render_docs.py's namespace
# (block, cell, fmt, provenance_line, ...). Every number is read from its source JSON; none is typed here.


@block("calibration", "calibration.json")
def _calibration(d):
    data = d["calibration.json"]
    head = ["detector", "role", "AUROC (raw)", "cross-entropy", "Brier", "ECE", "target acc"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in data["detectors"]:
        lines.append("| " + " | ".join([t["tool"], t["role"], fmt(t["auroc"]), cell(t["cross_entropy"]), cell(t["brier"]),
                                        cell(t["ece"]), cell(t["target_accuracy"])]) + " |")
    first = data["detectors"][0]
    n = f"{first['n_clean']} clean + {first['n_trojaned']} trojaned"
    return ("\n".join(lines) + f"\n\n{data['population']} ({n} models); TrojAI's cross-entropy bar: "
            f"{data['trojai_ce_bar']}; a constant 0.5 scores ln 2. {provenance_line(data, 'calibration.json')}\n")


@block("audit-default", "audit_default.json")
def _audit_default(d):
    data = d["audit_default.json"]
    s = data["summary"]
    head = ["model", "truth", "kind", "P(trojaned)", "verdict", "headline detector", "target (true)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in data["audits"]:
        truth = "trojaned" if a["trojaned"] else "clean"
        tgt = "-" if a["target"] is None else str(a["target"]) + (f" ({a['true_target']})" if a["true_target"] is not None else "")
        lines.append("| " + " | ".join([f"`{a['model']}`" + (" (full audit)" if a["full"] else ""), truth, a["kind"] or "-",
                                        fmt(a["p_trojaned"]), a["verdict"] + ("" if a["right"] else " (wrong)"),
                                        a["headline"], tgt]) + " |")
    f = data["foreign_formats"]
    foreign = "; ".join(f"{x['format']} ({x['arch']}): P(trojaned) {fmt(x['p_trojaned'])}, {x['verdict']}, target "
                        f"{x['target']}, same scores as the store format: {'yes' if x['same_scores_as_store_format'] else 'no'}"
                        for x in f)
    return ("\n".join(lines) + f"\n\n{data['population']}. Verdicts right: {s['verdicts_right']} of {s['audits']} "
            f"({cell(s['verdict_accuracy'])}); trojans {s['trojans_right']}, clean {s['clean_right']}; target labels right: "
            f"{s['targets_right']} ({cell(s['target_accuracy'])}). The first trojan as other layouts: {foreign}. "
            f"{provenance_line(data, 'audit_default.json')}\n")
