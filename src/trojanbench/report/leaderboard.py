"""Terminal leaderboards: mean and 95% CI per tool, ranked, baselines highlighted, and every tool whose
CI does not clear the best baseline marked as such."""

from __future__ import annotations

import math

from rich.table import Table

from ..results.stats import Estimate


def beats(est: Estimate, baseline: float, higher_is_better: bool = True) -> bool:
    if math.isnan(est.value) or math.isnan(baseline):
        return False
    bound = est.low if higher_is_better else est.high
    if math.isnan(bound):
        bound = est.value
    return bound > baseline if higher_is_better else bound < baseline


def leaderboard(title: str, scores, key: str, columns: list[tuple[str, str]], higher_is_better: bool = True) -> Table:
    """`scores`: ToolScores-like objects (tool, is_baseline, metrics); `columns`: (metric, header)."""
    nan_last = (lambda s: (math.isnan(s.metrics[key].value), -s.metrics[key].value if higher_is_better
                           else s.metrics[key].value))
    ranked = sorted(scores, key=nan_last)
    base_values = [s.metrics[key].value for s in scores if s.is_baseline and not math.isnan(s.metrics[key].value)]
    best_base = (max if higher_is_better else min)(base_values) if base_values else float("nan")
    t = Table(title=title, caption=f"95% bootstrap CIs in brackets; ranked by {key}; best baseline {best_base:.3f}"
              if base_values else None)
    t.add_column("rank", justify="right")
    t.add_column("tool", no_wrap=True)
    for _, header in columns:
        t.add_column(header, justify="right")
    t.add_column("vs baseline")
    for rank, s in enumerate(ranked, 1):
        cells = [str(s.metrics[m]) if m in s.metrics else "-" for m, _ in columns]
        verdict = "baseline" if s.is_baseline else ("beats" if beats(s.metrics[key], best_base, higher_is_better)
                                                    else "does not beat")
        style = "dim" if s.is_baseline else ("bold" if verdict == "beats" else "")
        t.add_row(str(rank), s.tool, *cells, verdict, style=style)
    return t
