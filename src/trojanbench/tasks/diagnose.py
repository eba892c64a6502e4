"""The diagnosis track, attribution part: on triggered inputs, does an attribution map point at the trigger?

For every trojaned model of a zoo (both splits by default: nothing is fitted, so there is nothing to hold
out), `n_images` clean test images that the attack applies to (label != target; for natural-feature trojans
also not already carrying the feature) are triggered and every attributor explains the trojan's target label
on them. Each map is scored against the ground-truth footprint of the trigger:

- footprint: the trigger's own mask where it has one (patch); otherwise the per-pixel change |x' - x| summed
  over channels (blended, warp, style, natural). Its binary version is "changed by more than 1e-3".
- correlation: Pearson correlation of map and footprint over the pixels of one image (the measure of Casper et
  al.'s benchmark of attribution tools on trojans); 0 for a constant map.
- pointing game: the map's maximum falls within the binary footprint dilated by 1 pixel (3x3). Ties count
  fractionally (the share of maximal pixels inside), so a constant map scores the footprint's area.
- mask AUROC: pixels ranked by attribution against the binary footprint.
- pointing game, strict: the same without the 1-pixel tolerance (the maximum inside the footprint itself). An
  edge detector's maximum often sits on the ring just outside a patch, which the tolerance forgives.
  Pointing game and mask AUROC are n/a for an image whose binary footprint covers more than half of it
  (blended and style triggers change nearly every pixel, warps most of them).
- sanity check (Adebayo et al. 2018, full cascading randomization): the maps of the first `n_sanity` images
  again, on a copy of the model with every layer re-initialised; similarity = Spearman rank correlation
  between the original and the randomized map. A method passes on a model if its mean similarity there is
  below 0.5 (`SANITY_THRESHOLD`); the board gives the share of models passed (Wilson interval). Maps that ignore
  the model (the baselines) score 1.0 and fail.

Per model, each metric is the mean over its images; the board (results.boards) gives the mean over models with a
95% bootstrap CI over models (images of one model are not independent), overall and per trigger kind and crude /
insidious, and each method's verdict against the strongest baseline, paired over the same models.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from ..errors import UserError
from ..implant import prepare
from ..results import ResultRow
from ..results.boards import Board, BoardSpec, Column, compute_board, model_row, spec_row, tool_info_rows
from ..results.store import recording
from ..tools.attribute import ATTRIBUTORS, randomized_copy, reference_sample
from ..train import predict
from ..train.evaluate import clean_test_mask
from ..trojans.poison import attack_mask, relabel
from ..zoo.build import Zoo
from ..zoo.store import load_model
from . import applicable, groups_of, population, role_of, zoo_modality
from .jobs import TrackJob, run_jobs, stored_rows

TASK = "diagnose-attribution"
SANITY_THRESHOLD = 0.5
MAX_FOOTPRINT = 0.5  # pointing game / mask AUROC only where the footprint covers at most half the image
METRICS = ("correlation", "pointing_game", "pointing_game_strict", "mask_auroc")

__all__ = [
    "SANITY_THRESHOLD",
    "TASK",
    "footprints",
    "rank_similarity",
    "run_diagnose_track",
    "score_maps",
]


# ---- metrics on maps [N, H, W] ----------------------------------------------------------------------------

def footprints(x: torch.Tensor, x_trig: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(soft footprint [N,H,W] for correlation, binary footprint [N,H,W])."""
    soft = mask.float() if mask is not None else (x_trig - x).abs().sum(1)
    return soft, soft > 1e-3


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    na, nb = np.sqrt((a * a).sum(1)), np.sqrt((b * b).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(1) / (na * nb)
    r = np.where(na == 0, 0.0, r)  # a constant map says nothing: no correlation
    return np.where(nb == 0, np.nan, r)  # a constant footprint: undefined


def score_maps(maps: torch.Tensor, soft: torch.Tensor, binary: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-image correlation, pointing-game hit (1-px tolerance, and strict) and mask AUROC (NaN where n/a)."""
    m = maps.detach().float().flatten(1).numpy().astype(np.float64)
    s = soft.float().flatten(1).numpy().astype(np.float64)
    b = binary.bool()
    n_pix = m.shape[1]
    area = b.flatten(1).float().mean(1).numpy()
    eligible = (area > 0) & (area <= MAX_FOOTPRINT)
    dilated = F.max_pool2d(b.float().unsqueeze(1), 3, stride=1, padding=1).flatten(1).numpy() > 0
    top = m == m.max(1, keepdims=True)
    hit = (top & dilated).sum(1) / top.sum(1)
    strict = (top & b.flatten(1).numpy()).sum(1) / top.sum(1)
    lab = b.flatten(1).numpy()
    ranks = rankdata(m, axis=1)  # average ranks: ties count half
    n_pos = lab.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * lab).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * (n_pix - n_pos))
    return {"correlation": _pearson_rows(m, s), "pointing_game": np.where(eligible, hit, np.nan),
            "pointing_game_strict": np.where(eligible, strict, np.nan),
            "mask_auroc": np.where(eligible, auc, np.nan)}


def rank_similarity(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Spearman rank correlation per image between two stacks of maps; 1.0 if both are constant (nothing
    changed), 0.0 if only one is."""
    ra = rankdata(a.detach().flatten(1).numpy(), axis=1)
    rb = rankdata(b.detach().flatten(1).numpy(), axis=1)
    r = _pearson_rows(ra, rb)
    const_a = np.ptp(ra, axis=1) == 0
    const_b = np.ptp(rb, axis=1) == 0
    r = np.where(const_a & const_b, 1.0, r)
    return np.where(const_a ^ const_b, 0.0, r)


def score_token_maps(maps: torch.Tensor, binary: torch.Tensor, ids: torch.Tensor) -> dict[str, np.ndarray]:
    """Token relevance [N, T] of triggered sentences `ids` [N, T] against the trigger's positions `binary` [N, T],
    over each sentence's words (padding left out): top-1 hit (the most relevant word is a trigger word; ties count
    fractionally), hit@k (the share of trigger words among the k most relevant, k the trigger's length; ties at the
    k-th place count fractionally) and token AUROC (words ranked by relevance against trigger membership)."""
    m = maps.detach().double().numpy()
    b = binary.bool().numpy()
    real = (ids != 0).numpy()
    top1, hit_k, auc = [], [], []
    for row, truth, keep in zip(m, b, real):
        r, t = row[keep], truth[keep]
        k, n = int(t.sum()), len(r)
        if k == 0 or k == n:
            top1.append(np.nan), hit_k.append(np.nan), auc.append(np.nan)
            continue
        top = r == r.max()
        top1.append((top & t).sum() / top.sum())
        kth = np.sort(r)[::-1][k - 1]
        above, tied = r > kth, r == kth
        hit_k.append(((above & t).sum() + (tied & t).sum() * (k - above.sum()) / tied.sum()) / k)
        ranks = rankdata(r)
        auc.append(((ranks * t).sum() - k * (k + 1) / 2) / (k * (n - k)))
    return {"top1": np.array(top1), "hit_at_k": np.array(hit_k), "token_auroc": np.array(auc)}


# ---- the track ----------------------------------------------------------------------------------------------

def _nanmean(v: np.ndarray) -> float:
    v = np.asarray(v, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else float("nan")


def _check_known(tools: list[str] | None) -> None:
    unknown = [t for t in tools or [] if t not in ATTRIBUTORS]
    if unknown:
        raise UserError(f"unknown attributor {unknown[0]!r}; known: {', '.join(ATTRIBUTORS.names())}")


def text_board_spec(pop: str) -> BoardSpec:
    return BoardSpec(
        task=TASK, title="Do token attributions point at the trigger words? (ranked by hit@k)", key="hit_at_k",
        population=pop,
        columns=[Column(name=m, source=m, header=h) for m, h in (
                     ("hit_at_k", "hit@k"), ("top1", "top-1 hit"), ("token_auroc", "token AUROC"),
                     ("sanity_similarity", "sanity sim"))]
                + [Column(name="sanity_pass", source="sanity_pass", stat="proportion", header="sanity pass", groups=False),
                   Column(name="seconds_per_model", source="seconds", stat="timing", header="s/model", groups=False)],
        main=["hit_at_k", "top1", "token_auroc", "hit_at_k[kind=rare-token]", "hit_at_k[kind=insidious-phrase]",
              "sanity_pass", "seconds_per_model"],
        note="hit@k: the share of the trigger's k words among the k words an attribution ranks first, per sentence "
             f"(triggered at a random position); sanity pass as for images (rank similarity < {SANITY_THRESHOLD})")


def board_spec(pop: str) -> BoardSpec:
    return BoardSpec(
        task=TASK, title="Do attribution maps point at the trigger? (ranked by correlation with the trigger's footprint)",
        # ranked over every held-out trojan (the footprint of a global trigger is the pixels it changes): ranked by
        # the patch cell alone, digits-bench's held-out split left n = 1 and no verdict at all
        key="correlation", population=pop,
        columns=[Column(name=m, source=m, header=h) for m, h in (
                     ("correlation", "corr"), ("pointing_game", "pointing game"), ("pointing_game_strict", "PG strict"),
                     ("mask_auroc", "mask AUROC"), ("sanity_similarity", "sanity sim"))]
                + [Column(name="sanity_pass", source="sanity_pass", stat="proportion", header="sanity pass", groups=False),
                   Column(name="seconds_per_model", source="seconds", stat="timing", header="s/model", groups=False)],
        main=["correlation", "correlation[kind=patch]", "pointing_game[kind=patch]", "pointing_game_strict[kind=patch]",
              "mask_auroc[kind=patch]", "sanity_similarity", "sanity_pass", "seconds_per_model"],
        note=f"sanity pass: the share of models whose maps change under full cascading randomization (rank similarity "
             f"< {SANITY_THRESHOLD})")


def _attributors(ds, names: list[str], seed: int) -> dict:
    reference = reference_sample(ds.x_train, seed=seed)  # every attributor gets the same clean sample
    return {n: ATTRIBUTORS.get(n)(seed=seed).fit_reference(reference) for n in names}


def _inputs(ds, job, folder, seed: int, n_images: int, device: str):
    """One trojaned model, its card and what every attributor explains on it: `n_images` clean test images the
    attack applies to (x), triggered (x_trig), with their target labels and the trigger's footprints."""
    model, card = load_model(folder, torch.device(device))
    model.eval()
    p = prepare(ds, job.arch, job.arch_kwargs, job.trojan, seed=card.seed)
    trigger, poison = p.trigger, job.trojan.poison
    keep = attack_mask(ds.y_test, poison) & clean_test_mask(trigger, ds.x_test)
    idx = torch.nonzero(keep).flatten()
    idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))[:n_images]]
    x, y = ds.x_test[idx], ds.y_test[idx]
    x_trig, mask = trigger.apply_with_mask(x, generator=torch.Generator().manual_seed(seed))
    answers = getattr(ds, "answers_test", None)
    target = relabel(y, poison, ds.num_classes, None if answers is None else answers[idx])  # override: the answer
    return model, card, x, x_trig, target, footprints(x, x_trig, mask)


