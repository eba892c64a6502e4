# Measured blocks of docs/studies.md: `study-<name>` renders benchmarks/results/study_<name>.json, written by
# benchmarks/studies.py: {"provenance", "study", "seconds", "findings": {headline: text}, "study_config": the run's
# config, "tables": [{"task", "tool", "metric", "value", "low", "high", "n", "method"}, ...]}, one row per aggregate of the
# study's run, and for the text study (whose run is the tracks' per-model rows) "boards": its boards as board_json. Exec'd in render_docs' namespace (block, provenance_line, ...). The renderers only arrange what the
# file holds: a row or column the file lacks is left out, a missing cell is "-", an undefined value "n/a".

import math as _study_math
import re as _study_re


def _study_ok(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and _study_math.isfinite(x)


def _study_cell(r: dict | None, digits: int = 3) -> str:
    """As the study's Estimate prints it: value [low, high]; value (n=k) below 5 units; value alone without a CI."""
    if r is None:
        return "-"
    v, lo, hi, n = r.get("value"), r.get("low"), r.get("high"), r.get("n")
    if not _study_ok(v):
        return "n/a"
    if r.get("metric") in ("params", "width", "depth"):
        return f"{v:.0f}"
    if _study_ok(n) and 0 < n < 5:
        return f"{v:.{digits}f} (n={n})"
    if _study_ok(lo) and _study_ok(hi):
        return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
    return f"{v:.{digits}f}"


def _study_rows(data: dict, task: str) -> list[dict]:
    return [r for r in data.get("tables") or [] if r.get("task") == task]


def _study_ordered(names, preferred) -> list:
    """`names` (first-seen order), those in `preferred` first and in its order."""
    names = list(dict.fromkeys(names))
    rank = {n: i for i, n in enumerate(preferred)}
    return sorted(names, key=lambda n: rank.get(n, len(rank)))


def _study_markdown(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def _study_pivot(data: dict, task: str, columns: list[tuple[str, str]], tools: list[str] | None = None,
                 first: str = "tool", key=None, only: set | None = None) -> str:
    """One row per tool of `task`, one column per (metric, header) of `columns` that some tool has. `tools`: the
    preferred order (others follow); `key`: a sort key instead; `only`: these tools and no others."""
    rows = [r for r in _study_rows(data, task) if only is None or r.get("tool") in only]
    cells = {(r.get("tool"), r.get("metric")): r for r in rows}
    names = list(dict.fromkeys(r.get("tool") for r in rows))
    names = sorted(names, key=key) if key else _study_ordered(names, tools or [])
    cols = [(m, h) for m, h in columns if any((t, m) in cells for t in names)]
    names = [t for t in names if any((t, m) in cells for m, _ in cols)]
    if not cols or not names:
        return ""
    return _study_markdown([first, *(h for _, h in cols)],
                           [[f"`{t}`", *(_study_cell(cells.get((t, m))) for m, _ in cols)] for t in names])


def _study_split(metric: str, sep: str):
    """'base[arg]' -> (base, arg) for sep '['; 'base@arg' -> (base, arg) for sep '@'; else None."""
    if sep == "[":
        m = _study_re.fullmatch(r"([^\[\]]+)\[([^\[\]]+)\]", metric or "")
    else:
        m = _study_re.fullmatch(r"([^@]+)@([^@]+)", metric or "")
    return (m.group(1), m.group(2)) if m else None


def _study_grid(data: dict, task: str, sep: str, columns: list[str], headers: dict, tools: list[str],
                bases: list[str], first: tuple[str, str], base_names: dict | None = None) -> str:
    """Rows (tool, base metric), columns the argument of metrics 'base[arg]' / 'base@arg' in `columns` order
    (arguments the file has beyond them follow)."""
    cells, pairs, args = {}, [], []
    for r in _study_rows(data, task):
        split = _study_split(r.get("metric"), sep)
        if split is None:
            continue
        base, arg = split
        cells[(r.get("tool"), base, arg)] = r
        pairs.append((r.get("tool"), base))
        args.append(arg)
    if not cells:
        return ""
    args = _study_ordered(args, columns)
    tool_rank = {t: i for i, t in enumerate(tools)}
    base_rank = {b: i for i, b in enumerate(bases)}
    pairs = sorted(dict.fromkeys(pairs), key=lambda p: (tool_rank.get(p[0], len(tool_rank)),
                                                        base_rank.get(p[1], len(base_rank))))
    base_names = base_names or {}
    return _study_markdown([*first, *(headers.get(a, a) for a in args)],
                           [[f"`{t}`", base_names.get(b, b), *(_study_cell(cells.get((t, b, a))) for a in args)]
                            for t, b in pairs])


def _study_findings(data: dict) -> str:
    f = data.get("findings") or {}
    if not f:
        return ""
    return "Findings, as `trojanbench study` prints them:\n\n" + "\n".join(f"- {k}: {v}" for k, v in f.items())


def _study_old(data: dict) -> bool:
    """Tables stored before the studies' cells carried their interval's method, i.e. before they moved from plain
    percentile bootstraps to the boards' intervals."""
    cells = [r for r in data.get("tables") or [] if _study_ok(r.get("low"))]
    return bool(cells) and not any(r.get("method") for r in cells)


def _study_join(data: dict, source: str, parts: list[tuple[str, str]]) -> str:
    out = [provenance_line(data, source), _study_findings(data)]
    out += [f"**{title}**\n\n{table}" for title, table in parts if table]
    if _study_old(data):
        out.append("The intervals in this block are plain percentile bootstraps, from before the studies moved to the "
                   "boards' intervals (a score interval for AUROC, expanded percentiles for means); not re-run yet.")
    return "\n\n".join(p for p in out if p)


# --- text ------------------------------------------------------------------------------------------------------

@block("study-text", "study_text.json")
def _study_text(d):
    """The findings the study printed, then every board of its run (the repair, edit and diagnose tracks)."""
    data = d["study_text.json"]
    old = any(old_test(b) for b in data["boards"])  # the findings' paired verdicts are the boards' tests
    return (_study_join(data, "study_text.json", []) + (f"\n\nThe paired verdicts above {OLD_TEST}." if old else "")
            + "\n\n" + boards_full(data))


# --- subnetworks -------------------------------------------------------------------------------------------------

_STUDY_SUBNETS = ["supermask@random", "random-mask@random", "supermask@trained", "magnitude@trained",
                  "random-mask@trained"]


def _study_density_order(args: list[str]) -> list[str]:
    def value(a):
        try:
            return float(a)
        except ValueError:
            return float("inf")
    return sorted(dict.fromkeys(args), key=value)


@block("study-subnetworks", "study_subnetworks.json")
def _study_subnetworks(d):
    data = d["study_subnetworks.json"]
    densities = [_study_split(r.get("metric"), "@")[1] for r in _study_rows(data, "subnetworks-density")
                 if _study_split(r.get("metric"), "@")]
    parts = [
        (("In context, at the density of the analysis (alone = the subnetwork only; removed = its edges read the "
         "training mean or zero; patched = its edges read the isolated run's inputs)"),
         _study_pivot(data, "subnetworks", [("iso_acc", "alone"), ("full_acc", "full network"),
                                            ("removed_mean_acc", "removed (mean)"), ("removed_zero_acc", "removed (zero)"),
                                            ("patched_acc", "patched"), ("gap", "gap"), ("gap_zero", "gap (zero)"),
                                            ("restored", "restored"), ("finetuned_acc", "alone after fine-tuning")],
                      _STUDY_SUBNETS, "subnetwork")),
        ("Over density (share of each layer's weights the mask keeps)",
         _study_grid(data, "subnetworks-density", "@", _study_density_order(densities),
                     {a: f"density {a}" for a in densities}, _STUDY_SUBNETS, ["iso_acc", "removed_mean_acc", "gap"],
                     ("subnetwork", "measure"), {"iso_acc": "alone", "removed_mean_acc": "removed (mean)",
                                                 "gap": "gap"})),
    ]
    return _study_join(data, "study_subnetworks.json", parts)


# --- continuum ---------------------------------------------------------------------------------------------------

def _study_points(data: dict) -> tuple[list[str], set[str]]:
    """The points in the study's order and the control ones: from the run's config, else from the findings."""
    cfg = data.get("study_config") or {}
    points = [p for p in (cfg.get("points") or []) if isinstance(p, dict) and p.get("name")]
    if points:
        return [p["name"] for p in points], {p["name"] for p in points if p.get("control")}
    text = (data.get("findings") or {}).get("points", "")
    names, controls = [], set()
    for part in _study_re.split(r" -> | \| ", text):
        name = part.removesuffix(" (control)").strip()
        if name:
            names.append(name)
            if part.endswith("(control)"):
                controls.add(name)
    return names, controls


@block("study-continuum", "study_continuum.json")
def _study_continuum(d):
    data = d["study_continuum.json"]
    points, controls = _study_points(data)
    headers = {p: f"{p} (control)" for p in controls}

    def grid(task, tools, bases, names=None):
        return _study_grid(data, task, "[", points, headers, tools, bases, ("tool", "measure"), names)

    parts = [
        (("The trojans at each point (ASR of the trojaned models and of the clean twins; how the poisoned training "
         "images were edited: share of pixels changed, mean change on them, share of the edit that is one fixed "
         "pattern; share of the training set poisoned or relabelled)"),
         grid("continuum-trojans", ["trojaned", "clean-twin", "trigger"],
              ["asr", "clean_acc", "edit_area", "edit_intensity", "edit_fixed", "poisoned_share"],
              {"asr": "ASR", "clean_acc": "clean accuracy", "edit_area": "edit footprint",
               "edit_intensity": "edit intensity", "edit_fixed": "fixed-pattern share",
               "poisoned_share": "poisoned share"})),
        ("Model-level detection (AUROC of the trojaned models vs the clean twins; Neural Cleanse's target label found)",
         grid("continuum-detect-model", ["neural-cleanse", "entropy", "accuracy", "weight-stats", "random"],
              ["auroc", "target_accuracy"], {"auroc": "AUROC", "target_accuracy": "target label found"})),
        ("Sample-level detection (which training samples were poisoned: mean per-model AUROC)",
         grid("continuum-detect-samples", ["spectral", "activation-clustering", "strip", "knn-pixels", "random"],
              ["auroc"], {"auroc": "AUROC"})),
        ("Attribution against the trigger's footprint (correlation; pointing game where the footprint is small)",
         grid("continuum-attribution", ["saliency", "integrated-gradients", "sobel"], ["correlation", "pointing_game"],
              {"correlation": "correlation", "pointing_game": "pointing game"})),
    ]
    return _study_join(data, "study_continuum.json", parts)


# --- width-depth -------------------------------------------------------------------------------------------------

def _study_shape_key(tool: str):
    """Shapes by architecture, then depth ('mlp d1 w187'); the chance row last."""
    m = _study_re.fullmatch(r"(\S+) d(\d+) w(\d+)", tool or "")
    if not m:
        return (1, 0, "", 0, tool)
    return (0, 0 if m.group(1) == "mlp" else 1, m.group(1), int(m.group(2)), tool)


def _study_eps_key(arg: str):
    try:
        num, _, den = arg.removeprefix("eps=").partition("/")
        return float(num) / (float(den) if den else 1.0)
    except ValueError:
        return float("inf")


@block("study-width-depth", "study_width-depth.json")
def _study_width_depth(d):
    data = d["study_width-depth.json"]
    tasks = sorted(dict.fromkeys(r.get("task") for r in data.get("tables") or []
                                 if str(r.get("task", "")).startswith("width-depth-")),
                   key=lambda t: (t != "width-depth-digits", t))
    parts = []
    for task in tasks:
        dataset = task.removeprefix("width-depth-")
        parts.append(((f"{dataset}: one row per shape at equal parameter count (PGD accuracy at the family's headline "
                      "eps on clean models; ASR at the family's poison rate; Neural Cleanse AUROC clean vs trojaned; "
                      "saliency pointing game; information per neuron = effective rank / width)"),
                      _study_pivot(data, task, [("params", "params"), ("clean_acc", "clean acc"),
                                                ("robust_acc", "PGD acc (headline eps)"), ("asr", "ASR"),
                                                ("nc_auroc", "NC AUROC"), ("pointing_game", "pointing game"),
                                                ("info_per_neuron", "info / neuron")],
                                   first="shape", key=_study_shape_key)))
        parts.append(((f"{dataset}: controls and secondary measures (ASR on the clean models; clean accuracy of the "
                      "trojaned models; Neural Cleanse's target found; saliency correlation with the patch and a "
                      "random map's pointing game; mean effective rank)"),
                      _study_pivot(data, task, [("asr_clean_model", "ASR, clean models"),
                                                ("clean_acc_trojaned", "clean acc, trojaned"),
                                                ("nc_target_acc", "NC target found"), ("correlation", "correlation"),
                                                ("pointing_game_random", "pointing game, random map"),
                                                ("effective_rank", "effective rank")],
                                   first="shape", key=_study_shape_key)))
        eps = [_study_split(r.get("metric"), "[")[1] for r in _study_rows(data, task)
               if (_study_split(r.get("metric"), "[") or ("", ""))[0] == "pgd_acc"]
        eps = sorted(dict.fromkeys(eps), key=_study_eps_key)
        parts.append((f"{dataset}: PGD accuracy of the clean models at each budget (a zero budget gives the clean accuracy)",
                      _study_pivot(data, task, [(f"pgd_acc[{e}]", e.replace("=", " ")) for e in eps],
                                   first="shape", key=_study_shape_key)))
    return _study_join(data, "study_width-depth.json", parts)
