"""The static HTML report: `trojanbench report RESULTS -o DIR`.

Everything comes from the results store: each track writes its aggregate rows (model_id `zoo:<name>`, with
`low`/`high`/`n`/`baseline` in `extra`) and registers its figures as rows with metric `figure` (the PNG's
path in `extra`). The report is one `index.html` plus the figures copied beside it, so the folder opens
offline and can be zipped into a paper's supplement.
"""

from __future__ import annotations

import html
import math
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..results import ResultRow, ResultsStore
from ..results.stats import Estimate
from ..utils import atomic_write_text
from .leaderboard import beats


@dataclass(frozen=True)
class View:
    """How one task's leaderboard is ranked and which columns it shows first."""

    title: str
    key: str
    higher_is_better: bool = True
    columns: tuple[str, ...] = ()


VIEWS: dict[str, View] = {
    "zoo": View("The zoo's triggers", ""),
    "detect-model": View("Detection: is this model trojaned? (held-out zoo split)", "auroc", True,
                         ("auroc", "aupr", "fpr@95tpr", "auroc[crude]", "auroc[insidious]", "target_accuracy",
                          "trigger_iou", "seconds_per_model")),
    "detect-samples": View("Detection: which training samples were poisoned?", "auroc", True,
                           ("auroc", "tpr@5fpr", "auroc[crude]", "auroc[insidious]", "seconds_per_model")),
    "diagnose-attribution": View("Diagnosis: do attribution maps point at the trigger? (ranked by correlation with the "
                                 "patch footprint)", "correlation[kind=patch]", True,
                                 ("correlation[kind=patch]", "pointing_game[kind=patch]", "pointing_game_strict[kind=patch]",
                                  "mask_auroc[kind=patch]", "correlation", "sanity_similarity", "sanity_pass",
                                  "seconds_per_model")),
    "synthesize": View("Feature synthesis: transfer ASR of each method's stamp (the clean-twin column is the control: "
                       "high there means adversarial features, not the trojan) and 8-way multiple-choice accuracy of an "
                       "independent judge (chance 0.125)", "transfer_asr", True,
                       ("transfer_asr", "transfer_asr_clean_twin", "transfer_asr[kind=patch]", "mc_accuracy",
                        "mc_accuracy[kind=patch]", "mc_accuracy_human", "judge_human_agreement", "transfer_asr[crude]",
                        "transfer_asr[insidious]", "seconds_per_model")),
    "repair": View("Repair: attack success after repair with a 5% clean budget", "asr@0.05", False,
                   ("asr@0.05", "clean_acc@0.05", "clean_cost@0.05", "robust_acc@0.05", "asr[kind=patch]@0.05",
                    "asr[insidious]@0.05", "seconds_per_model@0.05", "beats_finetune@0.05")),
    "edit": View("Locate and edit: ASR after one rank-one update of the layer causal tracing names", "asr", False,
                 ("asr", "asr_drop", "clean_cost", "asr[kind=patch]", "asr[crude]", "asr[insidious]", "seconds_per_model")),
}


def register_view(task: str, view: View) -> None:
    """Tracks declare how their task is ranked; tasks without a view are ranked by their first metric."""
    VIEWS[task] = view


@dataclass
class StoredScores:
    tool: str
    is_baseline: bool
    metrics: dict[str, Estimate] = field(default_factory=dict)


FIGURE = "figure"


def figure_row(tool: str, task: str, path: str | Path, caption: str, seed: int = 0) -> ResultRow:
    """A row that puts a figure (PNG) into the report under `task`."""
    return ResultRow(tool, f"figure:{Path(path).name}", task, FIGURE, None, seed=seed,
                     extra={"path": str(Path(path).resolve()), "caption": caption})


