"""The detection track: score model-level and sample-level detectors on a zoo with ground truth.

Model level (the zoo's held-out split; learned detectors are fitted on its training split only, and a trojan
and its clean twin are always on one side of the split): per model the detector's score against the truth
(AUROC, bootstrap stratified by label), whether the target label it names is the trojan's (all-to-one trojans;
a proportion with a Wilson interval), the IoU of its trigger mask with the true footprint (patch triggers at a
fixed place; the mask binarised at half its maximum), and wall time. Learned detectors are also scored
leave-one-trigger-kind-out (`auroc_unseen_kind`): for each kind, refitted without that kind's trojans and
scored on the held-out clean models and that kind's trojans — a detector that only learned our trigger shapes
shows it there. Detectors that learn nothing give the same score either way.
Sample level (every trojaned model of the split; nothing is learned): per model, the AUROC and TPR at 5% FPR of
each detector's per-sample suspicion against the recorded poisoned indices; each model's poisoned training set
is rebuilt from its card, used and dropped before the next.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..implant import prepare
from ..results.boards import Board, BoardSpec, Column, compute_board, model_row, spec_row, tool_info_rows
from ..results.stats import auroc, tpr_at_fpr
from ..results.store import RunWriter, recording
from ..tools.detect import DETECTORS, SAMPLE_DETECTORS, DetectContext
from ..trojans import make_trigger
from ..zoo.build import Zoo
from ..zoo.store import load_model, load_poisoned_indices
from . import groups_of, population, role_of

TASK_MODEL, TASK_SAMPLE = "detect-model", "detect-samples"


def _iou(mask: torch.Tensor, truth: torch.Tensor) -> float:
    pred = mask >= 0.5 * mask.max()
    truth = truth > 0.5
    union = (pred | truth).sum()
    return float((pred & truth).sum() / union) if union else 0.0


def detection_context(zoo: Zoo, n_clean: int = 200, seed: int = 0, device: str = "cpu"):
    ds = zoo.dataset()
    return ds, DetectContext(ds.x_test[:n_clean], ds.y_test[:n_clean], ds.num_classes, torch.device(device), seed)


def model_board_spec(pop: str) -> BoardSpec:
    return BoardSpec(
        task=TASK_MODEL, title="Is this model trojaned?", key="auroc", population=pop,
        columns=[Column(name="auroc", source="score", stat="auroc", header="AUROC"),
                 Column(name="auroc_unseen_kind", source="score_unseen_kind", stat="auroc", header="AUROC unseen kind"),
                 Column(name="target_accuracy", source="target_hit", stat="proportion", header="target acc"),
                 Column(name="trigger_iou", source="trigger_iou", header="trigger IoU"),
                 Column(name="seconds_per_model", source="seconds", stat="timing", header="s/model", groups=False)],
        main=["auroc", "auroc[crude]", "auroc[insidious]", "auroc_unseen_kind", "target_accuracy", "trigger_iou",
              "seconds_per_model"],
        note="auroc_unseen_kind: learned detectors refitted without each trigger kind and scored on it (pooled over kinds)")


def sample_board_spec(pop: str) -> BoardSpec:
    return BoardSpec(
        task=TASK_SAMPLE, title="Which training samples were poisoned?", key="auroc", population=pop,
        columns=[Column(name="auroc", source="auroc", header="AUROC"),
                 Column(name="tpr@5fpr", source="tpr@5fpr", header="TPR@5%FPR"),
                 Column(name="seconds_per_model", source="seconds", stat="timing", header="s/model", groups=False)],
        main=["auroc", "tpr@5fpr", "auroc[kind=patch]", "auroc[crude]", "auroc[insidious]", "seconds_per_model"],
        note="per model: the AUROC of the per-sample suspicion against the recorded poisoned indices; mean over models")


def _fit(name: str, train, ctx: DetectContext, leave_out: str | None = None):
    det = DETECTORS.get(name)()
    if det.learned:
        keep = [(j, m) for j, m in train if not (j.trojaned and j.trojan.trigger.kind == leave_out)]
        det.fit([m for _, m in keep], [int(j.trojaned) for j, _ in keep], ctx)
    return det


def score_model_detectors(zoo: Zoo, names: list[str], ctx: DetectContext, image_shape, store: RunWriter | None,
                          progress=None, split: str = "test") -> list:
    """Per-model rows of every model-level detector on the zoo's `split` (written to `store` as they come)."""
    store = store if store is not None else RunWriter(None)  # None: rows are only returned
    test = zoo.models(split=split)
    if not test or len({j.trojaned for j, _, _ in test}) < 2:
        raise UserError(f"zoo {zoo.root} has no {split} split with both clean and trojaned models")
    train = None  # loaded once, and only if a learned detector needs it
    kinds = sorted({j.trojan.trigger.kind for j, _, _ in test if j.trojaned})
    rows = []

    def emit(new):
        rows.extend(new)
        store.write(new)

    for name in names:
        cls = DETECTORS.get(name)
        role = role_of(cls)
        if cls().learned and train is None:
            train = [(j, load_model(f, ctx.device)[0]) for j, f, _ in zoo.models(split="train")]
        det = _fit(name, train, ctx)
        for job, folder, card in test:
            model, _ = load_model(folder, ctx.device)
            start = time.perf_counter()
            d = det.detect(model, ctx)
            seconds = time.perf_counter() - start
            common = dict(role=role, groups=groups_of(job), version=det.version, seed=ctx.seed, job=job.id)
            new = [model_row(name, card.id, TASK_MODEL, "score", d.score, label=int(job.trojaned),
                             target_label=d.target_label, **common),
                   model_row(name, card.id, TASK_MODEL, "seconds", seconds, **common)]
            if not det.learned:
                new.append(model_row(name, card.id, TASK_MODEL, "score_unseen_kind", d.score, label=int(job.trojaned), **common))
            if job.trojaned and job.trojan.poison.target is not None and d.target_label is not None:
                new.append(model_row(name, card.id, TASK_MODEL, "target_hit", float(d.target_label == job.trojan.poison.target),
                                     **common))
            if job.trojaned and d.mask is not None:
                truth = make_trigger(job.trojan.trigger, image_shape).mask()
                if truth is not None:
                    new.append(model_row(name, card.id, TASK_MODEL, "trigger_iou", _iou(d.mask.detach().cpu(), truth),
                                         **common))
            emit(new)
            if progress:
                progress()
        if det.learned:  # leave one trigger kind out: refit without it, score the clean models and that kind
            for kind in kinds:
                if not any(j.trojaned and j.trojan.trigger.kind != kind for j, _ in train):
                    continue  # no other kind to learn from
                held = _fit(name, train, ctx, leave_out=kind)
                for job, folder, card in test:
                    if job.trojaned and job.trojan.trigger.kind != kind:
                        continue
                    model, _ = load_model(folder, ctx.device)
                    d = held.detect(model, ctx)
                    emit([model_row(name, f"{card.id}@without-{kind}", TASK_MODEL, "score_unseen_kind", d.score,
                                    label=int(job.trojaned), role=role, groups=[f"kind={kind}"] + groups_of(job)[1:],
                                    version=det.version, seed=ctx.seed, job=job.id)])
    return rows


