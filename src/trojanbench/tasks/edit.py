"""The locate-and-edit track: causal tracing names a layer and every registered editor changes one weight
matrix (ROME at the traced layer; the same edit at the last and at a random layer, as controls for tracing;
fine-tuning one layer on the same inputs, the baseline); scored by ASR drop and clean-accuracy cost. The track runs as jobs, one per trojaned model (`tasks.jobs`).

The auditor gets what the diagnosis track gives it: the trigger (to make triggered twins of clean images)
and a clean budget (5% of the training set, class-balanced, as in the repair track). Every editor gets the
same `EditInputs`, built once per model: the budget stamped with the trigger and its true labels, the budget
as the clean twins, and the budget. Scores are per trojaned model, aggregated with bootstrap 95% CIs, split
by trigger kind and crude vs insidious.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..implant import prepare
from ..results.boards import Board, BoardSpec, Column, compute_board, model_row, spec_row, tool_info_rows
from ..results.store import recording
from ..tools.edit import EDITORS, EditInputs
from ..tools.locate import causal_trace
from ..zoo.build import Zoo
from ..zoo.store import load_model
from . import applicable, groups_of, population, role_of, zoo_modality
from .jobs import TrackJob, run_jobs, stored_rows
from .repair import draw_budget, measure_repair

TASK = "edit"


def board_spec(pop: str, budget: float) -> BoardSpec:
    return BoardSpec(
        task=TASK, title=f"Locate and edit: ASR after one rank-one update (ROME) of the layer causal tracing names, beside "
                         f"the same edit at the last / a random layer and fine-tuning that layer on the same inputs "
                         f"({budget:.0%} clean budget)",
        key="asr", higher_is_better=False, population=pop,
        columns=[Column(name="asr", source="asr", header="ASR after"),
                 Column(name="asr_drop", source="asr_drop", header="ASR drop"),
                 Column(name="clean_acc", source="clean_acc", header="clean acc"),
                 Column(name="clean_cost", source="clean_cost", header="clean cost"),
                 Column(name="seconds_per_model", source="seconds", stat="timing", header="s/model", groups=False)],
        main=["asr", "asr_drop", "clean_cost", "asr[kind=patch]", "asr[insidious]", "seconds_per_model"])


UNK = 1  # a token dataset's id for a word outside the vocabulary


def triggered_twins(trigger, x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(x with the trigger, its clean twin aligned position by position). For images the twin is `x`; a text trigger
    inserts words and moves the rest of the sentence, so a sentence's twin is the triggered sentence with the
    trigger's words replaced by <unk>, as causal tracing of language models corrupts the subject's tokens."""
    xt, mask = trigger.apply_with_mask(x, generator=g)
    if xt.dim() != 2:
        return xt, x
    return xt, torch.where(mask, torch.full_like(xt, UNK), xt)


def _trace_setting(zoo_data, job, folder, seed: int, n_images: int, device: str):
    """What a job on one trojaned model rebuilds: the dataset (loaded once per process), the model, its trigger, the
    causal trace and its seconds, and the generator the trace drew from (the edit's inputs draw next)."""
    from ..zoo.worker import cached_dataset

    ds = cached_dataset(zoo_data.model_dump_json())
    dev = torch.device(device)
    model, card = load_model(folder, dev)
    target_label = job.trojan.poison.target
    trigger = prepare(ds, job.arch, job.arch_kwargs, job.trojan, seed=card.seed).trigger
    g = torch.Generator().manual_seed(seed)
    xt, xc = triggered_twins(trigger, ds.x_test[ds.y_test != target_label][:n_images], g)
    start = time.perf_counter()
    trace = causal_trace(model, xt.to(dev), xc.to(dev), target_label)
    return ds, model, card, trigger, trace, time.perf_counter() - start, g


