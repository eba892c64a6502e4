"""Leaderboards computed from one run's per-model rows: the one place where scores get intervals and verdicts.

A track writes one row per (tool, model, per-model metric) into its run, each row's `extra` holding the model's
`groups` (["kind=patch", "crude"], ...), its truth `label` where a detector is scored (1 = trojaned) and the
tool's `role` ("tool", "baseline" or "anchor"), and it writes its `BoardSpec` once (`spec_row`). Everything
else — means, proportions, AUROCs, per-group cells, the verdict against baselines — is computed here, the same
way for the terminal board, the HTML report and the benchmark scripts:

- a column is a statistic of one per-model metric over the board's models: `mean` (expanded percentile
  bootstrap over models: `stats.bootstrap_mean`), `proportion` (0/1 outcomes, Wilson interval), `auroc`
  (per-model scores against their labels, a score-type interval: `stats.auroc_estimate`), or `timing` (a mean,
  no interval); every column is also computed per group (`auroc[kind=patch]`: the clean models and the patch
  trojans);
- the verdict: each tool against the strongest baseline (best point estimate of the ranking column), paired over
  the same models (`stats.paired_test`: a sign-flip permutation test of the per-model differences of a mean
  column, a paired bootstrap of an AUROC's), two-sided p-values Holm-corrected across the board's tools, printed
  as beats / ties / worse. Anchors (do-nothing, retrain) get no verdict;
- cells with n < 5 print no interval (see `stats.Estimate`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from .stats import Comparison, Estimate, auroc_estimate, bootstrap_mean, holm, paired_test, proportion
from .store import ResultRow

SPEC_TOOL, SPEC_MODEL, SPEC_METRIC = "trojanbench", "board", "spec"
INFO = "info"
ROLES = ("tool", "baseline", "anchor")


class Column(BaseModel):
    """One statistic of one per-model metric."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str  # the aggregate's name, e.g. "auroc", "target_accuracy", "asr@0.05"
    source: str  # the per-model metric it is computed from, e.g. "score", "target_hit", "asr@0.05"
    stat: Literal["mean", "proportion", "auroc", "timing"] = "mean"
    header: str = ""
    groups: bool = True  # also computed per group of models


class BoardSpec(BaseModel):
    """How one task's board is computed and shown; stored in the run, so a report needs no code of the task."""

    model_config = ConfigDict(extra="forbid")
    task: str
    title: str
    key: str  # the aggregate the board is ranked by and the verdict is about (may be a group cell: "x[kind=patch]")
    higher_is_better: bool = True
    columns: list[Column]
    main: list[str]  # aggregates shown in the main table, in order (the rest go to the long table)
    population: str = ""  # which models, from which split, under which quality gate
    note: str = ""
    # (aggregate, limit): a tool whose aggregate exceeds the limit is disqualified (the Trojan Removal Competition
    # stopped entries that cost too much clean accuracy): its verdict says so and it is never the reference
    gate: tuple[str, float] | None = None

    def header(self, aggregate: str) -> str:
        """A column header: the column's own header, plus the group it is restricted to ("AUROC patch")."""
        base, _, group = aggregate.partition("[")
        try:
            text = self.column(base).header or base
        except KeyError:
            text = base
        if group:
            group = group.rstrip("]")
            # crude / insidious name how the trojan was trained (the insidious mode fine-tunes from the clean twin
            # with suppression), not a trigger kind such as insidious-phrase
            text += " " + ({"crude": "crude-trained", "insidious": "insidious-trained"}.get(group)
                           or group.removeprefix("kind="))
        return text

    def column(self, aggregate: str) -> Column:
        base = aggregate.split("[")[0]
        for c in self.columns:
            if c.name == base:
                return c
        raise KeyError(f"board {self.task!r} has no column {base!r}")


def shown_columns(main: list[str], key: str, present: set[str]) -> list[str]:
    """The main columns a board shows: those of `main` some tool has (`present`: every cell name of the board).
    Where none of them is split by trigger kind (the main columns name image kinds; a text zoo has others), the
    key column of each kind the board holds follows the key column."""
    cols = [m for m in main if m in present]
    if not any("[kind=" in m for m in cols):
        base = key.split("[")[0]
        at = cols.index(key) + 1 if key in cols else len(cols)
        cols[at:at] = sorted(m for m in present if m.startswith(base + "[kind="))
    return cols


