"""Study 1, deep-thin vs wide-shallow: `trojanbench study width-depth`.

A grid of MLPs and CNNs at (nearly) equal parameter count: for every depth the width is solved so that the
model has the family's target number of parameters (`solve_width`; the actual counts are reported). Per shape,
`n_clean` clean and `n_trojaned` trojaned models (a 3x3 / 4x4 checkerboard patch in the bottom-right corner,
all-to-one at one poison rate) are built as one zoo per family by the zoo builder (cards, clean twins, resume; a
rerun reuses the cached zoos; no gate, so every model is kept), and each is measured on:

- clean test accuracy, and PGD accuracy (L-inf, `train.adversarial`) at a grid of budgets (clean models);
- attack success rate of the trigger (trojaned models; the clean models' rate is the control);
- detection: Neural Cleanse's anomaly index. Why this detector: it needs no meta-training split (each shape
  has only a handful of models, so the fitted baselines and MNTD have nothing to learn from), and it targets
  exactly the trojan planted here (a small patch that sends every input to one class). AUROC per shape over
  its clean vs trojaned models, with a score interval (Newcombe's variance, `stats.auroc_estimate`);
- attribution hit rate: saliency maps of triggered test images for the target label, scored with the diagnose
  track's `score_maps` (pointing game with 1-pixel tolerance, correlation with the patch footprint), beside a
  random map (the chance level);
- information per neuron: for each hidden layer (each ReLU's output), the effective rank of its activations
  on clean test images divided by the layer's width (units; channels for a conv layer, every spatial position
  a sample), averaged over layers. Effective rank (Roy & Vetterli 2007): exp of the Shannon entropy of the
  singular values normalised to sum to one, of the centred activation matrix. It is 1 for a rank-one matrix
  and n for n equal singular values, and says how many directions the layer really uses.

Every other per-shape number is a mean over seeds with a 95% CI from a bootstrap over seeds and, where a metric
is a rate over images, over images within each seed (two levels), so a CI reflects both the training seeds
and the finite test set; its percentiles are expanded for the number of seeds (Hesterberg 2015,
`stats.percentile_interval`). Trends are reported as deepest minus shallowest shape: for means with the same
bootstrap, for AUROC with the MOVER interval of two score intervals.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from ..config import TrainConfig, ZooConfig
from ..data import ImageDataset, load_dataset
from ..errors import UserError
from ..models import build_model, count_parameters, data_kwargs
from ..models.hooks import hooked
from ..report.html import View, figure_row, register_view
from ..results import ResultRow
from ..results.stats import EXPANDED_METHOD, SCORE_METHOD, Estimate, auroc, auroc_estimate, mover_difference, percentile_interval
from ..tasks.diagnose import footprints, score_maps
from ..tools.attribute import ATTRIBUTORS, reference_sample
from ..tools.detect import DETECTORS, DetectContext
from ..train import predict
from ..train.adversarial import robust_correct
from ..trojans import make_trigger
from ..trojans.poison import attack_mask
from ..utils import evaluating
from ..zoo.build import Zoo
from ..zoo.store import load_model
from . import Progress, StudySummary, record_study, register_study

MODEL_ID = "zoo:width-depth"


@dataclass(frozen=True)
class Family:
    """One line of the grid: a dataset, an architecture, the depths, the parameter budget, how to train."""

    dataset: str
    arch: str
    depths: tuple[int, ...]
    params: int
    eps: tuple[float, ...]  # PGD budgets in pixel units ([0, 1] images); 0 is the clean accuracy
    headline_eps: float  # the budget the leaderboard and the trend findings use
    epochs: int
    lr: float
    batch_size: int = 64
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    n_train: int | None = None  # None: the whole training split
    n_test: int | None = None
    n_clean: int = 4
    n_trojaned: int = 4
    poison_rate: float = 0.02  # one rate for every shape of the family

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.arch}"

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, optimizer=self.optimizer,
                           weight_decay=self.weight_decay)


@dataclass(frozen=True)
class WidthDepthConfig:
    families: tuple[Family, ...] = (
        # AdamW for the MLPs: with the project's SGD recipe (lr 0.02) the 6-layer MLP fails to train in some seeds
        # (clean accuracy 0.39 on average), which would confound every other measurement of that shape
        Family("digits", "mlp", (1, 2, 3, 4, 6), 50_000, (0.0, 0.02, 0.05, 0.1), 0.05, epochs=20, lr=2e-3,
               optimizer="adamw", weight_decay=0.01),
        # CNN depth 1 is left out: one conv layer + global pooling needs ~950 channels to reach 20k parameters,
        # and its 16x16x950 maps cost more than the rest of the digits grid together
        Family("digits", "cnn", (2, 3, 4, 6), 20_000, (0.0, 0.02, 0.05, 0.1), 0.05, epochs=15, lr=0.05),
        Family("cifar10", "cnn", (2, 3, 4, 6), 10_000, (0.0, 1 / 255, 2 / 255, 4 / 255), 2 / 255, epochs=3, lr=0.05,
               batch_size=128, n_train=10_000, n_test=2_000, n_clean=3, n_trojaned=3, poison_rate=0.05),
    )
    target: int = 0
    pgd_steps: int = 10
    pgd_rel_step: float = 0.25  # step = 0.25 eps: 2.5 eps over 10 steps, Madry et al.'s ratio
    n_pgd: int = 200  # test images attacked per clean model
    nc_steps: int = 100
    n_detect: int = 200  # the auditor's clean images (Neural Cleanse)
    attributor: str = "saliency"
    n_attribution: int = 32
    n_rank: int = 256  # clean images whose activations give the effective rank
    max_rank_rows: int = 4096  # activation rows (images x positions) per layer, subsampled beyond this
    n_boot: int = 1000
    workers: int = 2  # processes, one thread each (the budget is two cores)


QUICK = WidthDepthConfig(
    families=(Family("digits", "mlp", (1, 3), 6_000, (0.0, 0.05, 0.1), 0.05, epochs=6, lr=5e-3, batch_size=128,
                     optimizer="adamw", weight_decay=0.01,
                     n_clean=2, n_trojaned=2, poison_rate=0.1),
              Family("digits", "cnn", (2, 3), 3_000, (0.0, 0.05, 0.1), 0.05, epochs=4, lr=0.05, batch_size=128,
                     n_clean=2, n_trojaned=2, poison_rate=0.1)),
    n_pgd=64, nc_steps=30, n_detect=64, n_attribution=8, n_rank=64, n_boot=200, workers=1)

COLUMNS = ("params", "width", "depth", "clean_acc", "robust_acc", "asr", "asr_clean_model", "nc_auroc",
           "pointing_game", "correlation", "info_per_neuron", "effective_rank")
for _dataset in ("digits", "cifar10"):
    register_view(f"width-depth-{_dataset}",
                  View(f"Deep-thin vs wide-shallow on {_dataset}: one row per shape at equal parameter count (robust_acc = "
                       "PGD accuracy at the family's headline eps; asr at one poison rate; nc_auroc = Neural Cleanse "
                       "clean vs trojaned; pointing_game = saliency on the patch; chance row = a model that guesses)",
                       "robust_acc", True, COLUMNS))


# --- shapes -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    family: Family
    depth: int
    width: int
    params: int

    @property
    def label(self) -> str:
        return f"{self.family.arch} d{self.depth} w{self.width}"


def param_count(arch: str, data_kw: dict, depth: int, width: int) -> int:
    with torch.device("meta"):  # no memory, no initialisation: only the shapes matter
        return count_parameters(build_model(arch, **data_kw, width=width, depth=depth))


def solve_width(arch: str, data_kw: dict, depth: int, target: int) -> int:
    """The width whose model is closest to `target` parameters at this depth (parameters grow with width)."""
    lo, hi = 1, 1
    while param_count(arch, data_kw, depth, hi) < target:
        lo, hi = hi, hi * 2
    while lo < hi:
        mid = (lo + hi) // 2
        if param_count(arch, data_kw, depth, mid) < target:
            lo = mid + 1
        else:
            hi = mid
    return min((w for w in (lo - 1, lo) if w >= 1), key=lambda w: abs(param_count(arch, data_kw, depth, w) - target))


def shapes_of(family: Family, data_kw: dict) -> list[Shape]:
    out = []
    for depth in family.depths:
        width = solve_width(family.arch, data_kw, depth, family.params)
        out.append(Shape(family, depth, width, param_count(family.arch, data_kw, depth, width)))
    return out


# --- information per neuron ---------------------------------------------------------------------------------------

def effective_rank(a: torch.Tensor) -> float:
    """exp(entropy of the singular values normalised to sum 1) of a matrix [n, d] (Roy & Vetterli 2007):
    1 for rank one, k for k equal singular values, 0 for the zero matrix."""
    s = torch.linalg.svdvals(a.double())
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def hidden_activations(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The output of every ReLU module (the hidden layers of the mlp and cnn families), on `x`, in eval mode;
    the hooks are removed and the train/eval state restored whatever happens."""
    acts: list[torch.Tensor] = []
    device = next(model.parameters()).device
    with evaluating(model), torch.no_grad(), hooked([m for m in model.modules() if isinstance(m, nn.ReLU)],
                                                    lambda mod, inp, out: acts.append(out.detach().cpu())):
        model(x.to(device))
    return acts


