"""A board's score as a curve over one difficulty axis of the zoo: poison rate, poisoning mode, training epochs,
learning rate (issue 16; Yan et al., EMNLP 2025: detectors that work at the default poisoning intensity fail at
more aggressive or more conservative ones, so report them over poison rate and training intensity).

A model's level on an axis comes from its job (`AXES`). At each level the board's key column is computed over the
models at that level, by the statistic `boards` uses for it:
- an AUROC column (is this model trojaned?): the trojans at that level against the clean models at that level;
  clean models have no poison rate or mode (`EVERY`): on those axes every clean model is a negative at every level;
- a mean column (which samples were poisoned? one AUROC per trojan): the mean over the trojans at that level;
each with its 95% interval (bootstrap, stratified by label for AUROC) and n; a cell of fewer than
`stats.MIN_N_FOR_INTERVAL` models has no interval, only its n. Natural-feature trojans ignore the poison rate
(they relabel the images that carry the feature), so they are left off that axis.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import unknown_name
from .boards import Board, BoardSpec, _estimate
from .stats import MIN_N_FOR_INTERVAL, N_BOOT, Estimate
from .store import ResultRow

EVERY = "*"  # the level of a model that belongs to every level of an axis (a clean model on a trojan-only axis)


def _poison_rate(job, cfg):
    if not job.trojaned:
        return EVERY
    return None if job.trojan.trigger.kind == "natural" else job.trojan.poison.rate


# axis -> (label, the level of a zoo job under the zoo's config; None: the job is not on this axis)
AXES: dict[str, tuple[str, Callable[[Any, Any], Any]]] = {
    "poison_rate": ("poison rate", _poison_rate),
    "mode": ("poisoning mode", lambda job, cfg: job.trojan.poison.mode if job.trojaned else EVERY),
    "epochs": ("training epochs", lambda job, cfg: job.train_config(cfg).epochs),
    "lr": ("learning rate", lambda job, cfg: job.train_config(cfg).lr),
}


@dataclass
class AxisPoint:
    level: Any
    estimate: Estimate
    n_trojaned: int
    n_clean: int


def axis_levels(zoo, axis: str, split: str | None = None) -> dict[str, Any]:
    """{model id: level} of the zoo's finished models (of one split, or all) on `axis` (a name in `AXES`)."""
    if axis not in AXES:
        raise unknown_name("axis", axis, AXES)
    cfg, level = zoo.config(), AXES[axis][1]
    levels = {card.id: level(job, cfg) for job, _, card in zoo.models(split=split)}
    return {m: v for m, v in levels.items() if v is not None}


def _order(levels) -> list:
    return sorted({v for v in levels if v != EVERY}, key=lambda v: (isinstance(v, str), 0 if isinstance(v, str) else v, str(v)))


def axis_curves(rows: list[ResultRow], spec: BoardSpec, levels: dict[str, Any], n_boot: int = N_BOOT,
                seed: int = 0) -> dict[str, list[AxisPoint]]:
    """Per tool, its `spec.key` column (the column, over all models: a key restricted to a group is not) at each
    level of `levels` ({model id: level}, as `axis_levels` gives), in order. Rows of models without a level are
    left out; a level without trojans gives no point."""
    column = spec.column(spec.key)
    cells: dict[str, dict[str, tuple[float, int | None]]] = {}
    for r in rows:
        if r.task == spec.task and r.metric == column.source and "role" in r.extra and r.model_id in levels:
            cells.setdefault(r.tool, {})[r.model_id] = (math.nan if r.value is None else r.value, r.extra.get("label"))
    curves = {}
    for tool, cell in sorted(cells.items()):
        points = []
        for level in _order(levels.values()):
            ids = [m for m in sorted(cell) if levels[m] == level or (levels[m] == EVERY and column.stat == "auroc")]
            labels = np.asarray([1 if cell[m][1] is None else cell[m][1] for m in ids], dtype=int)
            n_trojaned = int(labels.sum())
            if n_trojaned == 0:
                continue
            values = np.asarray([cell[m][0] for m in ids], dtype=np.float64)
            estimate = _estimate(column, values, labels if column.stat == "auroc" else None, n_boot, seed, ids)
            points.append(AxisPoint(level, estimate, n_trojaned, len(ids) - n_trojaned))
        if points:
            curves[tool] = points
    return curves


def axis_figure(curves: dict[str, list[AxisPoint]], path: str | Path, title: str, xlabel: str, ylabel: str,
                baselines: set[str] = frozenset()) -> Path:
    """The curves of `axis_curves` as one plot: a line per tool with its 95% intervals, n under each level."""
    from ..report.plots import axis_plot

    order = _order([p.level for pts in curves.values() for p in pts])
    counts = {}
    for pts in curves.values():
        for p in pts:
            counts.setdefault(p.level, (p.n_trojaned, p.n_clean))
    labels = [f"{v:g}" if isinstance(v, float) else str(v) for v in order]
    labels = [f"{t}\n{counts[v][0]}+{counts[v][1]}" if counts[v][1] else f"{t}\nn={counts[v][0]}"
              for t, v in zip(labels, order)]
    values = {tool: [next(((p.estimate.value, p.estimate.low, p.estimate.high) for p in pts if p.level == v), None)
                     for v in order] for tool, pts in curves.items()}
    return axis_plot(labels, values, path, title, xlabel, ylabel, baselines)


def axis_figures(zoo_dir, rows: list[ResultRow], boards: list[Board], figures: str | Path, n_boot: int = N_BOOT,
                 seed: int = 0) -> list[ResultRow]:
    """For every board and every axis on which its models take at least two levels: the curves' figure, as rows
    that put it in the report under the board's task."""
    from ..report.html import figure_row
    from ..zoo.build import Zoo

    zoo = Zoo(zoo_dir)
    name, out = zoo.config().name, []
    for axis, (label, _) in AXES.items():
        levels = axis_levels(zoo, axis)
        for board in boards:
            task_rows = [r for r in rows if r.task == board.spec.task]
            seen = {r.model_id for r in task_rows} & set(levels)
            if len(_order(levels[m] for m in seen)) < 2:
                continue
            curves = axis_curves(task_rows, board.spec, levels, n_boot, seed)
            if not curves:
                continue
            header = board.spec.header(board.spec.key)
            path = axis_figure(curves, Path(figures) / f"{board.spec.task}-by-{axis}-{name}.png",
                               f"{board.spec.title} ({name})", label, header,
                               {s.tool for s in board.scores if s.role != "tool"})
            against = "clean models at every level" if any(v == EVERY for v in levels.values()) else \
                "the clean models at that level"
            what = (f"trojans at each level against {against} (under each level: trojans+clean)"
                    if board.spec.column(board.spec.key).stat == "auroc" else "mean over the trojans at each level")
            out.append(figure_row("trojanbench", board.spec.task, path, f"{header} per {label}: {what}; 95% CIs where "
                                  f"n >= {MIN_N_FOR_INTERVAL}; baselines and anchors dashed", seed))
    return out
