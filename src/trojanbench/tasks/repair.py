"""The repair track: give each repairer a trojaned model and a small budget of clean training images, and
measure what comes back on the test set: attack success rate (ASR), clean accuracy, robust accuracy
(triggered test images classified as their true label) and wall time, for every trojaned model of a zoo
and every budget. Aggregates carry bootstrap 95% CIs and are split by trigger kind and crude vs insidious.

A method "beats fine-tuning" at a budget when, paired model by model against plain fine-tuning on the very
same budget images, the 95% bootstrap CI of its ASR difference lies below zero and its mean clean-accuracy
cost is at most one point above fine-tuning's (see docs/repair.md).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data import ImageDataset
from ..errors import UserError
from ..implant import prepare
from ..results import ResultRow, ResultsStore
from ..results.stats import Estimate, bootstrap, mean
from ..tools.repair import REPAIRERS, RepairContext
from ..train.evaluate import attack_success_rate, clean_accuracy, clean_test_mask, predict
from ..trojans.poison import attack_mask
from ..zoo.build import Zoo
from ..zoo.plan import Job
from ..zoo.store import load_model

TASK = "repair"
REFERENCE = "finetune"
MAX_EXTRA_COST = 0.01  # clean-accuracy points (as a fraction) a method may lose beyond fine-tuning and still beat it


class Flag(Estimate):
    """A yes/no verdict that prints as one in a leaderboard column."""

    def __str__(self) -> str:
        return "n/a" if math.isnan(self.value) else ("yes" if self.value else "no")


@dataclass
class RepairScores:
    """One method at one budget; `metrics` as in ToolScores (so `report.leaderboard.leaderboard` prints it).
    `is_baseline` is true for the reference (fine-tuning) only; the anchors are marked by `anchor`."""

    tool: str
    is_baseline: bool
    budget: float
    anchor: bool = False
    metrics: dict[str, Estimate] = field(default_factory=dict)


def groups_of(job: Job) -> list[str]:
    return [f"kind={job.trojan.trigger.kind}", "insidious" if job.trojan.insidious else "crude"]


def draw_budget(y: torch.Tensor, fraction: float, num_classes: int, seed: int = 0) -> torch.Tensor:
    """Indices of a class-balanced clean budget of round(fraction x N) training images (at least one per
    class). Deterministic in `seed`, and nested: a smaller budget is a prefix of a larger one."""
    n = max(num_classes, round(fraction * len(y)))
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    rank = torch.empty(len(y), dtype=torch.long)
    for c in range(num_classes):  # the k-th image of each class (in random order) comes before any (k+1)-th
        members = perm[y[perm] == c]
        rank[members] = torch.arange(len(members))
    order = perm[torch.argsort(rank[perm] * (len(y) + 1) + torch.arange(len(y)), stable=True)]
    return order[:min(n, len(y))]


def measure_repair(model, ds: ImageDataset, job: Job, trigger, batch_size: int = 1024) -> dict[str, float]:
    """Clean accuracy (on test images that carry no trigger), ASR and robust accuracy (on triggered test
    images whose true label is not the target)."""
    keep = clean_test_mask(trigger, ds.x_test)
    out = {"clean_acc": clean_accuracy(model, ds.x_test[keep], ds.y_test[keep], batch_size),
           "asr": attack_success_rate(model, trigger, job.trojan.poison, ds.x_test, ds.y_test, ds.num_classes, batch_size)}
    sel = attack_mask(ds.y_test, job.trojan.poison)
    x_trig = trigger.apply(ds.x_test[sel], generator=torch.Generator().manual_seed(0))
    out["robust_acc"] = float((predict(model, x_trig, batch_size) == ds.y_test[sel]).float().mean())
    return out


def _resolve(tools: list[str] | None) -> list[str]:
    if tools is None:
        return REPAIRERS.names()
    unknown = [t for t in tools if t not in REPAIRERS]
    if unknown:
        raise UserError(f"unknown repairer {unknown[0]!r}; known: {', '.join(REPAIRERS.names())}")
    names = list(dict.fromkeys(tools))
    return names if REFERENCE in names else [REFERENCE, *names]  # every method is judged against fine-tuning


def run_repair_track(zoo_dir: str | Path, results: str | Path | None, tools: list[str] | None = None,
                     budgets: tuple[float, ...] = (0.01, 0.05, 0.10), seed: int = 0, n_boot: int = 1000, progress=None,
                     max_models: int | None = None, kinds: list[str] | None = None, device: str = "cpu",
                     plot: str | Path | None = None, split: str | None = None) -> dict[float, list[RepairScores]]:
    """Repair every trojaned model of the zoo (all splits; those with a trigger kind in `kinds`, the first
    `max_models`; `split` "train"/"test" restricts to one zoo split) with every repairer in `tools` (default: all; fine-tuning is always added) at every budget.
    Per-model rows and aggregates go to the results store at `results` (None: not stored); a frontier plot
    to `plot` if given. Returns, per budget, one RepairScores per method, in registry order."""
    zoo = Zoo(zoo_dir)
    zoo.plan()  # a clear error if this is not a zoo
    names = _resolve(tools)
    if not budgets or any(not 0 < b <= 1 for b in budgets):
        raise UserError(f"budgets must be fractions in (0, 1], got {list(budgets)}")
    cfg = zoo.config()
    ds = zoo.dataset()
    models = [(j, f, c) for j, f, c in zoo.models(split=split)
              if j.trojaned and (kinds is None or j.trojan.trigger.kind in kinds)]
    if max_models is not None:
        models = models[:max_models]
    if not models:
        raise UserError(f"zoo {zoo.root} has no trojaned models" + (f" of kind {', '.join(kinds)}" if kinds else ""))
    budget_idx = {b: draw_budget(ds.y_train, b, ds.num_classes, seed) for b in budgets}
    dev = torch.device(device)
    zoo_id = f"zoo:{cfg.name}"
    store = ResultsStore(results) if results is not None else None
    per_model: dict[tuple[str, float], list[dict]] = defaultdict(list)
    try:
        for job, folder, card in models:
            model, _ = load_model(folder, dev)
            trigger = prepare(ds, job.arch, job.arch_kwargs, job.trojan, seed=card.seed).trigger
            before = measure_repair(model, ds, job, trigger)
            for b in budgets:
                idx = budget_idx[b]
                ctx = RepairContext(ds.num_classes, card.arch, dict(card.arch_kwargs), dict(ds.augment), dev, seed)
                for name in names:
                    rep = REPAIRERS.get(name)()
                    start = time.perf_counter()
                    repaired = rep.repair(model, ds.x_train[idx], ds.y_train[idx], ctx)
                    seconds = time.perf_counter() - start
                    after = measure_repair(repaired.cpu(), ds, job, trigger)
                    rec = {**after, "seconds": seconds, "asr_before": before["asr"], "clean_before": before["clean_acc"],
                           "asr_drop": before["asr"] - after["asr"], "clean_cost": before["clean_acc"] - after["clean_acc"],
                           "groups": groups_of(job), "model": card.id}
                    per_model[(name, b)].append(rec)
                    if store is not None:
                        extra = {"budget": b, "n_budget": len(idx), "seconds": seconds, "job": job.id,
                                 "kind": job.trojan.trigger.kind, "insidious": bool(job.trojan.insidious),
                                 "asr_before": before["asr"], "clean_before": before["clean_acc"]}
                        store.write([ResultRow(name, card.id, TASK, f"{metric}@{b:g}", after[metric], seed=seed,
                                               tool_version=rep.version, extra=extra)
                                     for metric in ("asr", "clean_acc", "robust_acc")])
                    if progress:
                        progress()
        out = {b: [_aggregate(name, b, per_model, n_boot, seed) for name in names] for b in budgets}
        if store is not None:
            for b, scores in out.items():
                store.write([ResultRow(s.tool, zoo_id, TASK, f"{metric}@{b:g}", est.value, seed=seed,
                                       tool_version=REPAIRERS.get(s.tool).version,
                                       extra={"low": est.low, "high": est.high, "n": est.n, "budget": b,
                                              "baseline": s.is_baseline, "anchor": s.anchor})
                             for s in scores for metric, est in s.metrics.items()])
    finally:
        if store is not None:
            store.close()
    if plot is not None:
        frontier_plot(out, plot)
    return out


def _aggregate(name: str, budget: float, per_model, n_boot: int, seed: int) -> RepairScores:
    recs = per_model[(name, budget)]
    cls = REPAIRERS.get(name)
    res = RepairScores(name, name == REFERENCE, budget, anchor=cls.is_baseline and name != REFERENCE)
    groups = sorted({g for r in recs for g in r["groups"]})
    for metric in ("asr", "clean_acc", "robust_acc", "asr_drop", "clean_cost"):
        vals = np.array([r[metric] for r in recs])
        res.metrics[metric] = bootstrap(mean, vals, n_boot=n_boot, seed=seed)
        for g in groups:
            sub = np.array([r[metric] for r in recs if g in r["groups"]])
            res.metrics[f"{metric}[{g}]"] = bootstrap(mean, sub, n_boot=n_boot, seed=seed)
    res.metrics["seconds_per_model"] = Estimate(float(np.mean([r["seconds"] for r in recs])), float("nan"), float("nan"),
                                                len(recs))
    ref = per_model[(REFERENCE, budget)]
    for g in [None, *groups]:
        suffix = "" if g is None else f"[{g}]"
        pairs = [(r, f) for r, f in zip(recs, ref) if g is None or g in r["groups"]]
        res.metrics[f"beats_finetune{suffix}"] = _beats(pairs, n_boot, seed) if name != REFERENCE else \
            Flag(float("nan"), float("nan"), float("nan"), len(pairs))
    return res


def _beats(pairs: list[tuple[dict, dict]], n_boot: int, seed: int) -> Flag:
    """Paired against fine-tuning on the same models and budget: ASR difference CI entirely below zero, and
    mean extra clean-accuracy cost at most MAX_EXTRA_COST."""
    if not pairs:
        return Flag(float("nan"), float("nan"), float("nan"), 0)
    d_asr = np.array([r["asr"] - f["asr"] for r, f in pairs])
    d_cost = np.array([r["clean_cost"] - f["clean_cost"] for r, f in pairs])
    est = bootstrap(mean, d_asr, n_boot=n_boot, seed=seed)
    high = est.high if not math.isnan(est.high) else est.value
    verdict = bool(high < 0 and d_cost.mean() <= MAX_EXTRA_COST)
    return Flag(float(verdict), est.low, est.high, len(pairs))


def repair_tables(scores: dict[float, list[RepairScores]]):
    """One rich leaderboard per budget, ranked by ASR after repair (lower is better), fine-tuning as the
    baseline; the 'beats FT' column applies the combined rule (ASR and clean cost)."""
    from ..report.leaderboard import leaderboard

    cols = [("asr", "ASR after"), ("clean_acc", "clean acc"), ("clean_cost", "clean cost"), ("robust_acc", "robust acc"),
            ("asr[kind=patch]", "ASR patch"), ("asr[insidious]", "ASR insidious"), ("seconds_per_model", "s/model"),
            ("beats_finetune", "beats FT")]
    return [leaderboard(f"Repair with a {b:.0%} clean budget ({len(s)} methods, {s[0].metrics['asr'].n} trojaned models)",
                        s, "asr", cols, higher_is_better=False) for b, s in scores.items()]


def frontier_plot(scores: dict[float, list[RepairScores]] | list[RepairScores], path: str | Path,
                  group: str | None = None) -> Path:
    """A PNG with one panel per budget: mean ASR drop (y) against mean clean-accuracy cost (x) per method,
    95% CIs as error bars, the Pareto frontier drawn through the undominated methods. `group` (such as
    "kind=patch" or "insidious") restricts to that split."""
    from ..report.plots import pyplot, save

    plt = pyplot()
    if isinstance(scores, list):
        by_budget: dict[float, list[RepairScores]] = defaultdict(list)
        for s in scores:
            by_budget[s.budget].append(s)
        scores = dict(by_budget)
    budgets = sorted(scores)
    fig, axes = plt.subplots(1, len(budgets), figsize=(5.2 * len(budgets), 4.6), squeeze=False, sharey=True)
    sfx = f"[{group}]" if group else ""
    markers = "osD^v<>pPX*h"
    for ax, b in zip(axes[0], budgets):
        pts = []
        for i, s in enumerate(scores[b]):
            cost, drop = s.metrics.get(f"clean_cost{sfx}"), s.metrics.get(f"asr_drop{sfx}")
            if cost is None or drop is None or math.isnan(cost.value):
                continue
            err = [np.nan_to_num([[e.value - e.low], [e.high - e.value]]) for e in (cost, drop)]
            style = {"color": "black"} if s.is_baseline else {"color": "grey"} if s.anchor else {}
            ax.errorbar(100 * cost.value, 100 * drop.value, xerr=100 * err[0], yerr=100 * err[1],
                        fmt=markers[i % len(markers)], capsize=2, label=s.tool, **style)
            pts.append((cost.value, drop.value))
        front = sorted(p for p in pts if not any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in pts))
        if front:
            ax.step([100 * p[0] for p in front], [100 * p[1] for p in front], where="post", color="C7", lw=1, alpha=0.6)
        ax.axvline(3, color="C3", lw=0.8, ls=":")
        ax.set_title(f"{b:.0%} clean budget" + (f" ({group})" if group else ""))
        ax.set_xlabel("clean-accuracy cost (points)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("ASR drop (points)")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.83, 1))
    return save(fig, path, dpi=120)