def spec_row(spec: BoardSpec) -> ResultRow:
    return ResultRow(SPEC_TOOL, SPEC_MODEL, spec.task, SPEC_METRIC, None, extra={"spec": spec.model_dump()})


def tool_info_rows(task: str, family: str, registry, names) -> list[ResultRow]:
    """What the report says about each tool of a board: family, paper, fidelity note and version, as the run used it."""
    rows = []
    for name in names:
        cls = registry.get(name)
        doc = (cls.__doc__ or "").strip().split("\n")[0]
        rows.append(ResultRow(name, "tool", task, INFO, None, tool_version=getattr(cls, "version", ""),
                              extra={"family": family, "paper": getattr(cls, "paper", ""), "doc": doc,
                                     "fidelity": getattr(cls, "fidelity", ""),
                                     "baseline": bool(getattr(cls, "is_baseline", False))}))
    return rows


def model_row(tool: str, model_id: str, task: str, metric: str, value: float | None, *, role: str, groups: list[str],
              version: str = "", seed: int = 0, label: int | None = None, **extra) -> ResultRow:
    """A per-model row as boards read it (nan values are stored as NULL and left out of statistics)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    value = None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
    body = {"role": role, "groups": list(groups), **({"label": int(label)} if label is not None else {}), **extra}
    return ResultRow(tool, model_id, task, metric, value, seed=seed, tool_version=version, extra=body)


@dataclass
class ToolScores:
    """One tool's row of a board."""

    tool: str
    is_baseline: bool
    metrics: dict[str, Estimate] = field(default_factory=dict)
    role: str = "tool"
    comparison: Comparison | None = None  # against the strongest baseline, on the key column
    n_models: int = 0
    version: str = ""
    disqualified: bool = False  # failed the board's gate

    @property
    def verdict(self) -> str:
        if self.disqualified:
            return "disqualified"
        if self.role != "tool":
            return self.role
        return self.comparison.verdict if self.comparison is not None else "n/a"


@dataclass
class Board:
    spec: BoardSpec
    scores: list[ToolScores]  # ranked
    reference: str | None  # the strongest baseline the verdicts compare with
    n_boot: int = 0

    @property
    def title(self) -> str:
        return self.spec.title

    def get(self, tool: str) -> ToolScores:
        return next(s for s in self.scores if s.tool == tool)


class _Data:
    """A task's per-model rows, indexed for the statistics: (tool, metric) -> {model_id: (value, extra)}."""

    def __init__(self, rows: list[ResultRow]):
        runs = sorted({r.run_id for r in rows if r.run_id})
        if len(runs) > 1:  # a board is one run's: rows of two would silently merge (the later one winning per model)
            raise ValueError(f"a board reads the rows of one run; these come from {len(runs)}: {', '.join(runs)}")
        self.values: dict[tuple[str, str], dict[str, tuple[float, dict]]] = defaultdict(dict)
        self.roles: dict[str, str] = {}
        self.versions: dict[str, str] = {}
        for r in rows:
            if r.tool == SPEC_TOOL or "role" not in r.extra:
                continue
            self.values[(r.tool, r.metric)][r.model_id] = (float("nan") if r.value is None else r.value, r.extra)
            self.roles.setdefault(r.tool, r.extra["role"])
            self.versions.setdefault(r.tool, r.tool_version)

    def tools(self) -> list[str]:
        return sorted(self.roles)

    def units(self, tool: str, column: Column, group: str | None) -> tuple[list[str], np.ndarray, np.ndarray | None]:
        """(model ids, values, labels or None) of one tool's cell. For AUROC a group keeps every negative."""
        cell = self.values.get((tool, column.source), {})
        # an AUROC cell of a group compares that group's positives with the negatives tagged with the group, or
        # with every negative when none is tagged (clean models belong to no trigger kind)
        tagged = group is not None and column.stat == "auroc" and any(
            e.get("label") == 0 and group in e.get("groups", []) for _, e in cell.values())
        ids, vals, labels = [], [], []
        for mid, (v, extra) in sorted(cell.items()):
            label = extra.get("label")
            in_group = group is None or group in extra.get("groups", [])
            if not in_group and not (column.stat == "auroc" and label == 0 and not tagged):
                continue
            ids.append(mid)
            vals.append(v)
            labels.append(label)
        labels_a = np.asarray([int(x) for x in labels]) if column.stat == "auroc" else None
        return ids, np.asarray(vals, dtype=np.float64), labels_a

    def groups(self, column: Column) -> list[str]:
        found = set()
        for (tool, metric), cell in self.values.items():
            if metric == column.source:
                for _, extra in cell.values():
                    found.update(extra.get("groups", []))
        return sorted(found)