def diagnose_one(names: list[str], job, folder, zoo_data, seed: int, n_images: int, n_sanity: int,
                 device: str) -> list:
    """Job: every attributor in `names` on one trojaned model (they share its images, footprint and randomized
    copy); its rows."""
    from ..zoo.worker import cached_dataset

    ds = cached_dataset(zoo_data.model_dump_json())
    model, card, x, x_trig, target_y, (soft, binary) = _inputs(ds, job, folder, seed, n_images, device)
    asr = float((predict(model, x_trig) == target_y).float().mean())
    randomized = randomized_copy(model, seed=seed)
    rows = []
    for name, tool in _attributors(ds, names, seed).items():
        start = time.perf_counter()
        maps = tool.attribute(model, x_trig, target_y)
        seconds = time.perf_counter() - start
        maps = maps.detach().cpu()  # scored with numpy, whatever device a tool left its maps on
        scores = score_token_maps(maps, binary, x_trig) if x_trig.dim() == 2 else score_maps(maps, soft, binary)
        k = min(n_sanity, len(x_trig))
        again = tool.attribute(randomized, x_trig[:k], target_y[:k]).detach().cpu() if k else None
        if not k:
            sim = np.array([])
        elif x_trig.dim() == 2:  # sentences: over their words (padding is 0 in every map and would tie)
            real = (x_trig[:k] != 0).cpu()
            sim = np.concatenate([rank_similarity(a[r][None], b[r][None]) for a, b, r in zip(maps[:k], again, real)])
        else:
            sim = rank_similarity(maps[:k], again)
        values = {m: _nanmean(v) for m, v in scores.items()} | {"sanity_similarity": _nanmean(sim)}
        values["sanity_pass"] = float(values["sanity_similarity"] < SANITY_THRESHOLD) \
            if not math.isnan(values["sanity_similarity"]) else float("nan")
        values["seconds"] = seconds
        rows += [model_row(name, card.id, TASK, metric, v, role=role_of(type(tool)), groups=groups_of(job),
                           version=tool.version, seed=seed, job=job.id, n_images=len(x), attack_success=asr)
                 for metric, v in values.items()]
    return rows


