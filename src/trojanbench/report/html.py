"""The static HTML report: `trojanbench report RESULTS -o DIR [--run ID]`.

A report renders exactly one run of the results store (the latest complete one unless `--run` names another);
no code path reads rows of two runs. Everything comes from that run's rows:
- boards: the per-model rows and board specs the tracks wrote, turned into cells, intervals and verdicts by
  `results.boards` (the same code as the terminal board);
- studies' tables: the aggregate rows (with `low`/`high`/`n` in `extra`) and the view a study stored beside them
  (`view_row`), shown without verdicts (a study states its findings itself);
- figures: rows with metric `figure` (the PNG's path in `extra`);
- the tools: each tool's paper and fidelity note, as the run recorded them (`tool_info_row`).
The report is one `index.html` plus the figures copied beside it, so the folder opens offline and can be zipped
into a paper's supplement.
"""

from __future__ import annotations

import html
import math
import shutil
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UserError
from ..results import ResultRow, ResultsStore
from ..results.boards import INFO, Board, board_specs, compute_board, shown_columns
from ..results.stats import MIN_N_FOR_INTERVAL, Estimate
from ..results.store import RunInfo
from ..utils import atomic_write_text, sha256_file
from .leaderboard import caption, header, verdict_text


@dataclass(frozen=True)
class View:
    """How a study's stored table is ranked and which columns it shows first (studies store it with their rows)."""

    title: str
    key: str
    higher_is_better: bool = True
    columns: tuple[str, ...] = ()


VIEWS: dict[str, View] = {}


def register_view(task: str, view: View) -> None:
    """Studies declare how their task's table is shown; `view_row` stores it in the run."""
    VIEWS[task] = view


FIGURE, VIEW = "figure", "view"


def figure_row(tool: str, task: str, path: str | Path, caption: str, seed: int = 0) -> ResultRow:
    """A row that puts a figure (PNG) into the report under `task`, with the file's sha256: a report shows the figure
    only while the file is the one the run drew."""
    return ResultRow(tool, f"figure:{Path(path).name}", task, FIGURE, None, seed=seed,
                     extra={"path": str(Path(path).resolve()), "caption": caption,
                            "sha256": sha256_file(path) if Path(path).is_file() else None})


def view_row(task: str, view: View) -> ResultRow:
    return ResultRow("trojanbench", "view", task, VIEW, None, extra={"view": {**asdict(view), "columns": list(view.columns)}})


@dataclass
class StoredScores:
    tool: str
    is_baseline: bool
    metrics: dict[str, Estimate] = field(default_factory=dict)


def collect(rows: list[ResultRow]) -> tuple[dict[str, list[StoredScores]], dict[str, list[ResultRow]]]:
    """A study's aggregate rows -> per task, one StoredScores per tool; figure rows -> per task."""
    tables: dict[str, dict[str, StoredScores]] = defaultdict(dict)
    figures: dict[str, list[ResultRow]] = defaultdict(list)
    for r in rows:
        if r.metric == FIGURE:
            figures[r.task].append(r)
        elif "low" in r.extra and r.value is not None and "role" not in r.extra:
            s = tables[r.task].setdefault(r.tool, StoredScores(r.tool, bool(r.extra.get("baseline", False))))
            nan = float("nan")
            s.metrics[r.metric] = Estimate(r.value, _num(r.extra.get("low", nan)), _num(r.extra.get("high", nan)),
                                           int(r.extra.get("n", 0) or 0))
    return {t: list(v.values()) for t, v in tables.items()}, figures


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def _fmt(est: Estimate | None, show_n: bool = True) -> str:
    if est is None or math.isnan(est.value):
        return "&ndash;"
    n = f" <span class=n>n={est.n}</span>" if show_n and est.n else ""
    if est.n < MIN_N_FOR_INTERVAL or not est.has_interval:
        return f"{est.value:.3f}{n}"
    return f"{est.value:.3f} <span class=ci>[{est.low:.3f}, {est.high:.3f}]</span>{n}"