def layer_ranks(model: nn.Module, x: torch.Tensor, max_rows: int = 4096, seed: int = 0) -> list[tuple[int, float]]:
    """(width, effective rank of the centred activations) per hidden layer. A conv layer's width is its
    channel count and each spatial position of each image is a row."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for a in hidden_activations(model, x):
        rows = a.permute(0, 2, 3, 1).reshape(-1, a.shape[1]) if a.dim() == 4 else a.flatten(1)
        if len(rows) > max_rows:
            rows = rows[torch.randperm(len(rows), generator=g)[:max_rows]]
        out.append((rows.shape[1], effective_rank(rows - rows.mean(0))))
    return out


def information_per_neuron(ranks: list[tuple[int, float]]) -> float:
    return float(np.mean([r / w for w, r in ranks])) if ranks else float("nan")


# --- one shape: train its models and measure them (runs in a worker process) ---------------------------------

@dataclass
class ModelResult:
    family: str
    label: str
    depth: int
    width: int
    params: int
    kind: str  # clean / trojaned
    seed: int
    correct: np.ndarray  # per test image, 0/1
    asr_hits: np.ndarray  # per triggered non-target test image: sent to the target?
    nc_score: float
    nc_target: int | None
    ranks: list[tuple[int, float]]
    pgd: dict[float, np.ndarray] = field(default_factory=dict)  # clean models only
    pointing: np.ndarray = field(default_factory=lambda: np.zeros(0))  # trojaned models only
    correlation: np.ndarray = field(default_factory=lambda: np.zeros(0))
    pointing_random: np.ndarray = field(default_factory=lambda: np.zeros(0))
    seconds: float = 0.0  # measuring it
    train_seconds: float = 0.0  # training it (its card)

    @property
    def info_per_neuron(self) -> float:
        return information_per_neuron(self.ranks)


def load_family_data(family: Family) -> ImageDataset:
    ds = load_dataset(family.dataset)
    if family.n_train or family.n_test:
        if (family.n_train or 0) > len(ds.x_train) or (family.n_test or 0) > len(ds.x_test):
            raise UserError(f"{family.dataset} has {len(ds.x_train)} training and {len(ds.x_test)} test images; the "
                            f"study asks for {family.n_train} and {family.n_test}")
        ds = ds.subset(family.n_train, family.n_test)
    return ds


def family_zoo(family: Family, shapes: list[Shape], cfg: WidthDepthConfig, seed: int) -> ZooConfig:
    """The zoo of one family, built by the zoo builder (cards, clean twins, resume): one architecture entry per
    shape, each with `n_clean` clean and `n_trojaned` trojaned models (the patch trigger's default, a checkerboard
    at the bottom-right corner, all-to-one to `cfg.target` at the family's poison rate), every trojan beside a clean
    twin of its shape. No held-out split, and the gate keeps every model: the study measures how well each shape
    learns the trojan, so dropping the weak ones would bias it."""
    n = family.n_clean + family.n_trojaned
    options = {k: v for k, v in (("n_train", family.n_train), ("n_test", family.n_test)) if v}
    return ZooConfig(name=f"width-depth-{family.dataset}-{family.arch}", seed=seed, models_per_arch=n,
                     clean_fraction=family.n_clean / n, test_fraction=0.0,
                     data={"name": family.dataset, "options": options},
                     archs=[{"arch": family.arch, "kwargs": {"width": s.width, "depth": s.depth}} for s in shapes],
                     trojans={"kinds": ["patch"], "targets": [cfg.target], "rates": [family.poison_rate]},
                     train=family.train_config(), gate={"min_asr": 0.0, "max_clean_drop": 1.0, "retries": 0})


def build_family_zoos(shapes: list[Shape], cfg: WidthDepthConfig, seed: int, progress: Progress) -> dict[str, Path]:
    """Build (or resume, or reuse from the cache) each family's zoo; {family name: zoo folder}."""
    from ..zoo.build import build_zoo, cache_folder

    roots = {}
    for fam in cfg.families:
        zcfg = family_zoo(fam, [s for s in shapes if s.family == fam], cfg, seed)
        roots[fam.name] = cache_folder(zcfg)
        start = time.perf_counter()
        counts = build_zoo(zcfg, roots[fam.name], executor="pool" if cfg.workers > 1 else "serial",
                           jobs=max(1, cfg.workers))
        if counts.get("failed"):
            raise UserError(f"{counts['failed']} models of the {fam.name} zoo failed to train; see `trojanbench zoo "
                            f"status {roots[fam.name]}`")
        progress(f"{fam.name}: zoo {roots[fam.name]} ({counts.get('done', 0)} models, "
                 f"{time.perf_counter() - start:.0f}s)")
    return roots


def measure_shape(shape: Shape, cfg: WidthDepthConfig, seed: int, zoo_root: Path,
                  threads: int | None = None) -> list[ModelResult]:
    """Measure the clean and trojaned models of one shape, loaded from its family's zoo."""
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _measure_shape(shape, cfg, seed, zoo_root)
    finally:
        torch.set_num_threads(old_threads)


def _measure_shape(shape: Shape, cfg: WidthDepthConfig, seed: int, zoo_root: Path) -> list[ModelResult]:
    fam = shape.family
    zoo = Zoo(zoo_root)
    ds = zoo.dataset()
    models = [(j, f, c) for j, f, c in zoo.models() if j.arch_kwargs == {"width": shape.width, "depth": shape.depth}]
    spec = next(j.trojan for j, _, _ in models if j.trojaned)  # one trigger and poisoning for the whole family
    trigger = make_trigger(spec.trigger, ds.image_shape)
    keep = attack_mask(ds.y_test, spec.poison)
    x_attack = ds.x_test[keep]
    x_trig, mask = trigger.apply_with_mask(x_attack, generator=torch.Generator().manual_seed(seed))
    n_att = min(cfg.n_attribution, len(x_attack))
    soft, binary = footprints(x_attack[:n_att], x_trig[:n_att], mask[:n_att] if mask is not None else None)
    reference = reference_sample(ds.x_train, seed=seed)  # the clean sample every attributor gets
    attributor = ATTRIBUTORS.get(cfg.attributor)(seed=seed).fit_reference(reference)
    random_map = ATTRIBUTORS.get("random")(seed=seed).fit_reference(reference)
    ctx = DetectContext(ds.x_test[:cfg.n_detect], ds.y_test[:cfg.n_detect], ds.num_classes, seed=seed)
    detector = DETECTORS.get("neural-cleanse")(steps=cfg.nc_steps)
    target = torch.full((n_att,), cfg.target, dtype=torch.long)
    results = []
    for job, folder, card in models:
        start = time.perf_counter()
        kind, s = ("trojaned" if job.trojaned else "clean"), card.seed
        model, _ = load_model(folder)
        correct = (predict(model, ds.x_test) == ds.y_test).float().numpy()
        asr_hits = (predict(model, x_trig) == cfg.target).float().numpy()
        d = detector.detect(model, replace(ctx, seed=s))
        r = ModelResult(fam.name, shape.label, shape.depth, shape.width, shape.params, kind, s, correct, asr_hits,
                        float(d.score), d.target_label, layer_ranks(model, ds.x_test[:cfg.n_rank], cfg.max_rank_rows, s))
        if kind == "clean":
            r.pgd = robust_correct(model, ds.x_test[:cfg.n_pgd], ds.y_test[:cfg.n_pgd], fam.eps, steps=cfg.pgd_steps,
                                   rel_step=cfg.pgd_rel_step, seed=s)
        else:
            scores = score_maps(attributor.attribute(model, x_trig[:n_att], target), soft, binary)
            r.pointing, r.correlation = scores["pointing_game"], scores["correlation"]
            r.pointing_random = score_maps(random_map.attribute(model, x_trig[:n_att], target), soft, binary)["pointing_game"]
        r.train_seconds = card.train_seconds
        r.seconds = time.perf_counter() - start
        results.append(r)
    return results


def run_shapes(shapes: list[Shape], cfg: WidthDepthConfig, seed: int, progress: Progress,
               roots: dict[str, Path]) -> list[ModelResult]:
    """Measure every shape's models (from its family's zoo, `roots`), in this process (workers <= 1) or in a spawn
    pool of single-threaded workers, the most expensive shapes first so the pool ends together."""
    start = time.perf_counter()
    order = sorted(shapes, key=lambda s: -_cost(s))
    out: list[ModelResult] = []

    def done(shape: Shape, res: list[ModelResult]) -> None:
        out.extend(res)
        progress(f"{shape.family.name} {shape.label} ({shape.params} parameters): clean acc "
                 f"{np.mean([r.correct.mean() for r in res]):.3f}, ASR "
                 f"{np.mean([r.asr_hits.mean() for r in res if r.kind == 'trojaned'] or [np.nan]):.3f} "
                 f"({time.perf_counter() - start:.0f}s)")

    if cfg.workers <= 1:
        for shape in order:
            done(shape, measure_shape(shape, cfg, seed, roots[shape.family.name]))
        return out
    with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=mp.get_context("spawn")) as pool:
        pending = {pool.submit(measure_shape, shape, cfg, seed, roots[shape.family.name], 1): shape for shape in order}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                done(pending.pop(f), f.result())
    return out