def run_diagnose_track(zoo_dir: str | Path, results, tools: list[str] | None = None, seed: int = 0,
                       n_images: int = 32, n_boot: int = 2000, progress=None, images_dir: str | Path | None = None,
                       max_models: int | None = None, split: str | None = None, n_sanity: int = 8,
                       device: str = "cpu", executor: str = "serial", jobs: int = 1, address: str | None = None,
                       panel_rows: int = 3) -> Board:
    """Score attributors (all registered, or `tools`) on the trojaned models of a zoo (`split` None = both
    splits; `max_models` caps how many, in plan order); write per-model rows into `results` (a RunTarget, a store
    path — then the track is a run of its own — or None) and, with `images_dir`, one PNG panel per trigger kind
    (its first `panel_rows` models). Returns the board (columns: correlation, pointing_game, pointing_game_strict,
    mask_auroc, each also [kind=K] / [crude] / [insidious]; sanity_similarity, sanity_pass, seconds_per_model).

    The work runs as jobs (`tasks.jobs`) on `executor`, one per model (its attributors share its images); a rerun
    of an interrupted run skips finished jobs, and the board is computed from the stored rows. `progress()` is
    called once per model."""
    _check_known(tools)
    zoo = Zoo(zoo_dir)
    zoo.plan()  # a clear error if this is not a zoo
    modality = zoo_modality(zoo)
    names = applicable(ATTRIBUTORS, list(dict.fromkeys(tools)) if tools is not None else None, modality)
    models = [(j, f, c) for j, f, c in zoo.models(split=split) if j.trojaned]
    if max_models is not None:
        models = models[:max_models]
    if not models:
        raise UserError(f"zoo {zoo.root} has no finished trojaned models" + (f" in split {split!r}" if split else ""))
    from ..zoo.worker import cached_dataset

    data = zoo.config().data
    ds = cached_dataset(data.model_dump_json())
    spec = (text_board_spec if modality == "text" else board_spec)(population(zoo, split, models))
    config = {"track": "diagnose", "zoo": zoo.config().model_dump(), "tools": names, "n_images": n_images,
              "split": split, "max_models": max_models, "n_sanity": n_sanity}
    # on the first model: a method whose maps equal another's is reported once
    job, folder, _ = models[0]
    model, _, _, x_trig, target_y, _ = _inputs(ds, job, folder, seed, n_images, device)
    collapsed = collapsed_methods(_attributors(ds, names, seed), model, x_trig[:4], target_y[:4])
    kept = [n for n in names if n not in collapsed]
    work = [TrackJob(f"{TASK}/{j.id}", diagnose_one, dict(names=kept, job=j, folder=f, zoo_data=data, seed=seed,
                                                        n_images=n_images, n_sanity=n_sanity))
            for j, f, _ in models]
    with recording(results, "track:diagnose", config, seed, resume=True) as store:
        store.write([spec_row(spec), *tool_info_rows(spec.task, "attribute", ATTRIBUTORS, names)])
        store.write([ResultRow(name, "collapsed", TASK, "collapsed_onto", None, extra={"onto": same, "arch": job.arch})
                     for name, same in collapsed.items()])
        if collapsed:
            spec.note += "; reported once (identical maps on this architecture): " + ", ".join(
                f"{n} = {same}" for n, same in collapsed.items())
            store.write(spec_row(spec))
        new = run_jobs(work, store, executor, jobs, device, address, progress)
        rows = stored_rows(store, new, TASK, kept)
    if images_dir is not None and modality == "image":
        write_panels(_panels(ds, models, kept, seed, n_images, device, panel_rows), images_dir, kept)
    return compute_board(rows, spec, n_boot, seed)


