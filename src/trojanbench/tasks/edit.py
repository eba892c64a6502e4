"""The locate-and-edit track: causal tracing names a layer, one rank-one update of that layer cancels the
trigger's key direction; scored by ASR drop and clean-accuracy cost beside fine-tuning that same layer alone
on the same clean budget.

The auditor gets what the diagnosis track gives it: the trigger (to make triggered twins of clean images)
and a clean budget (5% of the training set, class-balanced, as in the repair track) for key statistics and
for the fine-tuning comparison. Scores are per trojaned model, aggregated with bootstrap 95% CIs, split by
trigger kind and crude vs insidious.
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..implant import prepare
from ..registry import Registry
from ..results import ResultRow, ResultsStore
from ..results.stats import Estimate, bootstrap, mean
from ..tools.edit import rank_one_edit
from ..tools.locate import causal_trace
from ..zoo.build import Zoo
from ..zoo.store import load_model
from .detect import ToolScores
from .repair import draw_budget, groups_of, measure_repair

TASK = "edit"
EDITORS: Registry = Registry("editor")


@EDITORS.register("rank-one-edit")
def _rank_one(model, layer, x_trig, x_clean, x_budget, y_budget, seed):
    return rank_one_edit(model, layer, x_trig, x_clean, x_budget)


@EDITORS.register("finetune-layer")
def _finetune_layer(model, layer, x_trig, x_clean, x_budget, y_budget, seed, steps: int = 100, lr: float = 0.01):
    """The comparison: fine-tune only `layer`'s weight on the clean budget (it never sees the trigger)."""
    edited = copy.deepcopy(model).eval()  # BatchNorm statistics stay fixed
    module = dict(edited.named_modules())[layer]
    for p in edited.parameters():
        p.requires_grad_(False)
    module.weight.requires_grad_(True)
    opt = torch.optim.SGD([module.weight], lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(x_budget), (min(64, len(x_budget)),), generator=g)
        loss = F.cross_entropy(edited(x_budget[idx]), y_budget[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for p in edited.parameters():
        p.requires_grad_(True)
    return edited.eval()


EDITORS.get("finetune-layer").is_baseline = True


def run_edit_track(zoo_dir: str | Path, results: str | Path | None, tools: list[str] | None = None, seed: int = 0,
                   budget: float = 0.05, n_images: int = 32, split: str | None = None, max_models: int | None = None,
                   n_boot: int = 1000, progress=None, figures: str | Path | None = None) -> list[ToolScores]:
    names = tools or EDITORS.names()
    for n in names:
        EDITORS.get(n)
    zoo = Zoo(zoo_dir)
    zoo.plan()
    cfg = zoo.config()
    ds = zoo.dataset()
    models = zoo.trojaned(split, max_models)
    idx = draw_budget(ds.y_train, budget, ds.num_classes, seed)
    x_budget, y_budget = ds.x_train[idx], ds.y_train[idx]
    per_tool: dict[str, list[dict]] = defaultdict(list)
    traces = []
    store = ResultsStore(results) if results is not None else None
    try:
        for job, folder, card in models:
            model, _ = load_model(folder)
            target = job.trojan.poison.target
            trigger = prepare(ds, job.arch, job.arch_kwargs, job.trojan, seed=card.seed).trigger
            xc = ds.x_test[ds.y_test != target][:n_images]
            g = torch.Generator().manual_seed(seed)
            xt = trigger.apply(xc, generator=g)
            start = time.perf_counter()
            trace = causal_trace(model, xt, xc, target)
            trace_s = time.perf_counter() - start
            layer = trace.best
            traces.append((job, trace))
            before = measure_repair(model, ds, job, trigger)
            for name in names:
                start = time.perf_counter()
                edited = EDITORS.get(name)(model, layer, trigger.apply(x_budget, generator=g), x_budget, x_budget, y_budget, seed)
                seconds = time.perf_counter() - start + trace_s
                after = measure_repair(edited, ds, job, trigger)
                rec = {"asr": after["asr"], "clean_acc": after["clean_acc"], "asr_drop": before["asr"] - after["asr"],
                       "clean_cost": before["clean_acc"] - after["clean_acc"], "seconds": seconds, "groups": groups_of(job)}
                per_tool[name].append(rec)
                if store is not None:
                    store.write([ResultRow(name, card.id, TASK, m, rec[m], seed=seed,
                                           extra={"layer": layer, "peak": trace.peak, "job": job.id, "budget": budget})
                                 for m in ("asr", "clean_acc", "asr_drop", "clean_cost")])
                if progress:
                    progress()
        out = [_aggregate(name, per_tool[name], n_boot, seed) for name in names]
        if store is not None:
            store.write([ResultRow(s.tool, f"zoo:{cfg.name}", TASK, m, est.value, seed=seed,
                                   extra={"low": est.low, "high": est.high, "n": est.n, "baseline": s.is_baseline})
                         for s in out for m, est in s.metrics.items()])
            if figures is not None:
                from ..report.html import figure_row

                path = trace_figure(traces, Path(figures) / "edit-causal-trace.png")
                if path is not None:
                    store.write(figure_row("edit", TASK, path, "causal tracing of one patch trojan: for each layer, how much "
                                           "of the pull toward the target restoring a 2x2 window of clean activations removes", seed))
    finally:
        if store is not None:
            store.close()
    return out


def _aggregate(name: str, recs: list[dict], n_boot: int, seed: int) -> ToolScores:
    res = ToolScores(name, bool(getattr(EDITORS.get(name), "is_baseline", False)))
    groups = sorted({g for r in recs for g in r["groups"]})
    for metric in ("asr", "clean_acc", "asr_drop", "clean_cost"):
        res.metrics[metric] = bootstrap(mean, np.array([r[metric] for r in recs]), n_boot=n_boot, seed=seed)
        for g in groups:
            vals = np.array([r[metric] for r in recs if g in r["groups"]])
            res.metrics[f"{metric}[{g}]"] = bootstrap(mean, vals, n_boot=n_boot, seed=seed)
    res.metrics["seconds_per_model"] = Estimate(float(np.mean([r["seconds"] for r in recs])), float("nan"), float("nan"), len(recs))
    return res


def trace_figure(traces, path: Path) -> Path | None:
    """Layer x position maps of the first patch trojan's trace (spatial layers only)."""
    from ..report.plots import pyplot, save

    pick = next(((j, t) for j, t in traces if j.trojan.trigger.kind == "patch"), traces[0] if traces else None)
    if pick is None:
        return None
    job, trace = pick
    maps = [(n, e) for n, e in trace.effects.items() if e.dim() == 2]
    if not maps:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(maps), figsize=(2.2 * len(maps), 2.6), dpi=110, squeeze=False)
    for ax, (name, e) in zip(axes[0], maps):
        im = ax.imshow(e.numpy(), cmap="magma", vmin=0, vmax=1)
        ax.set_title(f"layer {name}" + (" (edited)" if name == trace.best else ""), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.suptitle(f"{job.trojan.trigger.kind} trojan -> {job.trojan.poison.target}", fontsize=9)
    return save(fig, path)