def _cost(shape: Shape) -> float:
    """A rough relative cost for ordering: images seen in training times the models trained."""
    f = shape.family
    n = f.n_train or 1500
    per_image = 3072 if f.dataset == "cifar10" else 256
    return n * f.epochs * (f.n_clean + f.n_trojaned) * per_image * (4 if f.arch == "cnn" else 1) / max(1, shape.depth ** 0.5)


# --- statistics -----------------------------------------------------------------------------------------------------

def boot_means(per_seed: Sequence[np.ndarray], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap distribution [n_boot] of the mean over seeds of each seed's mean: resample seeds, then the
    items within each drawn seed (two levels). A seed with one item is a per-model number."""
    arrays = [np.asarray(a, dtype=np.float64) for a in per_seed]
    arrays = [a[~np.isnan(a)] for a in arrays]
    arrays = [a for a in arrays if len(a)]
    if not arrays:
        return np.full(n_boot, np.nan)
    s = len(arrays)
    within = np.stack([a[rng.integers(0, len(a), (n_boot, len(a)))].mean(1) for a in arrays])  # [S, n_boot]
    picks = rng.integers(0, s, (n_boot, s))
    return within[picks, np.arange(n_boot)[:, None]].mean(1)


def estimate(per_seed: Sequence[np.ndarray], samples: np.ndarray) -> Estimate:
    arrays = [np.asarray(a, dtype=np.float64) for a in per_seed]
    arrays = [a[~np.isnan(a)] for a in arrays]
    arrays = [a for a in arrays if len(a)]
    if not arrays:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    value = float(np.mean([a.mean() for a in arrays]))
    return Estimate(value, *_interval(samples, len(arrays)), len(arrays), EXPANDED_METHOD)


def auroc_samples(labels: np.ndarray, scores: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """AUROC over resamples of the models, stratified by label (every resample keeps both classes)."""
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if not len(pos) or not len(neg):
        return np.full(n_boot, np.nan)
    out = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        out[b] = auroc(labels[idx], scores[idx])
    return out


def _interval(samples: np.ndarray, n: int | None = None) -> tuple[float, float]:
    """The percentile interval of bootstrap `samples` (nan ones dropped); with `n`, the units drawn, Hesterberg's
    expanded percentiles (`stats.percentile_interval`)."""
    ok = samples[~np.isnan(samples)]
    if not len(ok):
        return float("nan"), float("nan")
    return percentile_interval(ok, n)


@dataclass
class ShapeStats:
    """Per shape: metric -> (estimate, bootstrap samples); the samples make differences and correlations."""

    shape: Shape
    metrics: dict[str, tuple[Estimate, np.ndarray]] = field(default_factory=dict)
    ranks: list[tuple[int, float]] = field(default_factory=list)  # every layer of every model


def eps_name(eps: float, dataset: str) -> str:
    return f"{round(eps * 255, 2):g}/255" if dataset == "cifar10" else f"{eps:g}"


def shape_stats(shape: Shape, results: list[ModelResult], cfg: WidthDepthConfig, seed: int) -> ShapeStats:
    rng = np.random.default_rng(seed)
    clean = [r for r in results if r.kind == "clean"]
    troj = [r for r in results if r.kind == "trojaned"]
    st = ShapeStats(shape)

    def add(metric: str, per_seed: list[np.ndarray]) -> None:
        samples = boot_means(per_seed, cfg.n_boot, rng)
        st.metrics[metric] = (estimate(per_seed, samples), samples)

    fam = shape.family
    add("clean_acc", [r.correct for r in clean])
    add("clean_acc_trojaned", [r.correct for r in troj])
    for e in fam.eps:
        add(f"pgd_acc[eps={eps_name(e, fam.dataset)}]", [r.pgd[float(e)] for r in clean])
    st.metrics["robust_acc"] = st.metrics[f"pgd_acc[eps={eps_name(fam.headline_eps, fam.dataset)}]"]
    add("asr", [r.asr_hits for r in troj])
    add("asr_clean_model", [r.asr_hits for r in clean])
    labels = np.array([0] * len(clean) + [1] * len(troj))
    scores = np.array([r.nc_score for r in clean + troj])
    # the cell's interval is the score interval; the resampled AUROCs only feed the Spearman correlations
    st.metrics["nc_auroc"] = (auroc_estimate(labels, scores), auroc_samples(labels, scores, cfg.n_boot, rng))
    add("nc_target_acc", [np.array([float(r.nc_target == cfg.target)]) for r in troj])
    add("pointing_game", [r.pointing for r in troj])
    add("pointing_game_random", [r.pointing_random for r in troj])
    add("correlation", [r.correlation for r in troj])
    add("info_per_neuron", [np.array([r.info_per_neuron]) for r in results])
    add("effective_rank", [np.array([np.mean([k for _, k in r.ranks])]) for r in results])
    add("train_seconds", [np.array([r.train_seconds]) for r in results])
    for name, v in (("params", shape.params), ("width", shape.width), ("depth", shape.depth)):
        st.metrics[name] = (Estimate(float(v), float("nan"), float("nan"), 1), np.full(cfg.n_boot, float(v)))
    st.ranks = [wr for r in results for wr in r.ranks]
    return st


def stats_rows(stats: list[ShapeStats], results: list[ModelResult]) -> list[ResultRow]:
    rows = []
    for st in stats:
        task = f"width-depth-{st.shape.family.dataset}"
        for metric, (est, _) in st.metrics.items():
            if math.isnan(est.value):
                continue
            rows.append(ResultRow(st.shape.label, MODEL_ID, task, metric, est.value,
                                  extra={"low": est.low, "high": est.high, "n": est.n, "method": est.method, "baseline": False,
                                         "family": st.shape.family.name}))
    for dataset in sorted({st.shape.family.dataset for st in stats}):
        chance = {"clean_acc": 0.1, "robust_acc": 0.1, "nc_auroc": 0.5}  # a guessing model and a coin-flip detector
        random_hit = [st.metrics["pointing_game_random"][0].value for st in stats if st.shape.family.dataset == dataset]
        chance["pointing_game"] = float(np.nanmean(random_hit)) if random_hit else float("nan")
        rows += [ResultRow("chance", MODEL_ID, f"width-depth-{dataset}", m, v,
                           extra={"low": float("nan"), "high": float("nan"), "n": 0, "baseline": True})
                 for m, v in chance.items() if not math.isnan(v)]
    for r in results:  # per model, for anyone who wants to redo the statistics
        model_id = f"width-depth:{r.family}/{r.label}:{r.kind}"
        task = f"width-depth-{r.family.split('/')[0]}"
        values = {"clean_acc": r.correct.mean(), "asr": r.asr_hits.mean(), "nc_score": r.nc_score,
                  "info_per_neuron": r.info_per_neuron, "train_seconds": r.train_seconds}
        values |= {f"pgd_acc[eps={e:g}]": v.mean() for e, v in r.pgd.items()}
        if len(r.pointing):
            values |= {"pointing_game": np.nanmean(r.pointing), "correlation": np.nanmean(r.correlation)}
        rows += [ResultRow(r.label, model_id, task, m, float(v), seed=r.seed,
                           extra={"params": r.params, "layers": r.ranks} if m == "info_per_neuron" else {})
                 for m, v in values.items() if not math.isnan(float(v))]
    return rows


# --- trends and findings ------------------------------------------------------------------------------------------

TREND_METRICS = ("clean_acc", "robust_acc", "asr", "nc_auroc", "pointing_game", "info_per_neuron")


def _fmt(est: Estimate) -> str:
    return str(est)


def _diff(a: tuple[Estimate, np.ndarray], b: tuple[Estimate, np.ndarray]) -> Estimate:
    """b - a: for two AUROCs (score intervals) the MOVER interval (`stats.mover_difference`), for means the expanded
    percentile interval of the difference of their independent bootstrap samples, expanded for the smaller side's
    number of seeds (the conservative choice). Its n is the smaller side's, so a difference of small cells says
    "n=4" instead of an interval, as they do."""
    n = min(a[0].n, b[0].n)
    if a[0].method == b[0].method == SCORE_METHOD:
        return mover_difference(a[0], b[0])
    return Estimate(b[0].value - a[0].value, *_interval(b[1] - a[1], n), n, EXPANDED_METHOD)


def _spearman_samples(stats: list[ShapeStats], x: str, y: str) -> Estimate:
    """Spearman correlation across a family's shapes between two per-shape means, with a CI from recomputing
    it on each bootstrap round's per-shape means (seeds resampled within shapes)."""
    xs = np.array([st.metrics[x][0].value for st in stats])
    ys = np.array([st.metrics[y][0].value for st in stats])
    if len(stats) < 3 or np.isnan(xs).any() or np.isnan(ys).any() or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), len(stats))
    value = float(spearmanr(xs, ys).statistic)
    xb = np.stack([st.metrics[x][1] for st in stats], 1)
    yb = np.stack([st.metrics[y][1] for st in stats], 1)
    rhos = np.array([spearmanr(xb[i], yb[i]).statistic if np.ptp(xb[i]) > 0 and np.ptp(yb[i]) > 0 else np.nan
                     for i in range(len(xb))])
    low, high = _interval(rhos)
    return Estimate(value if not math.isnan(value) else float("nan"), low, high, len(stats))