def _panels(ds, models, names: list[str], seed: int, n_images: int, device: str, per_kind: int) -> dict[str, list[dict]]:
    """The panels' examples, drawn again: the first image of the first `per_kind` models of each trigger kind, its
    footprint and each method's map."""
    panels: dict[str, list[dict]] = defaultdict(list)
    tools = _attributors(ds, names, seed)
    for job, folder, _ in models:
        kind = job.trojan.trigger.kind
        if len(panels[kind]) >= per_kind:
            continue
        model, card, _, x_trig, target_y, (soft, _) = _inputs(ds, job, folder, seed, n_images, device)
        maps = {n: t.attribute(model, x_trig[:1], target_y[:1]).detach().cpu()[0] for n, t in tools.items()}
        panels[kind].append({"image": x_trig[0], "footprint": soft[0], "maps": maps, "model": card.id})
    return panels


def collapsed_methods(tools: dict, model, x: torch.Tensor, target: torch.Tensor) -> dict[str, str]:
    """{method: the earlier method whose maps it reproduces exactly on these inputs}. On architectures whose
    activations captum cannot override (functional calls, GELU), DeepLIFT falls back to input x gradient and
    guided backprop / deconvolution to the plain gradient: one method under three names, scored once."""
    maps, out = {}, {}
    for name, tool in tools.items():
        if not tool.uses_model:
            continue
        m = tool.attribute(model, x, target)
        same = next((other for other, mo in maps.items() if mo.shape == m.shape and torch.allclose(mo, m, rtol=1e-5, atol=1e-7)), None)
        if same is not None:
            out[name] = same
        else:
            maps[name] = m
    return out


