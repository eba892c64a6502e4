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
each detector's per-sample suspicion against the recorded poisoned indices.

The track runs as jobs (`tasks.jobs`): one per (detector, model), and one per fit of a learned detector (the fit
needs the training split's models at once; the test models it scores are then loaded one at a time). A job
loads its model and, at sample level, rebuilds that model's poisoned training set from its card, and drops
both when it returns, so memory does not grow with the zoo. Each job's rows are committed as it finishes; a rerun
of an interrupted track skips the finished jobs, and the boards are computed from the stored rows.
"""

from __future__ import annotations

import time
from dataclasses import replace
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
from ..zoo.worker import cached_dataset
from . import applicable, groups_of, population, role_of, zoo_modality
from .jobs import TrackJob, run_jobs, stored_rows

TASK_MODEL, TASK_SAMPLE = "detect-model", "detect-samples"


def _iou(mask: torch.Tensor, truth: torch.Tensor) -> float:
    pred = mask >= 0.5 * mask.max()
    truth = truth > 0.5
    union = (pred | truth).sum()
    return float((pred & truth).sum() / union) if union else 0.0


def detection_context(zoo: Zoo, n_clean: int = 200, seed: int = 0, device: str = "cpu"):
    ds = cached_dataset(zoo.config().data.model_dump_json())  # the one copy a process's jobs share
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


def model_detector_jobs(zoo: Zoo, names: list[str], ctx: DetectContext, image_shape, split: str = "test") -> list[TrackJob]:
    """The jobs of the model-level detectors on the zoo's `split`: one per (detector, model) for a detector that
    learns nothing; for a learned one, one per fit (on the training split, and without each trigger kind in turn),
    each fit scoring the models it is for (`fit_and_detect`)."""
    test = zoo.models(split=split)
    if not test or len({j.trojaned for j, _, _ in test}) < 2:
        raise UserError(f"zoo {zoo.root} has no {split} split with both clean and trojaned models")
    test = [(j, f) for j, f, _ in test]
    train = None  # listed once, and only if a learned detector needs it
    kinds = sorted({j.trojan.trigger.kind for j, _ in test if j.trojaned})
    jobs = []
    for name in names:
        common = dict(name=name, ctx=ctx, image_shape=image_shape)
        if not DETECTORS.get(name)().learned:
            jobs += [TrackJob(f"{TASK_MODEL}/{name}/{j.id}", detect_one, dict(job=j, folder=f, **common)) for j, f in test]
            continue
        train = train if train is not None else [(j, f) for j, f, _ in zoo.models(split="train")]
        if len({j.trojaned for j, _ in train}) < 2:
            raise UserError(f"{name} learns from the zoo's training split, and {zoo.root}'s has no "
                            f"{'clean' if train and train[0][0].trojaned else 'trojaned'} model to learn from; build a "
                            "larger zoo or leave the learned detectors out (--tools)")
        # leave one trigger kind out: refit without it, score the clean models and that kind (if another is left)
        folds = [None] + [k for k in kinds if any(j.trojaned and j.trojan.trigger.kind != k for j, _ in train)]
        jobs += [TrackJob(f"{TASK_MODEL}/{name}/fit" + (f"-without-{k}" if k else ""), fit_and_detect,
                          dict(train=train, test=test, leave_out=k, **common)) for k in folds]
    return jobs


def _detection_rows(det, name: str, job, folder, ctx: DetectContext, image_shape) -> list:
    """One detector's rows on one model (loaded here, dropped on return)."""
    model, card = load_model(folder, ctx.device)
    start = time.perf_counter()
    d = det.detect(model, ctx)
    seconds = time.perf_counter() - start
    common = dict(role=role_of(type(det)), groups=groups_of(job), version=det.version, seed=ctx.seed, job=job.id)
    rows = [model_row(name, card.id, TASK_MODEL, "score", d.score, label=int(job.trojaned),
                      target_label=d.target_label, **common),
            model_row(name, card.id, TASK_MODEL, "seconds", seconds, **common)]
    if not det.learned:
        rows.append(model_row(name, card.id, TASK_MODEL, "score_unseen_kind", d.score, label=int(job.trojaned), **common))
    if job.targeted and d.target_label is not None:
        rows.append(model_row(name, card.id, TASK_MODEL, "target_hit", float(d.target_label == job.trojan.poison.target),
                              **common))
    if job.trojaned and d.mask is not None:
        truth = make_trigger(job.trojan.trigger, image_shape).mask()
        if truth is not None:
            rows.append(model_row(name, card.id, TASK_MODEL, "trigger_iou", _iou(d.mask.detach().cpu(), truth), **common))
    return rows


def detect_one(name: str, job, folder, ctx: DetectContext, image_shape, device: str) -> list:
    """Job: a detector that learns nothing, on one model."""
    ctx = replace(ctx, device=torch.device(device))
    return _detection_rows(DETECTORS.get(name)(), name, job, folder, ctx, image_shape)


def fit_and_detect(name: str, train, test, ctx: DetectContext, image_shape, leave_out: str | None, device: str) -> list:
    """Job: a learned detector fitted on the training split's models, then run on each test model in turn. With
    `leave_out`, fitted without that trigger kind's trojans and scored (`score_unseen_kind`) on the clean test
    models and that kind's trojans only."""
    ctx = replace(ctx, device=torch.device(device))
    det = DETECTORS.get(name)()
    keep = [(j, f) for j, f in train if not (j.trojaned and j.trojan.trigger.kind == leave_out)]
    det.fit([load_model(f, ctx.device)[0] for _, f in keep], [int(j.trojaned) for j, _ in keep], ctx)
    if leave_out is None:
        return [r for j, f in test for r in _detection_rows(det, name, j, f, ctx, image_shape)]
    rows = []
    for job, folder in test:
        if job.trojaned and job.trojan.trigger.kind != leave_out:
            continue
        model, card = load_model(folder, ctx.device)
        d = det.detect(model, ctx)
        rows.append(model_row(name, f"{card.id}@without-{leave_out}", TASK_MODEL, "score_unseen_kind", d.score,
                              label=int(job.trojaned), role=role_of(type(det)),
                              groups=[f"kind={leave_out}"] + groups_of(job)[1:], version=det.version, seed=ctx.seed,
                              job=job.id))
    return rows


def score_model_detectors(zoo: Zoo, names: list[str], ctx: DetectContext, image_shape, store: RunWriter | None,
                          progress=None, split: str = "test", executor: str = "serial", jobs: int = 1,
                          address: str | None = None) -> list:
    """Per-model rows of every model-level detector on the zoo's `split`, its jobs run on `executor` (a zoo
    executor; `jobs` workers) and each job's rows written to `store` as it finishes (jobs the run finished before
    are skipped, their rows read back)."""
    store = store if store is not None else RunWriter(None)  # None: rows are only returned
    new = run_jobs(model_detector_jobs(zoo, names, ctx, image_shape, split), store, executor, jobs, str(ctx.device),
                   address, progress)
    return stored_rows(store, new, TASK_MODEL, names)


def sample_detector_jobs(zoo: Zoo, names: list[str], ctx: DetectContext, split: str | None = None) -> list[TrackJob]:
    """One job per (sample-level detector, trojaned model of `split`; None: every split)."""
    data = zoo.config().data
    return [TrackJob(f"{TASK_SAMPLE}/{name}/{j.id}", suspect_one, dict(name=name, job=j, folder=f, data=data, ctx=ctx))
            for j, f, _ in zoo.models(split=split) if j.trojaned for name in names]


def suspect_one(name: str, job, folder, data, ctx: DetectContext, device: str) -> list:
    """Job: a sample-level detector on one trojaned model's exact training set, rebuilt from its card here and
    dropped on return (the dataset itself is loaded once per process)."""
    ctx = replace(ctx, device=torch.device(device))
    model, card = load_model(folder, ctx.device)
    p = prepare(cached_dataset(data.model_dump_json()), job.arch, job.arch_kwargs, job.trojan, seed=card.seed)
    recorded = load_poisoned_indices(folder, card)
    if not torch.equal(p.poisoned_indices, recorded):
        raise UserError(f"{folder}: rebuilt poisoning differs from the recorded indices; was the data changed?")
    flags = np.zeros(len(p.x), dtype=bool)
    flags[recorded.numpy()] = True
    det = SAMPLE_DETECTORS.get(name)()
    start = time.perf_counter()
    s = det.suspicion(model, p.x, p.y, ctx).detach().cpu().numpy()
    seconds = time.perf_counter() - start
    common = dict(role=role_of(type(det)), groups=groups_of(job), version=det.version, seed=ctx.seed, job=job.id)
    return [model_row(name, card.id, TASK_SAMPLE, "auroc", auroc(flags, s), **common),
            model_row(name, card.id, TASK_SAMPLE, "tpr@5fpr", tpr_at_fpr(flags, s, 0.05), **common),
            model_row(name, card.id, TASK_SAMPLE, "seconds", seconds, **common)]


def score_sample_detectors(zoo: Zoo, names: list[str], ctx: DetectContext, store: RunWriter | None, progress=None,
                           split: str | None = None, executor: str = "serial", jobs: int = 1,
                           address: str | None = None) -> list:
    """Per-model rows of every sample-level detector on the trojaned models of `split` (None: every split), run
    and stored as jobs like `score_model_detectors`."""
    store = store if store is not None else RunWriter(None)  # None: rows are only returned
    new = run_jobs(sample_detector_jobs(zoo, names, ctx, split), store, executor, jobs, str(ctx.device), address,
                   progress)
    return stored_rows(store, new, TASK_SAMPLE, names)


def run_detect_track(zoo_dir: str | Path, results, tools: list[str] | None = None, seed: int = 0,
                     device: str = "cpu", n_boot: int = 2000, progress=None,
                     figures: str | Path | None = None, sample_split: str | None = "test", executor: str = "serial",
                     jobs: int = 1, address: str | None = None) -> list[Board]:
    """Score detectors on a zoo, write per-model rows into `results` (a RunTarget, a store path — then the track is
    a run of its own, or the continuation of an interrupted one with the same config — or None); with `figures`,
    also draw the ROC curves and register them for the report. The work runs as jobs on `executor` (see
    `tasks.jobs`); jobs the run finished before are skipped. Returns the model-level and sample-level boards (those
    that ran), computed from the stored rows."""
    zoo = Zoo(zoo_dir)
    zoo.plan()  # a clear error if this is not a zoo
    unknown = set(tools or []) - set(DETECTORS.names()) - set(SAMPLE_DETECTORS.names())
    if unknown:
        known = sorted(set(DETECTORS.names()) | set(SAMPLE_DETECTORS.names()))
        raise UserError(f"unknown detector {sorted(unknown)[0]!r}; known: {', '.join(known)}")
    modality = zoo_modality(zoo)  # the detectors that work on this zoo's inputs
    model_names, sample_names = (applicable(r, tools, modality) for r in (DETECTORS, SAMPLE_DETECTORS))
    ds, ctx = detection_context(zoo, seed=seed, device=device)
    config = {"track": "detect", "zoo": zoo.config().model_dump(), "tools": tools, "sample_split": sample_split,
              "device": device}
    run_on = dict(executor=executor, jobs=jobs, address=address)
    boards = []
    with recording(results, "track:detect", config, seed, resume=True) as store:
        if model_names:
            spec = model_board_spec(population(zoo, "test", zoo.models(split="test")))
            store.write([spec_row(spec), *tool_info_rows(spec.task, "detect", DETECTORS, model_names)])
            rows = score_model_detectors(zoo, model_names, ctx, ds.image_shape, store, progress, **run_on)
            boards.append(compute_board(rows, spec, n_boot, seed))
            if figures is not None and store.stored:
                _roc_figure(rows, boards[-1], zoo, figures, store, seed)
        if sample_names:
            trojaned = [m for m in zoo.models(split=sample_split) if m[0].trojaned]
            spec = sample_board_spec(population(zoo, sample_split, trojaned))
            store.write([spec_row(spec), *tool_info_rows(spec.task, "detect-samples", SAMPLE_DETECTORS, sample_names)])
            rows = score_sample_detectors(zoo, sample_names, ctx, store, progress, sample_split, **run_on)
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