def findings(stats: list[ShapeStats]) -> dict[str, str]:
    f: dict[str, str] = {}
    by_family: dict[str, list[ShapeStats]] = defaultdict(list)
    for st in stats:
        by_family[st.shape.family.name].append(st)
    for name, group in by_family.items():
        group.sort(key=lambda st: st.shape.depth)
        lo, hi = group[0], group[-1]
        fam = lo.shape.family
        f[f"{name}: shapes (params)"] = ", ".join(f"d{st.shape.depth} w{st.shape.width} ({st.shape.params})" for st in group)
        for metric in TREND_METRICS:
            label = f"PGD acc @ eps {eps_name(fam.headline_eps, fam.dataset)}" if metric == "robust_acc" else metric
            f[f"{name}: {label}, d{lo.shape.depth} -> d{hi.shape.depth} (difference)"] = \
                f"{_fmt(lo.metrics[metric][0])} -> {_fmt(hi.metrics[metric][0])} ({_fmt(_diff(lo.metrics[metric], hi.metrics[metric]))})"
        for metric in ("robust_acc", "asr", "nc_auroc", "pointing_game"):
            f[f"{name}: Spearman(info per neuron, {metric}) over shapes"] = str(_spearman_samples(group, "info_per_neuron",
                                                                                                  metric))
    return f


