"""The detection track: score model-level and sample-level detectors on a zoo with ground truth.

Model level (zoo's held-out split; learned detectors are fitted on its training split only):
AUROC, AUPR, FPR at 95% TPR, each with a bootstrap 95% CI and split by trigger kind and by crude vs
insidious; target-label accuracy among all-to-one trojans; trigger IoU for detectors that return a mask
(against patch triggers at a fixed place; the mask is binarised at half its maximum); wall time per model.
Sample level (every trojaned model; nothing is learned): poisoned-sample AUROC and TPR at 5% FPR.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..implant import prepare
from ..results import ResultRow, ResultsStore
from ..report.html import figure_row
from ..report.plots import roc_plot
from ..results.stats import Estimate, aupr, auroc, bootstrap, fpr_at_tpr, mean, tpr_at_fpr
from ..tools.detect import DETECTORS, SAMPLE_DETECTORS, DetectContext
from ..trojans import make_trigger
from ..zoo.build import Zoo
from ..zoo.plan import Job
from ..zoo.store import load_model, load_poisoned_indices

TASK_MODEL, TASK_SAMPLE = "detect-model", "detect-samples"


@dataclass
class ToolScores:
    tool: str
    is_baseline: bool
    metrics: dict[str, Estimate] = field(default_factory=dict)
    curve: tuple[np.ndarray, np.ndarray] | None = None  # (labels, scores) of model-level detectors, for ROC plots


def _group(job: Job) -> list[str]:
    if not job.trojaned:
        return []
    return [f"kind={job.trojan.trigger.kind}", "insidious" if job.trojan.insidious else "crude"]


def _iou(mask: torch.Tensor, truth: torch.Tensor) -> float:
    pred = mask >= 0.5 * mask.max()
    truth = truth > 0.5
    union = (pred | truth).sum()
    return float((pred & truth).sum() / union) if union else 0.0


def detection_context(zoo: Zoo, n_clean: int = 200, seed: int = 0, device: str = "cpu"):
    ds = zoo.dataset()
    return ds, DetectContext(ds.x_test[:n_clean], ds.y_test[:n_clean], ds.num_classes, torch.device(device), seed)


def score_model_detectors(zoo: Zoo, names: list[str], ctx: DetectContext, image_shape, store: ResultsStore | None,
                          zoo_id: str, n_boot: int = 1000, progress=None) -> list[ToolScores]:
    train = None  # loaded once, and only if a learned detector needs it
    test = [(j, f, c) for j, f, c in zoo.models(split="test")]
    if not test or len({j.trojaned for j, _, _ in test}) < 2:
        raise UserError(f"zoo {zoo.root} has no held-out split with both clean and trojaned models")
    out = []
    for name in names:
        det = DETECTORS.get(name)()
        if det.learned:
            if train is None:
                train = [(j, load_model(f, ctx.device)[0]) for j, f, _ in zoo.models(split="train")]
            det.fit([m for _, m in train], [int(j.trojaned) for j, _ in train], ctx)
        labels, scores, groups, target_hits, ious, seconds = [], [], [], [], [], []
        for job, folder, card in test:
            model, _ = load_model(folder, ctx.device)
            start = time.perf_counter()
            d = det.detect(model, ctx)
            seconds.append(time.perf_counter() - start)
            labels.append(int(job.trojaned))
            scores.append(d.score)
            groups.append(_group(job))
            if job.trojaned and job.trojan.poison.target is not None and d.target_label is not None:
                target_hits.append(float(d.target_label == job.trojan.poison.target))
            if job.trojaned and d.mask is not None:
                truth = make_trigger(job.trojan.trigger, image_shape).mask()
                if truth is not None:
                    ious.append(_iou(d.mask, truth))
            if store is not None:
                store.write([ResultRow(name, card.id, TASK_MODEL, "score", d.score, seed=ctx.seed, tool_version=det.version,
                                       extra={"target_label": d.target_label, "seconds": seconds[-1], "job": job.id,
                                              "trojaned": job.trojaned})])
            if progress:
                progress()
        labels_a, scores_a = np.asarray(labels), np.asarray(scores)
        res = ToolScores(name, det.is_baseline)
        res.metrics["auroc"] = bootstrap(auroc, labels_a, scores_a, n_boot=n_boot, seed=ctx.seed, stratify=labels_a)
        res.metrics["aupr"] = bootstrap(aupr, labels_a, scores_a, n_boot=n_boot, seed=ctx.seed, stratify=labels_a)
        res.metrics["fpr@95tpr"] = bootstrap(fpr_at_tpr, labels_a, scores_a, n_boot=n_boot, seed=ctx.seed, stratify=labels_a)
        for g in sorted({g for gs in groups for g in gs}):
            keep = np.array([lab == 0 or g in gs for lab, gs in zip(labels, groups)])
            res.metrics[f"auroc[{g}]"] = bootstrap(auroc, labels_a[keep], scores_a[keep], n_boot=n_boot, seed=ctx.seed,
                                                   stratify=labels_a[keep])
        if target_hits:
            res.metrics["target_accuracy"] = bootstrap(mean, np.asarray(target_hits), n_boot=n_boot, seed=ctx.seed)
        if ious:
            res.metrics["trigger_iou"] = bootstrap(mean, np.asarray(ious), n_boot=n_boot, seed=ctx.seed)
        res.metrics["seconds_per_model"] = Estimate(float(np.mean(seconds)), float("nan"), float("nan"), len(seconds))
        _store_aggregates(store, res, zoo_id, TASK_MODEL, ctx.seed, det.version)
        res.curve = (labels_a, scores_a)
        out.append(res)
    return out


def score_sample_detectors(zoo: Zoo, names: list[str], ds, ctx: DetectContext, store: ResultsStore | None, zoo_id: str,
                           n_boot: int = 1000, progress=None, split: str | None = None) -> list[ToolScores]:
    trojaned = [(j, f, c) for j, f, c in zoo.models(split=split) if j.trojaned]
    poisoned = []
    for job, folder, card in trojaned:  # rebuild each model's exact training set from its card
        p = prepare(ds, job.arch, job.arch_kwargs, job.trojan, seed=card.seed)
        recorded = load_poisoned_indices(folder, card)
        if not torch.equal(p.poisoned_indices, recorded):
            raise UserError(f"{folder}: rebuilt poisoning differs from the recorded indices; was the data changed?")
        flags = torch.zeros(len(p.x), dtype=torch.bool)
        flags[recorded] = True
        poisoned.append((job, folder, card, p.x, p.y, flags))
    out = []
    for name in names:
        det = SAMPLE_DETECTORS.get(name)()
        aurocs, tprs, groups, seconds = [], [], [], []
        for job, folder, card, x, y, flags in poisoned:
            model, _ = load_model(folder, ctx.device)
            start = time.perf_counter()
            s = det.suspicion(model, x, y, ctx).numpy()
            seconds.append(time.perf_counter() - start)
            aurocs.append(auroc(flags.numpy(), s))
            tprs.append(tpr_at_fpr(flags.numpy(), s, 0.05))
            groups.append(_group(job))
            if store is not None:
                store.write(ResultRow(name, card.id, TASK_SAMPLE, "auroc", aurocs[-1], seed=ctx.seed, tool_version=det.version,
                                      extra={"tpr@5fpr": tprs[-1], "seconds": seconds[-1], "job": job.id}))
            if progress:
                progress()
        res = ToolScores(name, det.is_baseline)
        res.metrics["auroc"] = bootstrap(mean, np.asarray(aurocs), n_boot=n_boot, seed=ctx.seed)
        res.metrics["tpr@5fpr"] = bootstrap(mean, np.asarray(tprs), n_boot=n_boot, seed=ctx.seed)
        by_group = defaultdict(list)
        for a, gs in zip(aurocs, groups):
            for g in gs:
                by_group[g].append(a)
        for g, vals in sorted(by_group.items()):
            res.metrics[f"auroc[{g}]"] = bootstrap(mean, np.asarray(vals), n_boot=n_boot, seed=ctx.seed)
        res.metrics["seconds_per_model"] = Estimate(float(np.mean(seconds)), float("nan"), float("nan"), len(seconds))
        _store_aggregates(store, res, zoo_id, TASK_SAMPLE, ctx.seed, det.version)
        out.append(res)
    return out


def _store_aggregates(store, res: ToolScores, zoo_id: str, task: str, seed: int, version: str) -> None:
    if store is None:
        return
    store.write([ResultRow(res.tool, zoo_id, task, metric, est.value, seed=seed, tool_version=version,
                           extra={"low": est.low, "high": est.high, "n": est.n, "baseline": res.is_baseline})
                 for metric, est in res.metrics.items()])


def run_detect_track(zoo_dir: str | Path, results: str | Path, tools: list[str] | None = None, seed: int = 0,
                     device: str = "cpu", n_boot: int = 1000, progress=None,
                     figures: str | Path | None = None, sample_split: str | None = None) -> tuple[list[ToolScores], list[ToolScores]]:
    """Score detectors on a zoo, write rows to `results`; with `figures`, also draw the ROC curves there and
    register them for the report. Sample-level detectors run on every trojaned model (`sample_split`: only
    those of one split)."""
    zoo = Zoo(zoo_dir)
    zoo.plan()  # a clear error if this is not a zoo
    model_names = [n for n in DETECTORS.names() if tools is None or n in tools]
    sample_names = [n for n in SAMPLE_DETECTORS.names() if tools is None or n in tools]
    unknown = set(tools or []) - set(model_names) - set(sample_names)
    if unknown:
        known = sorted(set(DETECTORS.names()) | set(SAMPLE_DETECTORS.names()))
        raise UserError(f"unknown detector {sorted(unknown)[0]!r}; known: {', '.join(known)}")
    ds, ctx = detection_context(zoo, seed=seed, device=device)
    zoo_id = f"zoo:{zoo.config().name}"
    with ResultsStore(results) as store:
        model_scores = score_model_detectors(zoo, model_names, ctx, ds.image_shape, store, zoo_id, n_boot, progress) \
            if model_names else []
        sample_scores = score_sample_detectors(zoo, sample_names, ds, ctx, store, zoo_id, n_boot, progress, sample_split) \
            if sample_names else []
        if figures is not None and model_scores:
            path = roc_plot({s.tool: s.curve for s in model_scores}, Path(figures) / f"roc-{zoo.config().name}.png",
                            f"model detection, {zoo.config().name} (held-out)", {s.tool for s in model_scores if s.is_baseline})
            store.write(figure_row("detect", TASK_MODEL, path, "ROC curves of every model-level detector on the held-out "
                                   "split (AUROC in the legend; baselines dashed)", seed))
    return model_scores, sample_scores