def _unit(model_id: str) -> str:
    """The model behind a row's id: `<id>@without-<kind>` (a clean model scored once per left-out trigger kind,
    `tasks.detect`) is model `<id>`."""
    return model_id.split("@", 1)[0]


def _estimate(column: Column, values: np.ndarray, labels: np.ndarray | None, n_boot: int, seed: int,
              ids: list[str]) -> Estimate:
    if column.stat == "auroc":
        keep = ~np.isnan(values)
        return auroc_estimate(labels[keep], values[keep], [_unit(i) for i, k in zip(ids, keep) if k])
    if column.stat == "proportion":
        return proportion(values)
    if column.stat == "timing":
        v = values[~np.isnan(values)]
        return Estimate(float(v.mean()) if len(v) else float("nan"), n=len(v))
    return bootstrap_mean(values, n_boot, seed)


def _split(aggregate: str) -> tuple[str, str | None]:
    if "[" in aggregate:
        base, group = aggregate.split("[", 1)
        return base, group.rstrip("]")
    return aggregate, None


def compute_board(rows: list[ResultRow], spec: BoardSpec, n_boot: int = 2000, seed: int = 0) -> Board:
    """Every tool's cells and its verdict against the strongest baseline, from one run's rows of `spec.task`."""
    data = _Data([r for r in rows if r.task == spec.task])
    scores = []
    for tool in data.tools():
        s = ToolScores(tool, data.roles[tool] == "baseline", role=data.roles[tool], version=data.versions[tool])
        for column in spec.columns:
            ids, vals, labels = data.units(tool, column, None)
            if not ids:
                continue
            s.metrics[column.name] = _estimate(column, vals, labels, n_boot, seed, ids)
            if column.name == spec.key.split("[")[0]:  # the models the ranking column covers (a pooled column,
                s.n_models = int((~np.isnan(vals)).sum())  # like leave-one-kind-out, counts a clean model once per
                # kind); a model the tool failed on (a NULL value) is not one it was scored on
            if column.groups:
                for g in data.groups(column):
                    ids_g, vals_g, labels_g = data.units(tool, column, g)
                    if ids_g:
                        s.metrics[f"{column.name}[{g}]"] = _estimate(column, vals_g, labels_g, n_boot, seed, ids_g)
        if spec.gate is not None:
            value = s.metrics.get(spec.gate[0], Estimate(math.nan)).value
            s.disqualified = not math.isnan(value) and value > spec.gate[1]
        scores.append(s)
    reference = _compare(data, spec, scores, n_boot, seed)
    sign = 1 if spec.higher_is_better else -1

    def rank_key(s: ToolScores):
        v = s.metrics.get(spec.key, Estimate(float("nan"))).value
        return (math.isnan(v), -sign * v if not math.isnan(v) else 0.0, s.tool)

    return Board(spec, sorted(scores, key=rank_key), reference, n_boot)


def _paired(data: _Data, column: Column, group: str | None, tool: str, ref_tool: str, n_boot: int, seed: int) -> Comparison:
    """stat(tool) − stat(ref_tool) on the models both scored, paired (see `paired_test`)."""
    ref_ids, ref_vals, _ = data.units(ref_tool, column, group)
    ref = dict(zip(ref_ids, ref_vals))
    ids, vals, labels = data.units(tool, column, group)
    common = [i for i, mid in enumerate(ids) if mid in ref]
    kind = "auroc" if column.stat == "auroc" else "mean"
    return paired_test(vals[common], np.asarray([ref[ids[i]] for i in common]), kind,
                       None if labels is None else labels[common], n_boot, seed)


def _compare(data: _Data, spec: BoardSpec, scores: list[ToolScores], n_boot: int, seed: int) -> str | None:
    """Set each tool's paired comparison with the strongest baseline on the key aggregate; returns its name."""
    base, group = _split(spec.key)
    column = spec.column(spec.key)
    sign = 1 if spec.higher_is_better else -1
    baselines = [s for s in scores if s.role == "baseline" and not s.disqualified
                 and not math.isnan(s.metrics.get(spec.key, Estimate(math.nan)).value)]
    if not baselines:
        return None
    best = max(baselines, key=lambda s: (sign * s.metrics[spec.key].value, s.tool))
    comparisons = []
    for s in scores:
        if s.role != "tool" or s.disqualified or spec.key not in s.metrics or column.stat == "timing":
            continue
        s.comparison = _paired(data, column, group, s.tool, best.tool, n_boot, seed)
        comparisons.append(s.comparison)
    holm(comparisons, spec.higher_is_better)
    return best.tool