# --- figures --------------------------------------------------------------------------------------------------------

FIGURE_METRICS = (("clean_acc", "clean accuracy"), ("robust_acc", "PGD accuracy (headline eps)"),
                  ("asr", "attack success rate"), ("nc_auroc", "Neural Cleanse AUROC"),
                  ("pointing_game", "saliency pointing game"), ("info_per_neuron", "information per neuron"))


def _err(est: Estimate) -> tuple[float, float]:
    if math.isnan(est.low):
        return 0.0, 0.0
    return max(0.0, est.value - est.low), max(0.0, est.high - est.value)


def _by_family(stats: list[ShapeStats]) -> dict[str, list[ShapeStats]]:
    out: dict[str, list[ShapeStats]] = defaultdict(list)
    for st in stats:
        out[st.shape.family.name].append(st)
    return {k: sorted(v, key=lambda st: st.shape.depth) for k, v in out.items()}


def figure_vs_depth(stats: list[ShapeStats], path: Path) -> Path:
    from ..report.plots import pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), dpi=100)
    for ax, (metric, title) in zip(axes.flat, FIGURE_METRICS):
        for i, (name, group) in enumerate(_by_family(stats).items()):
            xs = np.array([st.shape.depth for st in group]) + (i - 1) * 0.06
            ests = [st.metrics[metric][0] for st in group]
            ax.errorbar(xs, [e.value for e in ests], yerr=np.array([_err(e) for e in ests]).T, marker="o", capsize=3,
                        label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("depth (hidden layers); width shrinks to keep parameters equal", fontsize=8)
        if metric == "nc_auroc":
            ax.axhline(0.5, color="#999", lw=0.8, ls="--")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def figure_vs_information(stats: list[ShapeStats], path: Path) -> Path:
    from ..report.plots import pyplot, save

    plt = pyplot()
    metrics = [m for m in FIGURE_METRICS if m[0] != "info_per_neuron"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.6), dpi=100)
    for ax, (metric, title) in zip(axes, metrics):
        for name, group in _by_family(stats).items():
            x = [st.metrics["info_per_neuron"][0] for st in group]
            y = [st.metrics[metric][0] for st in group]
            ax.errorbar([e.value for e in x], [e.value for e in y], xerr=np.array([_err(e) for e in x]).T,
                        yerr=np.array([_err(e) for e in y]).T, marker="o", ls="", capsize=2, label=name)
            for st, xe, ye in zip(group, x, y):
                ax.annotate(f"d{st.shape.depth}", (xe.value, ye.value), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("information per neuron (effective rank / width)", fontsize=8)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def figure_pgd(stats: list[ShapeStats], path: Path) -> Path:
    from ..report.plots import pyplot, save

    plt = pyplot()
    groups = _by_family(stats)
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.6), dpi=100, squeeze=False)
    for ax, (name, group) in zip(axes[0], groups.items()):
        fam = group[0].shape.family
        for st in group:
            ests = [st.metrics[f"pgd_acc[eps={eps_name(e, fam.dataset)}]"][0] for e in fam.eps]
            ax.errorbar(np.array(fam.eps) * (255 if fam.dataset == "cifar10" else 1), [e.value for e in ests],
                        yerr=np.array([_err(e) for e in ests]).T, marker="o", capsize=2, label=st.shape.label)
        ax.set_title(f"{name}: PGD accuracy", fontsize=10)
        ax.set_xlabel("eps (x/255)" if fam.dataset == "cifar10" else "eps (pixel units)", fontsize=8)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def figure_ranks(stats: list[ShapeStats], path: Path) -> Path:
    from ..report.plots import pyplot, save

    plt = pyplot()
    groups = _by_family(stats)
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.8), dpi=100, squeeze=False)
    for ax, (name, group) in zip(axes[0], groups.items()):
        top = 1.0
        for st in group:
            w = np.array([a for a, _ in st.ranks], dtype=float)
            r = np.array([b for _, b in st.ranks])
            ax.scatter(w, r, s=12, alpha=0.6, label=st.shape.label)
            top = max(top, float(w.max()) if len(w) else 1.0)
        ax.plot([1, top], [1, top], color="#999", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{name}: effective rank vs layer width", fontsize=10)
        ax.set_xlabel("layer width (units / channels)", fontsize=8)
        ax.set_ylabel("effective rank of activations", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


# --- the study ------------------------------------------------------------------------------------------------------

def run_width_depth_study(out_dir: Path, seed: int = 0, cfg: WidthDepthConfig = WidthDepthConfig(),
                          progress: Progress | None = None) -> StudySummary:
    progress = progress or (lambda message: None)
    start = time.perf_counter()
    out_dir = Path(out_dir)
    shapes = []
    for fam in cfg.families:
        ds = load_family_data(fam)
        shapes += shapes_of(fam, data_kwargs(ds))
    progress("shapes: " + "; ".join(f"{s.family.name} {s.label} ({s.params})" for s in shapes))
    roots = build_family_zoos(shapes, cfg, seed, progress)
    results = run_shapes(shapes, cfg, seed, progress, roots)
    by_shape: dict[tuple[str, str], list[ModelResult]] = defaultdict(list)
    for r in results:
        by_shape[(r.family, r.label)].append(r)
    stats = [shape_stats(s, by_shape[(s.family.name, s.label)], cfg, seed) for s in shapes]
    rows = stats_rows(stats, results)
    fig_dir = out_dir / "figures"
    first = f"width-depth-{cfg.families[0].dataset}"
    figures = [
        (figure_vs_depth(stats, fig_dir / "width-depth-vs-depth.png"),
         ("Each metric against depth at equal parameter count, one line per dataset/family (95% CIs over seeds and "
         "images; robust accuracy at the family's headline eps)")),
        (figure_vs_information(stats, fig_dir / "width-depth-vs-information.png"),
         ("Each metric against information per neuron (mean over hidden layers of effective rank / width), one point "
         "per shape")),
        (figure_pgd(stats, fig_dir / "width-depth-pgd.png"), "PGD accuracy against the L-inf budget, one line per shape"),
        (figure_ranks(stats, fig_dir / "width-depth-ranks.png"),
         ("Effective rank of each hidden layer's activations against its width (every layer of every model; dashed: "
         "rank = width)")),
    ]
    rows += [figure_row("width-depth-study", first, path, caption, seed=seed) for path, caption in figures]
    results_path = out_dir / "results.sqlite"
    run_id = record_study(results_path, "width-depth", asdict(cfg), seed, rows)
    found = findings(stats)
    seconds = time.perf_counter() - start
    train, work = sum(r.train_seconds for r in results), sum(r.seconds for r in results)
    found["time"] = (f"{seconds:.0f}s wall ({len(results)} models; their cards' training time {train:.0f}s, which a "
                     f"reused zoo does not spend again; measuring {work:.0f}s summed over workers)")
    return StudySummary("width-depth", results_path, found, seconds, run_id)


@register_study("width-depth")
def width_depth_study(out_dir: Path, seed: int, quick: bool, progress: Progress) -> StudySummary:
    """Deep-thin vs wide-shallow at equal parameter count: robustness, trojan ASR, detection, attribution and
    information per neuron against depth."""
    return run_width_depth_study(out_dir, seed, QUICK if quick else WidthDepthConfig(), progress)