def edit_one(names: list[str], job, folder, zoo_data, budget_idx: torch.Tensor, budget: float, n_images: int, seed: int,
             device: str) -> list:
    """Job: trace one trojaned model, then every editor in `names` at the traced layer; their rows (ASR, clean
    accuracy, ASR drop, clean cost, seconds). One job per model: the editors share its trace."""
    ds, model, card, trigger, trace, trace_s, g = _trace_setting(zoo_data, job, folder, seed, n_images, device)
    layer = trace.best
    before = measure_repair(model, ds, job, trigger)
    x_budget, y_budget = ds.x_train[budget_idx], ds.y_train[budget_idx]
    x_triggered, x_twins = triggered_twins(trigger, x_budget, g)
    inputs = EditInputs(layer=layer, x_triggered=x_triggered, y_triggered=y_budget, x_clean=x_twins, x_budget=x_budget,
                        y_budget=y_budget, seed=seed).to(torch.device(device))
    rows = []
    for name in names:  # the same inputs for all
        editor = EDITORS.get(name)()
        start = time.perf_counter()
        edited = editor.edit(model, inputs)
        seconds = time.perf_counter() - start + (trace_s if editor.uses_trace else 0.0)
        after = measure_repair(edited, ds, job, trigger)
        values = {"asr": after["asr"], "clean_acc": after["clean_acc"], "asr_drop": before["asr"] - after["asr"],
                  "clean_cost": before["clean_acc"] - after["clean_acc"], "seconds": seconds}
        rows += [model_row(name, card.id, TASK, m, v, role=role_of(type(editor)), groups=groups_of(job),
                           version=editor.version, seed=seed, job=job.id, layer=editor.layer_for(model, inputs),
                           traced_layer=layer, peak=trace.peak, budget=budget) for m, v in values.items()]
    return rows


def run_edit_track(zoo_dir: str | Path, results, tools: list[str] | None = None, seed: int = 0,
                   budget: float = 0.05, n_images: int = 32, split: str | None = None, max_models: int | None = None,
                   n_boot: int = 2000, progress=None, figures: str | Path | None = None, device: str = "cpu",
                   executor: str = "serial", jobs: int = 1, address: str | None = None) -> Board:
    """Trace and edit every all-to-one trojan of a zoo (`split`, first `max_models`) with every editor (or `tools`);
    write per-model rows into `results` (a RunTarget, a store path, or None). `device`: where the models, the trace
    and the editors' inputs live (the scores are measured by `measure_repair`, which moves its own batches).

    The work runs as jobs (`tasks.jobs`) on `executor`, one per trojaned model (the editors share its trace); a
    rerun of an interrupted run skips finished jobs, and the board is computed from the stored rows."""
    for n in tools or []:
        EDITORS.get(n)
    zoo = Zoo(zoo_dir)
    zoo.plan()
    names = applicable(EDITORS, tools, zoo_modality(zoo))
    from ..zoo.worker import cached_dataset

    data = zoo.config().data
    ds = cached_dataset(data.model_dump_json())
    models = zoo.trojaned(split, max_models)
    idx = draw_budget(ds.y_train, budget, ds.num_classes, seed)
    spec = board_spec(population(zoo, split, models, "models (all-to-one trojans)"), budget)
    config = {"track": "edit", "zoo": zoo.config().model_dump(), "tools": names, "budget": budget, "n_images": n_images,
              "split": split, "max_models": max_models}
    work = [TrackJob(f"{TASK}/{job.id}", edit_one, dict(names=names, job=job, folder=folder, zoo_data=data,
                                                      budget_idx=idx, budget=budget, n_images=n_images, seed=seed))
            for job, folder, _ in models]
    with recording(results, "track:edit", config, seed, resume=True) as store:
        store.write([spec_row(spec), *tool_info_rows(spec.task, "edit", EDITORS, names)])
        new = run_jobs(work, store, executor, jobs, device, address, progress)
        rows = stored_rows(store, new, TASK, names)
        if store.stored and figures is not None:
            from ..report.html import figure_row

            job, folder, _ = next((m for m in models if m[0].trojan.trigger.kind == "patch"), models[0])
            trace = _trace_setting(data, job, folder, seed, n_images, device)[4]  # the figure's one trace, again
            path = trace_figure([(job, trace)], Path(figures) / "edit-causal-trace.png")
            if path is not None:
                store.write(figure_row("edit", TASK, path, "causal tracing of one patch trojan: for each layer, how much "
                                       "of the pull toward the target restoring a 2x2 window of clean activations removes",
                                       seed))
    return compute_board(rows, spec, n_boot, seed)


def trace_figure(traces, path: Path) -> Path | None:
    """Layer x position maps of the first patch trojan's trace (spatial layers only); `traces`: [(job, trace)]."""
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