def collect(rows: list[ResultRow]) -> tuple[dict[str, list[StoredScores]], dict[str, list[ResultRow]]]:
    """Aggregate rows -> per task, one StoredScores per tool; figure rows -> per task."""
    tables: dict[str, dict[str, StoredScores]] = defaultdict(dict)
    figures: dict[str, list[ResultRow]] = defaultdict(list)
    for r in rows:
        if r.metric == FIGURE:
            figures[r.task].append(r)
        elif r.model_id.startswith("zoo:") and r.value is not None:
            s = tables[r.task].setdefault(r.tool, StoredScores(r.tool, bool(r.extra.get("baseline", False))))
            nan = float("nan")
            s.metrics[r.metric] = Estimate(r.value, _num(r.extra.get("low", nan)), _num(r.extra.get("high", nan)),
                                           int(r.extra.get("n", 0) or 0))
    return {t: list(v.values()) for t, v in tables.items()}, figures


def _num(v) -> float:
    return float("nan") if v is None else float(v)


YES_NO = ("beats_", "sanity_pass")  # verdict metrics: 1/0 shown as yes/no


def _fmt(est: Estimate | None, metric: str = "") -> str:
    if est is None or math.isnan(est.value):
        return "&ndash;"
    if metric.startswith(YES_NO):
        return "yes" if est.value >= 0.5 else "no"
    if math.isnan(est.low):
        return f"{est.value:.3f}"
    return f"{est.value:.3f} <span class=ci>[{est.low:.3f}, {est.high:.3f}]</span>"


def _kind_metrics(key: str, metrics: set[str]) -> dict[str, str]:
    """For a ranking key such as `auroc`, `correlation[kind=patch]` or `asr@0.05`, the per-trigger-kind metric
    names that exist: {kind: metric}."""
    base, suffix = key.split("[")[0].split("@")[0], ("@" + key.split("@", 1)[1]) if "@" in key else ""
    out = {}
    for m in metrics:
        if m.startswith(base + "[kind=") and m.endswith("]" + suffix):
            out[m[len(base) + 6:len(m) - len(suffix) - 1]] = m
    return dict(sorted(out.items()))


def _kind_figure(task: str, scores: list[StoredScores], out: Path) -> str:
    from .plots import kind_bars

    view = VIEWS.get(task)
    metrics = {m for s in scores for m in s.metrics}
    if view is None or len(kinds := _kind_metrics(view.key, metrics)) < 2:
        return ""
    values = {s.tool: {k: (s.metrics[m].value, s.metrics[m].low, s.metrics[m].high) for k, m in kinds.items()
                       if m in s.metrics and not math.isnan(s.metrics[m].value)} for s in scores}
    base = view.key.split("[")[0]
    path = kind_bars(values, out / "figures" / f"{task}-by-kind.png", f"{base} by trigger kind", base,
                     {s.tool for s in scores if s.is_baseline})
    caption = f"{base} per trigger kind (95% CIs; baselines hatched)"
    return f"<figure><img src='figures/{path.name}' alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}</figcaption></figure>"