def _board_html(board: Board) -> str:
    main = shown_columns(board.spec.main, board.spec.key, {m for s in board.scores for m in s.metrics})
    head = "".join(f"<th>{html.escape(c)}</th>" for c in
                   ["rank", "tool", *[header(board, m) for m in main],
                    f"vs {board.reference}" if board.reference else "verdict"])
    body = []
    for rank, s in enumerate(board.scores, 1):
        verdict = verdict_text(s, board.reference, board.spec.higher_is_better)
        word = verdict.split(" ")[0]
        cls = s.role if s.role != "tool" else (word if word in ("beats", "ties", "worse") else "na")
        cells = "".join(f"<td>{_fmt(s.metrics.get(m))}</td>" for m in main)
        body.append(f"<tr class={cls}><td>{rank}</td><td>{html.escape(s.tool)}</td>{cells}"
                    f"<td class=verdict>{html.escape(verdict)}</td></tr>")
    rest = sorted({m for s in board.scores for m in s.metrics} - set(main))
    details = ""
    if rest:
        long_rows = "".join(f"<tr><td>{html.escape(m)}</td><td>{html.escape(s.tool)}</td><td>{_fmt(s.metrics.get(m))}</td></tr>"
                            for m in rest for s in board.scores if m in s.metrics)
        details = (f"<details><summary>all {len(rest)} other cells (by trigger kind, crude vs insidious, ...)</summary>"
                   f"<table class=long><thead><tr><th>cell</th><th>tool</th><th>value</th></tr></thead>"
                   f"<tbody>{long_rows}</tbody></table></details>")
    task = board.spec.task
    return (f"<h2 id='{html.escape(task)}'>{html.escape(board.spec.title)}</h2>\n<table><caption>"
            f"{html.escape(caption(board))}</caption><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody>"
            f"</table>{details}")


def _kind_figure(board: Board, out: Path) -> str:
    from .plots import kind_bars

    base = board.spec.key.split("[")[0]
    kinds = sorted({m[len(base) + 6:-1] for s in board.scores for m in s.metrics if m.startswith(base + "[kind=")})
    if len(kinds) < 2:
        return ""
    values = {s.tool: {k: (e.value, e.low, e.high) for k in kinds
                       if (e := s.metrics.get(f"{base}[kind={k}]")) is not None and not math.isnan(e.value)}
              for s in board.scores}
    task = board.spec.task
    path = kind_bars(values, out / "figures" / f"{task}-by-kind.png", f"{base} by trigger kind", base,
                     {s.tool for s in board.scores if s.role != "tool"})
    text = f"{base} per trigger kind (95% CIs where n >= {MIN_N_FOR_INTERVAL}; baselines and anchors hatched)"
    return f"<figure><img src='figures/{path.name}' alt='{html.escape(text)}'><figcaption>{html.escape(text)}</figcaption></figure>"


def _study_table(task: str, scores: list[StoredScores], view: View | None) -> str:
    metrics = sorted({m for s in scores for m in s.metrics})
    view = view or View(task, metrics[0])
    key = view.key if view.key in metrics else metrics[0]
    columns = [m for m in view.columns if m in metrics] or metrics[:8]
    rest = [m for m in metrics if m not in columns]
    sign = -1 if view.higher_is_better else 1
    ranked = sorted(scores, key=lambda s: (math.isnan(s.metrics.get(key, Estimate(math.nan)).value),
                                           sign * s.metrics.get(key, Estimate(0.0)).value))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["rank", "tool", *columns])
    body = "".join(f"<tr class={'baseline' if s.is_baseline else 'tool'}><td>{rank}</td><td>{html.escape(s.tool)}</td>"
                   + "".join(f"<td>{_fmt(s.metrics.get(c))}</td>" for c in columns) + "</tr>"
                   for rank, s in enumerate(ranked, 1))
    details = ""
    if rest:
        long_rows = "".join(f"<tr><td>{html.escape(m)}</td><td>{html.escape(s.tool)}</td><td>{_fmt(s.metrics.get(m))}</td></tr>"
                            for m in rest for s in ranked if m in s.metrics)
        details = (f"<details><summary>all {len(rest)} other metrics</summary><table class=long><thead><tr><th>metric</th>"
                   f"<th>tool</th><th>value</th></tr></thead><tbody>{long_rows}</tbody></table></details>")
    text = (f"ranked by {key} ({'higher' if view.higher_is_better else 'lower'} is better); 95% CIs as the study computed "
            f"them; n&lt;{MIN_N_FOR_INTERVAL}: no interval")
    return (f"<h2 id='{html.escape(task)}'>{html.escape(view.title)}</h2>\n<table><caption>{text}</caption>"
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{details}")


def _tools_table(rows: list[ResultRow]) -> str:
    infos = {}
    for r in rows:
        if r.metric == INFO and r.model_id == "tool":
            infos[(r.extra.get("family", ""), r.tool)] = r
    if not infos:
        return ""
    body = "".join(f"<tr><td>{html.escape(fam)}</td><td>{html.escape(name)}</td><td>{html.escape(r.tool_version)}</td>"
                   f"<td>{'baseline' if r.extra.get('baseline') else 'tool'}</td><td>{html.escape(r.extra.get('paper') or '')}</td>"
                   f"<td>{html.escape(r.extra.get('fidelity') or '')}</td></tr>" for (fam, name), r in sorted(infos.items()))
    return ("<h2 id=tools>The tools in this run</h2><table class=long><thead><tr><th>family</th><th>tool</th><th>version</th>"
            f"<th>role</th><th>paper</th><th>fidelity</th></tr></thead><tbody>{body}</tbody></table>")


def _run_header(run: RunInfo) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(run.started))
    info = run.info
    facts = [("run", run.run_id), ("status", run.status), ("kind", run.kind), ("started", started),
             ("seed", str(run.seed)), ("config hash", run.config_hash), ("trojanbench", run.version),
             ("code commit", str(info.get("commit"))), ("cores / torch threads", f"{info.get('cores')} / {info.get('torch_threads')}")]
    if info.get("zoo"):
        facts.append(("zoo", str(info["zoo"])))
    warn = "" if run.status == "complete" else (f"<p class=warn>This run is {run.status}: the page shows only what it "
                                                 "wrote before it stopped.</p>")
    return warn + "<table class=facts>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                                                   for k, v in facts) + "</table>"


STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}caption{caption-side:bottom;text-align:left;color:#666;padding:4px;max-width:1100px}
th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:right}td:nth-child(2),th:nth-child(2){text-align:left}
tr.baseline,tr.anchor{background:#f3f3f3;color:#555}tr.beats td:nth-child(2){font-weight:600}tr.worse td.verdict{color:#b00}
.ci,.n{color:#888;font-size:12px}figure{display:inline-block;margin:1em;max-width:100%;vertical-align:top}
figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:13px;color:#444}.warn{color:#b00;font-weight:600}
table.long td,table.facts td,table.facts th{text-align:left}details{margin:0 0 1.5em}summary{cursor:pointer;color:#335}"""


def render_report(results: str | Path, out: str | Path, title: str | None = None, run_id: str | None = None,
                  n_boot: int = 2000) -> Path:
    """Write `out/index.html` (and the figures) for one run of a results store (the latest complete run unless
    `run_id` names one); returns the page's path."""
    results, out = Path(results), Path(out)
    if not results.is_file():
        raise UserError(f"no results store at {results}")
    with ResultsStore(results) as store:
        run = store.run(run_id) if run_id else store.latest_complete()
        rows = store.rows(run.run_id)
    specs = board_specs(rows)
    boards = {task: compute_board(rows, spec, n_boot, run.seed) for task, spec in specs.items()}
    tables, figures = collect(rows)
    views = {r.task: View(**{**r.extra["view"], "columns": tuple(r.extra["view"]["columns"])})
             for r in rows if r.metric == VIEW}
    if not boards and not tables and not figures:
        raise UserError(f"run {run.run_id} in {results} holds no track results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    order = list(dict.fromkeys([r.task for r in rows if r.task in boards or r.task in tables or r.task in figures]))
    title = title or f"trojanbench: run {run.run_id}"
    parts = [f"<h1>{html.escape(title)}</h1>", _run_header(run),
             "<p>Every cell is a statistic over models with its 95% interval (Wilson for proportions, bootstrap over "
             f"models otherwise; fewer than {MIN_N_FOR_INTERVAL} models: the value and n only). The verdict column "
             "compares each tool with the strongest baseline of its board on the ranking metric, paired over the same "
             "models (a sign-flip permutation test; for AUROC a paired bootstrap), with p-values Holm-corrected over "
             "the board's tools; \"too few models\" where no data could reach p &lt; 0.05 after the correction.</p>",
             "<nav>" + " &middot; ".join(f"<a href='#{html.escape(t)}'>{html.escape(boards[t].title if t in boards else views[t].title if t in views else t)}</a>"
                                          for t in order) + " &middot; <a href='#tools'>tools</a></nav>"]
    for task in order:
        if task in boards:
            parts.append(_board_html(boards[task]))
            parts.append(_kind_figure(boards[task], out))
        elif task in tables:
            parts.append(_study_table(task, tables[task], views.get(task)))
        else:
            parts.append(f"<h2 id='{html.escape(task)}'>{html.escape(task)}</h2>")
        for fig in sorted(figures.get(task, []), key=lambda r: r.model_id):
            src = Path(fig.extra.get("path", ""))
            if not src.is_file():
                parts.append(f"<p class=missing>figure {html.escape(src.name)} is missing (was {html.escape(str(src))})</p>")
                continue
            if fig.extra.get("sha256") not in (None, sha256_file(src)):  # redrawn since (by a later run into its folder)
                parts.append(f"<p class=missing>figure {html.escape(src.name)} has changed since this run drew it "
                             f"({html.escape(str(src))}); rerun the run to draw it again</p>")
                continue
            dest = out / "figures" / f"{task}-{src.name}"
            if src.resolve() != dest.resolve():
                shutil.copyfile(src, dest)
            parts.append(f"<figure><img src='figures/{html.escape(dest.name)}' alt='{html.escape(fig.extra.get('caption', ''))}'>"
                         f"<figcaption>{html.escape(fig.extra.get('caption', ''))}</figcaption></figure>")
    parts.append(_tools_table(rows))
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    index = out / "index.html"
    atomic_write_text(index, page)
    return index