def score_sample_detectors(zoo: Zoo, names: list[str], ds, ctx: DetectContext, store: RunWriter | None,
                           progress=None, split: str | None = None) -> list:
    """Per-model rows of every sample-level detector on the trojaned models of `split` (None: every split)."""
    store = store if store is not None else RunWriter(None)  # None: rows are only returned
    rows = []
    for job, folder, card in [(j, f, c) for j, f, c in zoo.models(split=split) if j.trojaned]:
        p = prepare(ds, job.arch, job.arch_kwargs, job.trojan, seed=card.seed)  # the model's exact training set
        recorded = load_poisoned_indices(folder, card)
        if not torch.equal(p.poisoned_indices, recorded):
            raise UserError(f"{folder}: rebuilt poisoning differs from the recorded indices; was the data changed?")
        flags = np.zeros(len(p.x), dtype=bool)
        flags[recorded.numpy()] = True
        model, _ = load_model(folder, ctx.device)
        for name in names:
            det = SAMPLE_DETECTORS.get(name)()
            start = time.perf_counter()
            s = det.suspicion(model, p.x, p.y, ctx).detach().cpu().numpy()
            seconds = time.perf_counter() - start
            common = dict(role=role_of(type(det)), groups=groups_of(job), version=det.version, seed=ctx.seed, job=job.id)
            new = [model_row(name, card.id, TASK_SAMPLE, "auroc", auroc(flags, s), **common),
                   model_row(name, card.id, TASK_SAMPLE, "tpr@5fpr", tpr_at_fpr(flags, s, 0.05), **common),
                   model_row(name, card.id, TASK_SAMPLE, "seconds", seconds, **common)]
            rows.extend(new)
            store.write(new)
            if progress:
                progress()
        del p, model  # per-model data is built and dropped per model: memory does not grow with the zoo
    return rows


