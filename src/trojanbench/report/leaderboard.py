"""Terminal leaderboards: each tool's cells (95% CIs; "n=3" where fewer than 5 models stand behind a cell), ranked,
baselines dimmed, and one verdict column: the paired, Holm-corrected comparison with the strongest baseline
(computed in results.boards)."""

from __future__ import annotations

import math

from rich.markup import escape
from rich.table import Table

from ..results.boards import Board, ToolScores, shown_columns, verdict_test


def header(board: Board, aggregate: str) -> str:
    return board.spec.header(aggregate)


def verdict_text(s: ToolScores, reference: str | None, higher_is_better: bool = True) -> str:
    if s.role != "tool":
        return s.role
    c = s.comparison
    if c is None or reference is None or math.isnan(c.diff.value):
        return "n/a"
    if math.isnan(c.p_holm):
        return c.verdict
    return f"{c.verdict} ({c.diff.value:+.3f}, p={c.p_holm:.2g})"


def caption(board: Board) -> str:
    parts = []
    if board.spec.population:
        parts.append(board.spec.population)
    parts.append(f"Ranked by {board.spec.key} ({'higher' if board.spec.higher_is_better else 'lower'} is better). "
                 "95% intervals: Wilson for proportions, a score interval for AUROC, an expanded percentile "
                 "bootstrap over models for means; n<5: no interval.")
    n_tools = sum(1 for s in board.scores if s.role == "tool" and s.comparison is not None)
    if board.reference and n_tools:
        parts.append(f"Verdict: {verdict_test(board.spec)} of (tool - {board.reference}, the strongest baseline) on "
                     f"{board.spec.key} over the same models, p Holm-corrected over {n_tools} tools; "
                     "beats / ties / worse at 0.05; too few models where no data could reach 0.05 after the correction.")
    if board.spec.note:
        parts.append(board.spec.note)
    return " ".join(parts)


def leaderboard(board: Board) -> Table:
    main = shown_columns(board.spec.main, board.spec.key, {m for s in board.scores for m in s.metrics})
    t = Table(title=escape(board.spec.title), caption=escape(caption(board)), caption_justify="left")
    t.add_column("rank", justify="right")
    t.add_column("tool", no_wrap=True)
    for m in main:
        t.add_column(escape(header(board, m)), justify="right")
    t.add_column("n", justify="right")
    t.add_column(escape(f"vs {board.reference}" if board.reference else "verdict"))
    for rank, s in enumerate(board.scores, 1):
        cells = [str(s.metrics[m]) if m in s.metrics else "-" for m in main]
        verdict = verdict_text(s, board.reference, board.spec.higher_is_better)
        style = "dim" if s.role != "tool" else ("bold" if verdict.startswith("beats") else "")
        t.add_row(str(rank), escape(s.tool), *map(escape, cells), str(s.n_models), escape(verdict), style=style)
    return t