def _table(task: str, scores: list[StoredScores]) -> str:
    metrics = sorted({m for s in scores for m in s.metrics})
    view = VIEWS.get(task) or View(task, metrics[0])
    if view.key not in metrics:
        view = View(view.title, metrics[0], view.higher_is_better, view.columns)
    columns = [m for m in view.columns if m in metrics] or metrics[:8]
    rest = [m for m in metrics if m not in columns]
    sign = -1 if view.higher_is_better else 1
    ranked = sorted(scores, key=lambda s: (math.isnan(s.metrics.get(view.key, Estimate(math.nan, 0, 0, 0)).value),
                                           sign * s.metrics.get(view.key, Estimate(0.0, 0, 0, 0)).value))
    base = [s.metrics[view.key].value for s in scores if s.is_baseline and view.key in s.metrics
            and not math.isnan(s.metrics[view.key].value)]
    best_base = (max if view.higher_is_better else min)(base) if base else float("nan")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["rank", "tool", *columns, "vs baseline"])
    body = []
    for rank, s in enumerate(ranked, 1):
        est = s.metrics.get(view.key)
        if s.is_baseline:
            verdict, cls = "baseline", "baseline"
        elif est is not None and beats(est, best_base, view.higher_is_better):
            verdict, cls = "beats", "beats"
        else:
            verdict, cls = "does not beat", "nobeat"
        cells = "".join(f"<td>{_fmt(s.metrics.get(c), c)}</td>" for c in columns)
        body.append(f"<tr class={cls}><td>{rank}</td><td>{html.escape(s.tool)}</td>{cells}<td>{verdict}</td></tr>")
    caption = (f"ranked by {html.escape(view.key)} ({'higher' if view.higher_is_better else 'lower'} is better); "
               f"95% bootstrap CIs in brackets" + (f"; best baseline {best_base:.3f}" if base else "; no baseline ran"))
    details = ""
    if rest:  # every other metric (per-kind splits, secondary measures) in one long, narrow table
        long_rows = "".join(f"<tr><td>{html.escape(m)}</td><td>{html.escape(s.tool)}</td><td>{_fmt(s.metrics.get(m), m)}</td></tr>"
                            for m in rest for s in ranked if m in s.metrics)
        details = (f"<details><summary>all {len(rest)} other metrics (by trigger kind, crude vs insidious, ...)</summary>"
                   f"<table class=long><thead><tr><th>metric</th><th>tool</th><th>value</th></tr></thead>"
                   f"<tbody>{long_rows}</tbody></table></details>")
    return (f"<h2 id='{html.escape(task)}'>{html.escape(view.title)}</h2>\n<table><caption>{caption}</caption>"
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{details}")


STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}caption{caption-side:bottom;text-align:left;color:#666;padding:4px}
th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:right}td:nth-child(2),th:nth-child(2){text-align:left}
tr.baseline{background:#f3f3f3;color:#555}tr.beats td:nth-child(2){font-weight:600}tr.nobeat td:last-child{color:#b00}
.ci{color:#888;font-size:12px}figure{display:inline-block;margin:1em;max-width:100%;vertical-align:top}
figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:13px;color:#444}
table.long td{text-align:left}details{margin:0 0 1.5em}summary{cursor:pointer;color:#335}"""


def render_report(results: str | Path, out: str | Path, title: str = "trojanbench report") -> Path:
    """Write `out/index.html` (and the figures) from a results store; returns the page's path."""
    results, out = Path(results), Path(out)
    if not results.is_file():
        raise UserError(f"no results store at {results}")
    with ResultsStore(results) as store:
        rows = store.rows()
    tables, figures = collect(rows)
    if any(t not in VIEWS for t in tables):
        from .. import studies  # noqa: F401  (studies register their tasks' views when imported)
    if not tables and not figures:
        raise UserError(f"{results} holds no track results yet; run `trojanbench run` first")
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    tasks = sorted(set(tables) | set(figures), key=lambda t: (t not in VIEWS, list(VIEWS).index(t) if t in VIEWS else 0, t))
    parts = [f"<h1>{html.escape(title)}</h1>",
             "<p>Every score is a mean with a 95% bootstrap confidence interval; a tool is marked <em>beats</em> only "
             "when its lower bound clears the best baseline's mean.</p>",
             "<nav>" + " &middot; ".join(f"<a href='#{html.escape(t)}'>{html.escape(VIEWS[t].title if t in VIEWS else t)}</a>"
                                          for t in tasks) + "</nav>"]
    for task in tasks:
        if task in tables:
            parts.append(_table(task, tables[task]))
            parts.append(_kind_figure(task, tables[task], out))
        else:
            parts.append(f"<h2 id='{html.escape(task)}'>{html.escape(task)}</h2>")
        for fig in sorted(figures.get(task, []), key=lambda r: r.model_id):
            src = Path(fig.extra.get("path", ""))
            if not src.is_file():
                parts.append(f"<p class=missing>figure {html.escape(src.name)} is missing (was {html.escape(str(src))})</p>")
                continue
            dest = out / "figures" / f"{task}-{src.name}"
            if src.resolve() != dest.resolve():
                shutil.copyfile(src, dest)
            parts.append(f"<figure><img src='figures/{html.escape(dest.name)}' alt='{html.escape(fig.extra.get('caption', ''))}'>"
                         f"<figcaption>{html.escape(fig.extra.get('caption', ''))}</figcaption></figure>")
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    index = out / "index.html"
    atomic_write_text(index, page)
    return index