def pairwise(rows: list[ResultRow], board: Board, top: int = 3, n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """Paired verdicts among the board's `top` ranked tools (baselines included, disqualified ones left out) on its
    key aggregate, every pair Holm-corrected together: [{a, b, diff, low, high, n, p, p_holm, verdict}], where the
    verdict is a's ("beats", "ties", "worse") against b."""
    spec = board.spec
    column = spec.column(spec.key)
    if column.stat == "timing":
        return []
    data = _Data([r for r in rows if r.task == spec.task])
    ranked = [s.tool for s in board.scores if not s.disqualified
              and not math.isnan(s.metrics.get(spec.key, Estimate(math.nan)).value)][:top]
    pairs = [(a, b) for i, a in enumerate(ranked) for b in ranked[i + 1:]]
    comparisons = holm([_paired(data, column, _split(spec.key)[1], a, b, n_boot, seed) for a, b in pairs],
                       spec.higher_is_better)
    return [{"a": a, "b": b, "diff": round(c.diff.value, 6), "low": round(c.diff.low, 6), "high": round(c.diff.high, 6),
             "n": c.diff.n, "p": None if math.isnan(c.p) else round(c.p, 6),
             "p_holm": None if math.isnan(c.p_holm) else round(c.p_holm, 6), "verdict": c.verdict}
            for (a, b), c in zip(pairs, comparisons)]


def paired_comparisons(rows: list[ResultRow], spec: BoardSpec, items: list[tuple[str, str, str | None]], metric: str,
                       n_boot: int = 2000, seed: int = 0) -> list[Comparison]:
    """For each (tool, reference, group) of `items`: stat(tool) - stat(reference) on column `metric` over the models
    of `group` (None: all) both scored, paired as a board's verdicts are; Holm-corrected together, with verdicts in
    the board's direction (`spec.higher_is_better`)."""
    data = _Data([r for r in rows if r.task == spec.task])
    column = spec.column(metric)
    return holm([_paired(data, column, g, a, b, n_boot, seed) for a, b, g in items], spec.higher_is_better)


def board_specs(rows: list[ResultRow]) -> dict[str, BoardSpec]:
    """The board specs a run stored, by task."""
    return {r.task: BoardSpec.model_validate(r.extra["spec"]) for r in rows
            if r.tool == SPEC_TOOL and r.model_id == SPEC_MODEL and r.metric == SPEC_METRIC}


def boards_of_run(rows: list[ResultRow], n_boot: int = 2000, seed: int = 0) -> list[Board]:
    """Every board of one run's rows, in the order their specs were stored."""
    return [compute_board(rows, spec, n_boot, seed) for spec in board_specs(rows).values()]


def board_json(board: Board) -> dict:
    """A board as plain data (for benchmarks/results/*.json and exports)."""
    def est(e: Estimate) -> dict:
        out = {"value": None if math.isnan(e.value) else round(e.value, 6), "n": e.n}
        if e.has_interval:
            out.update(low=round(e.low, 6), high=round(e.high, 6), method=e.method)
        return out

    tools = []
    for s in board.scores:
        item = {"tool": s.tool, "role": s.role, "verdict": s.verdict, "n_models": s.n_models,
                "metrics": {m: est(e) for m, e in sorted(s.metrics.items())}}
        if s.comparison is not None:
            item["vs_reference"] = {"diff": est(s.comparison.diff), "p": round(s.comparison.p, 6),
                                    "p_holm": None if math.isnan(s.comparison.p_holm) else round(s.comparison.p_holm, 6)}
        tools.append(item)
    return {"task": board.spec.task, "title": board.spec.title, "key": board.spec.key,
            "higher_is_better": board.spec.higher_is_better, "population": board.spec.population,
            "main": [[a, board.spec.header(a)] for a in board.spec.main], "note": board.spec.note,
            "reference": board.reference, "n_boot": board.n_boot, "verdict_test": verdict_test(board.spec), "tools": tools}


def verdict_test(spec: BoardSpec) -> str:
    """The paired test behind a board's verdicts (`stats.paired_test`), by its ranking column."""
    return "paired bootstrap" if spec.column(spec.key).stat == "auroc" else "sign-flip permutation test"