def run_detect_track(zoo_dir: str | Path, results, tools: list[str] | None = None, seed: int = 0,
                     device: str = "cpu", n_boot: int = 2000, progress=None,
                     figures: str | Path | None = None, sample_split: str | None = "test") -> list[Board]:
    """Score detectors on a zoo, write per-model rows into `results` (a RunTarget, a store path — then the track is
    a run of its own — or None); with `figures`, also draw the ROC curves and register them for the report.
    Returns the model-level and sample-level boards (those that ran)."""
    zoo = Zoo(zoo_dir)
    zoo.plan()  # a clear error if this is not a zoo
    model_names = [n for n in DETECTORS.names() if tools is None or n in tools]
    sample_names = [n for n in SAMPLE_DETECTORS.names() if tools is None or n in tools]
    unknown = set(tools or []) - set(model_names) - set(sample_names)
    if unknown:
        known = sorted(set(DETECTORS.names()) | set(SAMPLE_DETECTORS.names()))
        raise UserError(f"unknown detector {sorted(unknown)[0]!r}; known: {', '.join(known)}")
    ds, ctx = detection_context(zoo, seed=seed, device=device)
    config = {"track": "detect", "zoo": zoo.config().model_dump(), "tools": tools, "sample_split": sample_split}
    boards = []
    with recording(results, "track:detect", config, seed) as store:
        if model_names:
            spec = model_board_spec(population(zoo, "test", zoo.models(split="test")))
            store.write([spec_row(spec), *tool_info_rows(spec.task, "detect", DETECTORS, model_names)])
            rows = score_model_detectors(zoo, model_names, ctx, ds.image_shape, store, progress)
            boards.append(compute_board(rows, spec, n_boot, seed))
            if figures is not None and store.stored:
                _roc_figure(rows, boards[-1], zoo, figures, store, seed)
        if sample_names:
            trojaned = [m for m in zoo.models(split=sample_split) if m[0].trojaned]
            spec = sample_board_spec(population(zoo, sample_split, trojaned))
            store.write([spec_row(spec), *tool_info_rows(spec.task, "detect-samples", SAMPLE_DETECTORS, sample_names)])
            rows = score_sample_detectors(zoo, sample_names, ds, ctx, store, progress, sample_split)
            boards.append(compute_board(rows, spec, n_boot, seed))
    return boards


def _roc_figure(rows, board: Board, zoo: Zoo, figures, store: RunWriter, seed: int) -> None:
    from ..report.html import figure_row
    from ..report.plots import roc_plot

    curves = {}
    for s in board.scores:
        pts = [(r.extra["label"], r.value) for r in rows if r.tool == s.tool and r.metric == "score" and r.value is not None]
        if pts:
            curves[s.tool] = (np.array([p[0] for p in pts]), np.array([p[1] for p in pts]))
    name = zoo.config().name
    path = roc_plot(curves, Path(figures) / f"roc-{name}.png", f"model detection, {name} (held-out)",
                    {s.tool for s in board.scores if s.is_baseline})
    store.write(figure_row("detect", TASK_MODEL, path, "ROC curves of every model-level detector on the held-out "
                           "split (AUROC in the legend; baselines dashed)", seed))
