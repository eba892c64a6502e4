# Measured blocks of docs/diagnose.md. Exec'd in benchmarks/render_docs.py's namespace (block, fmt, boards_full,
# provenance_line, ... are its names); every number a renderer prints comes from its source JSON.


def _diag_cell(m: dict | None) -> str:
    """value [low, high], or value (n=k) where the file holds no interval (fewer than 5 models), or - if n/a."""
    if not m or m.get("value") is None:
        return "-"
    if m.get("low") is None or m.get("high") is None:
        return f"{fmt(m['value'])} (n={m['n']})"
    return f"{fmt(m['value'])} [{fmt(m['low'])}, {fmt(m['high'])}]"


@block("diagnose-pixel-anomaly", "pixel_anomaly_dev.json")
def _diagnose_pixel_anomaly(d):
    data = d["pixel_anomaly_dev.json"]
    methods = data["methods"]
    chosen = f"pixel-anomaly[{data['chosen_statistic']}]"
    order = [chosen] + sorted(m for m in methods if m.startswith("pixel-anomaly[") and m != chosen) \
        + sorted(m for m in methods if not m.startswith("pixel-anomaly["))
    kinds = sorted({k for m in methods.values() for k in m["correlation"] if k.startswith("kind=")})
    head = (["statistic", "correlation, all"] + [f"correlation, {k.removeprefix('kind=')}" for k in kinds]
            + ["strict pointing game, patch", "mask AUROC, patch"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in order:
        m = methods[name]
        label = name.removeprefix("pixel-anomaly[").removesuffix("]") if name.startswith("pixel-anomaly[") else name
        label += " (chosen)" if name == chosen else (" (for scale)" if not name.startswith("pixel-anomaly[") else "")
        cells = [_diag_cell(m["correlation"]["all"])] + [_diag_cell(m["correlation"].get(k)) for k in kinds]
        cells += [_diag_cell(m["pointing_game_strict"].get("kind=patch")), _diag_cell(m["mask_auroc"].get("kind=patch"))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    n_kind = {k.removeprefix("kind="): methods[chosen]["correlation"][k]["n"] for k in kinds}
    text = (f"Zoo `{data['zoo'].rstrip('/').split('/')[-1]}`: {data['trojaned_models']} trojaned models ("
            + ", ".join(f"{n} {k}" for k, n in n_kind.items()) + f"), {data['images_per_model']} triggered images "
            f"each; reference sample `{data['reference']}`. Rule: {data['rule']}. Chosen: "
            f"`{data['chosen_statistic']}`.")
    return "\n".join(lines) + "\n\n" + text + "\n\n" + provenance_line(data, "pixel_anomaly_dev.json")


@block("synthesize-patch-zoo", "synthesize_digits.json")
def _synthesize_patch_zoo(d):
    data = d["synthesize_digits.json"]
    return provenance_line(data, "synthesize_digits.json") + "\n\n" + boards_full(data)
