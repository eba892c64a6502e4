"""Study: rare-event vs gradual triggers: `trojanbench study continuum`.

A family of all-to-one trojans on digits, ordered from a trigger that waits for one specific event to behaviour
that shifts gradually with a statistic of the world, each built from the existing trigger kinds:

  patch-3        a crisp 3x3 checkerboard at the bottom-right corner (BadNets);
  patch-6-faint  a 6x6 checkerboard of low contrast (0.2 / 0.45 instead of 0 / 1) at the same corner;
  blend-0.3      a fixed noise image (one per model) blended over the whole image at alpha 0.3;
  blend-0.2      the same at alpha 0.2;
  style          a global emboss filter mixed in at strength 0.5 (the edit now depends on the image);
  ink-graded     no pixel is edited: a training image's label flips to the target with a probability that rises
                 linearly with the quantile of its ink (mean intensity, the `natural` trigger's statistic), from
                 0 at the `graded_from` quantile to 1 at the heaviest image. At test the `natural` trigger's
                 apply() (a thicker pen) pushes images up that statistic.

Along the family the edit made to a poisoned training image spreads, fades and loosens from a fixed pattern: its
footprint (share of pixels changed) grows from 3% to the whole image; its intensity (mean |change| on the changed
pixels) falls along the patches and blends; the share of the edit that is one fixed pattern for every image is
lowest (bar the last point) at the style filter, whose edit is a function of the image; and at the last point no
pixel changes at all (`edit_area`, `edit_intensity`, `edit_fixed` in the trojans table). A pasted patch replaces
what lies under it, so where strokes reach the corner its change depends on the image a little (the faint 6x6
patch's fixed share is lower than the blends').

The models are zoos built by the zoo builder (cards, resume, cached like the benchmark's zoos; a rerun measures the
same models without training them again): one zoo of `models` clean MLPs, and per point one zoo of `models`
trojaned MLPs (the point's trigger kind and parameters, its poisoning mode: all-to-one, `graded` for the last point,
`relabel` for the control; `trojans.poison`), trained batched with the same seeds, so trojaned model i and clean
model i start from the same weights. The clean zoo's models are every point's clean twins (the clean data does
not depend on the trigger). The gate is off: a point whose trojans are learned weakly is measured as it is. At
every point:
- model-level detection AUROC (trojaned at this point vs the clean twins): Neural Cleanse (its anomaly index),
  the cheap output/weight statistics (entropy, accuracy, weight-stats; fitted by 2-fold cross-fitting inside the
  point: fitted on half the models, scored on the other half), and random; 95% score interval (Newcombe's
  variance, `stats.auroc_estimate`);
- sample-level detection (which training samples were poisoned): spectral signatures, activation clustering,
  STRIP, k-NN pixel disagreement and random; per-model AUROC, mean over the trojaned models with an expanded
  bootstrap CI (`stats.bootstrap_mean`, as every mean here);
- attribution (saliency, integrated gradients, and the Sobel-edge baseline) on triggered test images, scored
  against the trigger's footprint as the diagnose track does (correlation; pointing game where the footprint
  covers at most half the image); per-model means, bootstrap CI over models.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig, ZooConfig
from ..data import ImageDataset, load_dataset
from ..errors import UserError
from ..implant import prepare
from ..report.html import View, figure_row, register_view
from ..results import ResultRow
from ..results.stats import Estimate, auroc, auroc_estimate, bootstrap_mean
from ..tasks.diagnose import footprints, score_maps
from ..tools.attribute import ATTRIBUTORS
from ..tools.detect import DETECTORS, SAMPLE_DETECTORS, DetectContext
from ..train import predict
from ..train.evaluate import clean_test_mask
from ..trojans import PoisonSpec, TriggerSpec, make_trigger, poison_dataset
from ..trojans.poison import PoisonedData, attack_mask
from ..trojans.triggers import NaturalFeatureTrigger, Trigger
from ..utils import one_thread
from ..zoo.build import Zoo, build_zoo, cache_folder
from ..zoo.store import load_model
from . import Progress, StudySummary, record_study, register_study

MODEL_ID = "zoo:continuum-digits"
TASK_TROJANS, TASK_MODEL, TASK_SAMPLES, TASK_ATTR = ("continuum-trojans", "continuum-detect-model",
                                                      "continuum-detect-samples", "continuum-attribution")
MODEL_DETECTORS = ("neural-cleanse", "entropy", "accuracy", "weight-stats", "random")
FITTED = {"entropy", "accuracy", "weight-stats"}
SAMPLE_TOOLS = ("spectral", "activation-clustering", "strip", "knn-pixels", "random")
ATTRIBUTION_TOOLS = ("saliency", "integrated-gradients", "sobel")


def _faint_checkerboard(size: int, low: float, high: float) -> list[list[float]]:
    return [[high if (i + j) % 2 == 0 else low for j in range(size)] for i in range(size)]


@dataclass(frozen=True)
class Point:
    """One position on the continuum: an existing trigger kind with its parameters, and its poisoning mode
    (`trojans.poison`): `graded` relabels along the natural trigger's statistic from its `quantile` up instead of
    editing pixels; `relabel` (the control) relabels a random `rate` share of the non-target images, whatever they
    look like (the trigger is only applied at test)."""

    name: str
    trigger: TriggerSpec
    mode: str = "all-to-one"

    @property
    def control(self) -> bool:
        return self.mode == "relabel"


POINTS: tuple[Point, ...] = (
    Point("patch-3", TriggerSpec(kind="patch", params={"size": 3, "pattern": "checkerboard"})),
    Point("patch-6-faint", TriggerSpec(kind="patch", params={"size": 6, "pattern": _faint_checkerboard(6, 0.2, 0.45)})),
    Point("blend-0.3", TriggerSpec(kind="blended", params={"alpha": 0.3, "pattern": "noise"})),
    Point("blend-0.2", TriggerSpec(kind="blended", params={"alpha": 0.2, "pattern": "noise"})),
    Point("style", TriggerSpec(kind="style", params={"filter": "emboss", "strength": 0.5})),
    Point("ink-graded", TriggerSpec(kind="natural", params={"feature": "ink", "quantile": 0.8}), mode="graded"),
)
# Every point moves about 10% of the labels to the target; this control does only that, so a tool that scores it
# like the points is measuring the label shift, not the trigger.
CONTROL = Point("relabel-only", TriggerSpec(kind="natural", params={"feature": "ink", "quantile": 0.8}), mode="relabel")


@dataclass(frozen=True)
class ContinuumConfig:
    models: int = 8  # trojaned models per point, and clean twins
    width: int = 128
    depth: int = 2
    epochs: int = 20
    lr: float = 0.02
    rate: float = 0.1  # poisoned share of the training set at the pixel-editing points
    target: int = 0
    n_clean: int = 200  # the auditor's clean sample (test images)
    nc_steps: int = 100
    n_attribution: int = 32
    batch_models: int = 16  # models trained at once (a zoo's chunk)
    n_boot: int = 1000


QUICK = ContinuumConfig(models=2, width=64, epochs=15, nc_steps=30, n_attribution=8, n_boot=200)

_POINT_COLUMNS = tuple(p.name for p in (*POINTS, CONTROL))
register_view(TASK_TROJANS, View("Trigger continuum (rare event -> gradual shift): attack success of the trojaned models "
                                 "and of their clean twins, clean accuracy, and how the poisoned images were edited",
                                 f"asr[{POINTS[0].name}]", True, tuple(f"asr[{p}]" for p in _POINT_COLUMNS)))
register_view(TASK_SAMPLES, View("Trigger continuum: poisoned-sample detection AUROC at each point",
                                 f"auroc[{POINTS[0].name}]", True, tuple(f"auroc[{p}]" for p in _POINT_COLUMNS)))
register_view(TASK_ATTR, View("Trigger continuum: attribution vs the trigger's footprint (correlation) at each point",
                              f"correlation[{POINTS[0].name}]", True,
                              tuple(f"correlation[{p}]" for p in _POINT_COLUMNS) +
                              tuple(f"pointing_game[{p}]" for p in _POINT_COLUMNS[:2])))
register_view(TASK_MODEL, View("Trigger continuum: model-level detection AUROC at each point (trojaned vs clean twins; "
                               "relabel-only is the control: labels moved, no trigger)", f"auroc[{POINTS[0].name}]", True,
                               tuple(f"auroc[{p}]" for p in _POINT_COLUMNS) +
                               tuple(f"target_accuracy[{p}]" for p in _POINT_COLUMNS)))


# --- the family -------------------------------------------------------------------------------------------------

def build_trigger(point: Point, ds: ImageDataset) -> Trigger:
    trigger = make_trigger(point.trigger, ds.image_shape)
    if isinstance(trigger, NaturalFeatureTrigger):
        trigger.fit(ds.x_train)  # its threshold: which test images already carry the feature (left out of the ASR)
    return trigger


def point_poison(point: Point, cfg: ContinuumConfig) -> PoisonSpec:
    return PoisonSpec(mode=point.mode, rate=cfg.rate, target=cfg.target)


def poison_point(point: Point, trigger: Trigger, ds: ImageDataset, cfg: ContinuumConfig, seed: int) -> PoisonedData:
    """The training set of a trojan at `point` (as the zoo builder poisons it for a model of this seed)."""
    return poison_dataset(ds.x_train, ds.y_train, trigger, point_poison(point, cfg), ds.num_classes, seed=seed)


def continuum_zoos(cfg: ContinuumConfig, seed: int, points: tuple[Point, ...]) -> dict[str, ZooConfig]:
    """{"clean": the clean MLPs' zoo, point name: that point's trojaned MLPs' zoo}; the same seeds in each, no
    split, the gate off."""
    base = dict(seed=seed, models_per_arch=cfg.models, test_fraction=0.0, data={"name": "digits"},
                archs=[{"arch": "mlp", "kwargs": {"width": cfg.width, "depth": cfg.depth}}],
                train=TrainConfig(epochs=cfg.epochs, lr=cfg.lr), gate={"min_asr": 0.0, "max_clean_drop": 1.0, "retries": 0})
    zoos = {"clean": ZooConfig(name="continuum-clean", clean_fraction=1.0, trojans={"kinds": ["patch"]}, **base)}
    for p in points:
        kind = p.trigger.kind
        zoos[p.name] = ZooConfig(name=f"continuum-{p.name}", clean_fraction=0.0, **base, trojans={
            "kinds": [kind], "variants": {kind: [p.trigger.params]}, "targets": [cfg.target], "rates": [cfg.rate],
            "mode": p.mode})
    return zoos


def build_zoos(cfg: ContinuumConfig, seed: int, points: tuple[Point, ...], progress: Progress) -> dict[str, list]:
    """Build (or resume, or reuse from the cache) the study's zoos; {zoo: [(job, model, card)] by seed}."""
    out = {}
    for name, zcfg in continuum_zoos(cfg, seed, points).items():
        root, start = cache_folder(zcfg), time.perf_counter()
        counts = build_zoo(zcfg, root, executor="batched", batch_models=cfg.batch_models)
        if counts.get("failed"):
            raise UserError(f"{counts['failed']} models of the {zcfg.name} zoo failed to train; see `trojanbench zoo "
                            f"status {root}`")
        out[name] = [(job, load_model(folder)[0], card)
                     for job, folder, card in sorted(Zoo(root).models(), key=lambda t: t[2].seed)]
        progress(f"zoo {zcfg.name}: {len(out[name])} models ({time.perf_counter() - start:.0f}s) in {root}")
    return out


def edit_profile(x: torch.Tensor, poisoned: PoisonedData) -> dict[str, float]:
    """How the poisoned training images were edited: `area`, the mean share of pixels changed by more than 1e-3;
    `intensity`, the mean |change| over those pixels; `fixed`, the share of the edit's energy that is the same for
    every image (||mean change||^2 / mean ||change||^2: 1 for a pattern stamped identically on each, lower when
    the edit depends on the image). All 0 where no pixel was edited."""
    idx = poisoned.indices
    delta = (poisoned.x[idx] - x[idx]).flatten(1)
    if len(idx) == 0 or not delta.abs().gt(1e-3).any():
        return {"area": 0.0, "intensity": 0.0, "fixed": 0.0}
    change = delta.abs()
    changed = change > 1e-3
    return {"area": float(changed.float().mean()), "intensity": float(change[changed].mean()),
            "fixed": float(delta.mean(0).square().sum() / delta.square().sum(1).mean())}


# --- measurements -----------------------------------------------------------------------------------------------

def attack_inputs(trigger: Trigger, ds: ImageDataset, target: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Test images the attack applies to (not of the target class, not already carrying a natural feature),
    their triggered copies and the footprint masks."""
    keep = attack_mask(ds.y_test, PoisonSpec(target=target)) & clean_test_mask(trigger, ds.x_test)
    x = ds.x_test[keep]
    x_trig, masks = trigger.apply_with_mask(x, generator=torch.Generator().manual_seed(0))
    return x, x_trig, masks


def attack_success(model, x_trig: torch.Tensor, target: int) -> float:
    return float((predict(model, x_trig) == target).float().mean())


def model_detection(trojaned: list, clean: list, ctx: DetectContext, cfg: ContinuumConfig, seed: int
                    ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[float]]:
    """Per detector: (labels, scores) over the trojaned models of one point and the clean twins. Fitted detectors
    are cross-fitted in two folds (fitted on one half of each group, scoring the other). Also: per trojaned
    model, whether Neural Cleanse names the target label."""
    models = trojaned + clean
    labels = np.array([1] * len(trojaned) + [0] * len(clean))
    out, target_hits = {}, []
    for name in MODEL_DETECTORS:
        cls = DETECTORS.get(name)
        scores = np.zeros(len(models))
        if name in FITTED:
            fold = np.array([i % 2 for i in range(len(trojaned))] + [i % 2 for i in range(len(clean))])
            for f in (0, 1):
                det = cls()
                fit = np.flatnonzero(fold != f)
                det.fit([models[i] for i in fit], labels[fit].tolist(), ctx)
                for i in np.flatnonzero(fold == f):
                    scores[i] = det.detect(models[i], ctx).score
        else:
            det = cls(steps=cfg.nc_steps) if name == "neural-cleanse" else cls()
            for i, m in enumerate(models):
                d = det.detect(m, ctx)
                scores[i] = d.score
                if name == "neural-cleanse" and i < len(trojaned):
                    target_hits.append(float(d.target_label == cfg.target))
        out[name] = (labels, scores)
    return out, target_hits


def sample_detection(model, poisoned: PoisonedData, ctx: DetectContext) -> dict[str, float]:
    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

    flags = np.zeros(len(poisoned.x), dtype=int)
    flags[poisoned.indices.numpy()] = 1
    # KMeans on a few hundred points per class: OpenMP threads only spin, 70x slower on a busy 2-core machine
    with threadpool_limits(1):
        return {name: auroc(flags, SAMPLE_DETECTORS.get(name)().suspicion(model, poisoned.x, poisoned.y, ctx).numpy())
                for name in SAMPLE_TOOLS}


def attribution(model, x: torch.Tensor, x_trig: torch.Tensor, masks, target: int, seed: int) -> dict[str, dict[str, float]]:
    soft, binary = footprints(x, x_trig, masks)
    out = {}
    for name in ATTRIBUTION_TOOLS:
        maps = ATTRIBUTORS.get(name)(seed=seed).attribute(model, x_trig, target)
        scores = score_maps(maps, soft, binary)
        out[name] = {metric: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
                     for metric, v in scores.items() if metric in ("correlation", "pointing_game")}
    return out


# --- the study --------------------------------------------------------------------------------------------------

def run_continuum_study(out_dir: Path, seed: int = 0, cfg: ContinuumConfig = ContinuumConfig(),
                        progress: Progress | None = None, points: tuple[Point, ...] = (*POINTS, CONTROL)
                        ) -> StudySummary:
    progress = progress or (lambda message: None)
    if cfg.models < 2:
        raise UserError("the continuum study needs at least 2 models per point (detection compares groups)")
    start = time.perf_counter()
    out_dir = Path(out_dir)
    ds = load_dataset("digits")
    ctx = DetectContext(ds.x_test[:cfg.n_clean], ds.y_test[:cfg.n_clean], ds.num_classes, seed=seed)
    zoos = build_zoos(cfg, seed, points, progress)
    t_build = time.perf_counter() - start
    t_train = sum(card.train_seconds for built in zoos.values() for _, _, card in built)
    clean = [m for _, m, _ in zoos["clean"]]

    est: dict[tuple[str, str, str], Estimate] = {}  # (task, tool, metric) -> estimate
    per_model: list[ResultRow] = []
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for p in points:
        t0 = time.perf_counter()
        trojaned = [m for _, m, _ in zoos[p.name]]
        seeds = [card.seed for _, _, card in zoos[p.name]]
        # each model's training set and trigger as the zoo builder made them (a blend's noise is the model's own)
        prepared = [prepare(ds, job.arch, job.arch_kwargs, job.trojan, seed=card.seed) for job, _, card in zoos[p.name]]
        poisoned = [PoisonedData(q.x, q.y, q.poisoned_indices) for q in prepared]
        attacks = [attack_inputs(q.trigger, ds, cfg.target) for q in prepared]
        keeps = [clean_test_mask(q.trigger, ds.x_test) for q in prepared]
        asr = [attack_success(m, a[1], cfg.target) for m, a in zip(trojaned, attacks)]
        asr_clean = [attack_success(m, a[1], cfg.target) for m, a in zip(clean, attacks)]  # clean twin i, trigger i
        acc = [float((predict(m, ds.x_test[k]) == ds.y_test[k]).float().mean()) for m, k in zip(trojaned, keeps)]
        profiles = [edit_profile(ds.x_train, q) for q in poisoned]
        n_poisoned = np.mean([len(q.indices) for q in poisoned])
        est[(TASK_TROJANS, "trojaned", f"asr[{p.name}]")] = bootstrap_mean(asr, cfg.n_boot, seed)
        est[(TASK_TROJANS, "clean-twin", f"asr[{p.name}]")] = bootstrap_mean(asr_clean, cfg.n_boot, seed)
        est[(TASK_TROJANS, "trojaned", f"clean_acc[{p.name}]")] = bootstrap_mean(acc, cfg.n_boot, seed)
        nan = float("nan")
        for key in profiles[0]:
            value = float(np.mean([prof[key] for prof in profiles]))
            est[(TASK_TROJANS, "trigger", f"edit_{key}[{p.name}]")] = Estimate(value, nan, nan, cfg.models)
        est[(TASK_TROJANS, "trigger", f"poisoned_share[{p.name}]")] = Estimate(float(n_poisoned) / len(ds.x_train), nan, nan,
                                                                               cfg.models)

        curves[p.name], target_hits = model_detection(trojaned, clean, ctx, cfg, seed)
        est[(TASK_MODEL, "neural-cleanse", f"target_accuracy[{p.name}]")] = bootstrap_mean(target_hits, cfg.n_boot, seed)
        for name, (labels, scores) in curves[p.name].items():
            est[(TASK_MODEL, name, f"auroc[{p.name}]")] = auroc_estimate(labels, scores)
        sample: dict[str, list[float]] = defaultdict(list)
        attr: dict[tuple[str, str], list[float]] = defaultdict(list)
        for k, (m, s, (x, x_trig, masks)) in enumerate(zip(trojaned, seeds, attacks)):
            for name, value in sample_detection(m, poisoned[k], ctx).items():
                sample[name].append(value)
            pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(s))[:cfg.n_attribution]
            mask = masks[pick] if masks is not None else None
            for name, scores in attribution(m, x[pick], x_trig[pick], mask, cfg.target, seed).items():
                for metric, value in scores.items():
                    attr[(name, metric)].append(value)
            per_model.append(ResultRow("trojaned", f"continuum-digits:{p.name}:model{k}", TASK_TROJANS, "asr", asr[k],
                                       seed=s, extra={"point": p.name, "clean_acc": acc[k]}))
        for name, values in sample.items():
            est[(TASK_SAMPLES, name, f"auroc[{p.name}]")] = bootstrap_mean(values, cfg.n_boot, seed)
        for (name, metric), values in attr.items():
            est[(TASK_ATTR, name, f"{metric}[{p.name}]")] = bootstrap_mean(values, cfg.n_boot, seed)
        progress(f"{p.name}: ASR {np.mean(asr):.2f} (clean twins {np.mean(asr_clean):.2f}), measured in "
                 f"{time.perf_counter() - t0:.0f}s")

    described = [{"name": p.name, "trigger": p.trigger.model_dump(), "mode": p.mode, "control": p.control}
                 for p in points]
    baselines = {TASK_MODEL: {"random", "entropy", "accuracy", "weight-stats"}, TASK_SAMPLES: {"random", "knn-pixels"},
                 TASK_ATTR: {"sobel"}, TASK_TROJANS: {"clean-twin"}}
    rows = [ResultRow(tool, MODEL_ID, task, metric, e.value, seed=seed,
                      extra={"low": e.low, "high": e.high, "n": e.n, "method": e.method,
                             "baseline": tool in baselines.get(task, set())})
            for (task, tool, metric), e in est.items()]
    rows += per_model
    missing = Estimate(float("nan"), float("nan"), float("nan"), 0)
    get = lambda task, tool, metric: est.get((task, tool, metric), missing)
    path = _figure(get, [p.name for p in points], sum(not p.control for p in points),
                   out_dir / "figures" / "continuum.png")
    rows.append(figure_row("continuum-study", TASK_MODEL, path,
                           "Each tool's score along the trigger continuum, from a crisp patch (left) to a graded "
                           "distributional shift (right); 95% CIs over models (AUROC: score interval; means: expanded "
                           "bootstrap). Top left: the trojans' "
                           "attack success and their clean twins'.", seed=seed))
    results = out_dir / "results.sqlite"
    run_id = record_study(results, "continuum", {"cfg": asdict(cfg), "points": described}, seed, rows)
    seconds = time.perf_counter() - start
    findings = _findings(get, [p.name for p in points if not p.control], [p.name for p in points if p.control])
    findings["time"] = (f"{seconds:.0f}s wall, {t_build:.0f}s of it building or reusing the zoos (the cards' training "
                        f"time {t_train:.0f}s, which a reused zoo does not spend again)")
    return StudySummary("continuum", results, findings, seconds, run_id)


def _findings(get, names: list[str], controls: list[str]) -> dict[str, str]:
    """Per tool, its score along the family (and on the control after `|`), then the endpoints with CIs."""

    def along(task, tool, metric):
        seq = " -> ".join(f"{get(task, tool, f'{metric}[{n}]').value:.2f}" for n in names)
        return seq + "".join(f" | {get(task, tool, f'{metric}[{c}]').value:.2f}" for c in controls)

    def ends(task, tool, metric):
        return " / ".join(str(get(task, tool, f"{metric}[{n}]")) for n in (names[0], names[-1], *controls))

    f = {"points": " -> ".join(names) + "".join(f" | {c} (control)" for c in controls)}
    for name in (*names, *controls):
        f[f"{name}: ASR (clean twins)"] = f"{get(TASK_TROJANS, 'trojaned', f'asr[{name}]')} " \
                                         f"({get(TASK_TROJANS, 'clean-twin', f'asr[{name}]')})"
    for tool in MODEL_DETECTORS:
        f[f"model AUROC, {tool}"] = along(TASK_MODEL, tool, "auroc")
    f["neural-cleanse: target label found"] = along(TASK_MODEL, "neural-cleanse", "target_accuracy")
    for tool in SAMPLE_TOOLS:
        f[f"sample AUROC, {tool}"] = along(TASK_SAMPLES, tool, "auroc")
    for tool in ATTRIBUTION_TOOLS:
        f[f"footprint correlation, {tool}"] = along(TASK_ATTR, tool, "correlation")
    f["neural-cleanse model AUROC: first / last / control"] = ends(TASK_MODEL, "neural-cleanse", "auroc")
    for tool in ("spectral", "strip"):
        f[f"{tool} sample AUROC: first / last / control"] = ends(TASK_SAMPLES, tool, "auroc")
    for tool in ("saliency", "integrated-gradients"):
        f[f"{tool} correlation: first / last / control"] = ends(TASK_ATTR, tool, "correlation")
    return f


def _figure(get, names: list[str], n_family: int, path: Path) -> Path:
    from ..report.plots import pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), dpi=110, sharex=True)
    xs = np.arange(len(names))

    def line(ax, task, tool, metric, **kwargs):
        e = [get(task, tool, f"{metric}[{n}]") for n in names]
        vals = np.array([v.value for v in e])
        err = np.array([[max(0.0, v.value - v.low) if np.isfinite(v.low) else 0.0 for v in e],
                        [max(0.0, v.high - v.value) if np.isfinite(v.high) else 0.0 for v in e]])
        ax.errorbar(xs, vals, yerr=err, capsize=2, marker="o", ms=4, lw=1.3, **kwargs)

    a = axes[0, 0]
    line(a, TASK_TROJANS, "trojaned", "asr", label="ASR, trojaned", color="#c44e52")
    line(a, TASK_TROJANS, "clean-twin", "asr", label="ASR, clean twins", color="#999999", ls="--")
    line(a, TASK_TROJANS, "trojaned", "clean_acc", label="clean accuracy, trojaned", color="#4c72b0")
    line(a, TASK_TROJANS, "trigger", "edit_area", label="edit footprint (share of pixels)", color="#55a868", ls=":")
    line(a, TASK_TROJANS, "trigger", "edit_intensity", label="edit intensity (mean |change|)", color="#8172b2", ls=":")
    line(a, TASK_TROJANS, "trigger", "edit_fixed", label="edit: fixed-pattern share", color="#937860", ls=":")
    a.set_title("the trojans", fontsize=9)
    b = axes[0, 1]
    for tool in MODEL_DETECTORS:
        line(b, TASK_MODEL, tool, "auroc", label=tool, ls="--" if tool in FITTED | {"random"} else "-")
    line(b, TASK_MODEL, "neural-cleanse", "target_accuracy", label="neural-cleanse: target label found",
         color="#1f77b4", ls=":")
    b.set_title("model-level detection AUROC (trojaned vs clean twins)", fontsize=9)
    c = axes[1, 0]
    for tool in SAMPLE_TOOLS:
        line(c, TASK_SAMPLES, tool, "auroc", label=tool, ls="--" if tool in ("random", "knn-pixels") else "-")
    c.set_title("poisoned-sample detection AUROC", fontsize=9)
    d = axes[1, 1]
    for tool in ATTRIBUTION_TOOLS:
        line(d, TASK_ATTR, tool, "correlation", label=f"{tool}: correlation", ls="--" if tool == "sobel" else "-")
    d.axhline(0, color="k", lw=0.8, ls=":")
    d.set_title("attribution vs the trigger's footprint", fontsize=9)
    for ax in axes.flat:
        ax.legend(fontsize=6.5)
        ax.set_xticks(xs, names, rotation=20, ha="right", fontsize=8)
        if n_family < len(names):  # the controls sit apart, on grey
            ax.axvspan(n_family - 0.5, len(names) - 0.5, color="#eeeeee", zorder=0)
    for ax in (b, c):
        ax.axhline(0.5, color="k", lw=0.8, ls=":")
        ax.set_ylim(0, 1.05)
    fig.tight_layout()
    return save(fig, path)


@register_study("continuum")
def continuum_study(out_dir: Path, seed: int, quick: bool, progress: Progress) -> StudySummary:
    """Triggers from a crisp patch through blends and a style filter to a graded distributional shift; detection
    and attribution scores along the way."""
    with one_thread():
        return run_continuum_study(out_dir, seed, QUICK if quick else ContinuumConfig(), progress)