def write_panels(panels: dict[str, list[dict]], images_dir: str | Path, names: list[str], rows: int = 3) -> list[Path]:
    """One PNG per trigger kind: a row per example (one per model, up to `rows`): triggered image | footprint |
    each method's map (scaled to its own maximum)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir = Path(images_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, examples in sorted(panels.items()):
        examples = examples[:rows]
        cols = 2 + len(names)
        fig = Figure(figsize=(1.1 * cols, 1.25 * len(examples)))
        FigureCanvasAgg(fig)  # the Agg backend, without touching pyplot's global state
        axes = fig.subplots(len(examples), cols, squeeze=False)
        for r, ex in enumerate(examples):
            img = ex["image"].permute(1, 2, 0).numpy()
            panels_ = [("triggered", img.squeeze(-1) if img.shape[-1] == 1 else img, "gray"),
                       ("footprint", ex["footprint"].numpy(), "magma")]
            panels_ += [(n, ex["maps"][n].numpy(), "magma") for n in names]
            for c, (title, im, cmap) in enumerate(panels_):
                ax = axes[r, c]
                vmax = float(np.max(im)) if title != "triggered" else 1.0
                ax.imshow(im, cmap=cmap, vmin=0, vmax=vmax if vmax > 0 else 1.0, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(title, fontsize=6)
        fig.suptitle(f"{kind} trigger: attribution for the target label", fontsize=8)
        fig.tight_layout()
        path = out_dir / f"diagnose-{kind}.png"
        fig.savefig(path, dpi=110)
        written.append(path)
    return written
