"""Study: a subnetwork in isolation vs in context: `trojanbench study subnetworks`.

On digits (10 classes), per model, an MLP (two hidden layers) at a random initialisation theta0 (`init =
"kaiming-normal"`: Kaiming normal, zero biases) and the same network trained densely from theta0 (thetaT). The
trained networks are a zoo built by the zoo builder (`subnetworks-digits`: cards, resume, cached like the
benchmark's zoos, so a rerun measures the same models without training them again); each model's theta0 is rebuilt
from its card, whose seed seeds its initialisation. Subnetworks are edge masks M that keep a fraction `density` of
every Linear layer's weights:

- supermask@random: edge-popup (Ramanujan et al. 2020) on the frozen random weights theta0: a score per weight,
  the top-`density` scores of each layer form the mask (straight-through gradient), the scores trained by SGD;
- random-mask@random: a random mask of the same density on theta0 (the control the supermask must beat);
- supermask@trained: edge-popup over the frozen *trained* weights thetaT (a subnetwork found by search inside the
  trained network);
- magnitude@trained: the largest-|w| `density` of each layer of thetaT, *not* fine-tuned (its accuracy after a
  brief fine-tune of the surviving weights is reported apart, as `finetuned_acc`: the in-context analysis needs
  the network's own weights);
- random-mask@trained: a random mask on thetaT.

Isolation and context, on the test set (every intervention is a forward hook on the Linear layers that is always
removed; a layer's output is W_rest x + W_sub s + b with W_sub = W * M, W_rest = W * (1 - M)):

- iso_acc: the subnetwork alone (s = x, W_rest dropped): what it does on its own;
- full_acc: the whole network it lives in (s = x);
- removed_zero_acc / removed_mean_acc: the network with the subnetwork's edges removed in context (s = 0, or s =
  the mean over training images of that layer's input in the full network);
- patched_acc: the subnetwork's edges read their inputs from the isolated run (s = the layer's input when the
  subnetwork runs alone) while the rest of the network reads its own: if the subnetwork did the same job in
  context as alone, this restores full_acc.

The gap: sufficiency = iso_acc - chance (what the subnetwork does alone, above chance); necessity = full_acc -
removed_mean_acc (what the network loses in context when it is removed; `necessity_zero` with zero ablation);
gap = sufficiency - necessity (0 if the subnetwork is the network's mechanism; positive if it works alone but
the network does not rely on it). restored = (patched_acc - removed_mean_acc) / (full_acc - removed_mean_acc),
only where the full network does the task (0.5 above chance) and removal costs at least 5 points. Every number is
a mean over the zoo's models with a 95% expanded bootstrap CI over models (`stats.bootstrap_mean`).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..config import TrainConfig, ZooConfig
from ..data import load_dataset
from ..errors import UserError
from ..implant import init_model
from ..models.hooks import hooked
from ..report.html import View, figure_row, register_view
from ..results import ResultRow
from ..results.stats import Estimate, bootstrap_mean
from ..train import predict
from ..train.loop import epoch_batches, run_steps, steps_per_epoch
from ..utils import evaluating, one_thread, private_rng
from ..zoo.build import Zoo, build_zoo, cache_folder
from ..zoo.store import load_model
from . import Progress, StudySummary, record_study, register_study

MODEL_ID = "zoo:subnetworks-digits"
TASK, TASK_DENSITY = "subnetworks", "subnetworks-density"
METHODS = ("supermask@random", "random-mask@random", "supermask@trained", "magnitude@trained", "random-mask@trained")
BASELINES = {"random-mask@random", "random-mask@trained"}
MIN_REMOVAL_COST = 0.05  # `restored` only where removing the subnetwork costs at least this much accuracy
MIN_FULL_MARGIN = 0.5  # ... and where the full network does the task (this far above chance): not a random one


@dataclass(frozen=True)
class SubnetworkConfig:
    width: int = 256
    depth: int = 2
    density: float = 0.3  # the density of the in-context analysis (and of the leaderboard)
    densities: tuple[float, ...] = (0.05, 0.1, 0.3, 0.5)
    seeds: int = 5
    train_epochs: int = 30
    train_lr: float = 0.05
    popup_epochs: int = 40
    popup_lr: float = 0.1
    finetune_epochs: int = 3
    finetune_lr: float = 0.01
    batch_size: int = 128
    n_boot: int = 1000


QUICK = SubnetworkConfig(width=64, densities=(0.3,), seeds=2, train_epochs=10, popup_epochs=15, finetune_epochs=1,
                         n_boot=200)

register_view(TASK, View("Subnetworks in isolation vs in context (digits MLP; a mask keeps the same share of every "
                         "layer; gap = (alone - chance) - (full - removed); restored = share of the removal loss that "
                         "patching in the isolated run's inputs gives back)", "iso_acc", True,
                         ("iso_acc", "full_acc", "removed_mean_acc", "removed_zero_acc", "patched_acc", "gap",
                          "gap_zero", "restored", "finetuned_acc")))
register_view(TASK_DENSITY, View("Subnetworks: accuracy alone and in-context gap at every density", "iso_acc@0.3", True))


# --- masks and interventions ------------------------------------------------------------------------------------

def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def top_fraction(values: torch.Tensor, density: float) -> torch.Tensor:
    """A 0/1 mask keeping the `density` share of entries with the largest values (at least one)."""
    k = max(1, round(density * values.numel()))
    mask = torch.zeros(values.numel())
    mask[values.flatten().topk(k).indices] = 1.0
    return mask.view_as(values)


def magnitude_masks(model: nn.Module, density: float) -> dict[str, torch.Tensor]:
    return {name: top_fraction(m.weight.detach().abs(), density) for name, m in linear_layers(model).items()}


def random_masks(model: nn.Module, density: float, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: top_fraction(torch.rand(m.weight.shape, generator=g), density)
            for name, m in linear_layers(model).items()}


class _TopK(torch.autograd.Function):
    """edge-popup's mask: forward, the top-k scores of the layer; backward, the gradient passes straight through."""

    @staticmethod
    def forward(ctx, scores, density):
        return top_fraction(scores, density)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def edge_popup(model: nn.Module, x: torch.Tensor, y: torch.Tensor, density: float, *, epochs: int, lr: float,
               batch_size: int, seed: int, scale: bool) -> dict[str, torch.Tensor]:
    """A supermask of `model`'s frozen weights (biases kept as they are) by edge-popup: SGD with momentum 0.9 and
    weight decay 5e-4 on one score per weight, warm-up then linear decay. `scale` divides the kept weights by
    sqrt(density) during the search (Ramanujan et al.'s scaled init: keeps the logits' scale; for a zero-bias
    network it changes no prediction, only the loss's temperature). The model is not changed."""
    g = torch.Generator().manual_seed(seed)
    layers = linear_layers(model)
    scores = {name: (torch.rand(m.weight.shape, generator=g) * 2 - 1) * math.sqrt(6.0 / m.weight.shape[1])
              for name, m in layers.items()}
    for s in scores.values():
        s.requires_grad_(True)
    weights = {name: m.weight.detach() * (1 / math.sqrt(density) if scale else 1.0) for name, m in layers.items()}
    opt = torch.optim.SGD(list(scores.values()), lr=lr, momentum=0.9, weight_decay=5e-4)

    def loss_of(idx):
        masked = {f"{name}.weight": weights[name] * _TopK.apply(scores[name].abs(), density) for name in layers}
        return F.cross_entropy(functional_call(model, masked, (x[idx],)), y[idx])

    with evaluating(model):
        run_steps(opt, epoch_batches(len(x), batch_size, epochs, g), loss_of, lr=lr, warmup=0.1,
                  total=epochs * steps_per_epoch(len(x), batch_size))
    return {name: top_fraction(s.detach().abs(), density) for name, s in scores.items()}


@contextmanager
def edge_intervention(model: nn.Module, masks: dict[str, torch.Tensor], mode: str,
                      sources: dict[str, torch.Tensor] | None = None, record: dict[str, torch.Tensor] | None = None):
    """Within the block, every Linear layer named in `masks` computes W_rest x + W_sub s + b (W_sub = W * M):

    - mode "isolate": only the subnetwork (W_sub x + b);
    - mode "replace": the subnetwork's edges read `sources[name]` (broadcast against the layer's input x: zeros,
      a mean vector, or the inputs of an isolated run of the same batch) while the rest reads x.

    `record`, if given, collects each layer's input x (e.g. from an isolated run, to patch in later). The hooks are
    removed when the block ends, also on an exception."""
    if mode not in ("isolate", "replace"):
        raise ValueError(f"unknown intervention {mode!r}: isolate or replace")
    layers = linear_layers(model)
    unknown = set(masks) - set(layers)
    if unknown:
        raise ValueError(f"no Linear layer named {min(unknown)!r} in the model")

    def hook(name):
        def fn(module, args, output):
            x = args[0]
            if record is not None:
                record[name] = x.detach()
            m = masks[name].to(x)
            w_sub = module.weight * m
            if mode == "isolate":
                return F.linear(x, w_sub, module.bias)
            return F.linear(x, module.weight - w_sub, module.bias) + F.linear(sources[name].to(x), w_sub)
        return fn

    with hooked({layers[name]: hook(name) for name in masks}):
        yield model


def layer_inputs(model: nn.Module, x: torch.Tensor, masks: dict[str, torch.Tensor] | None = None
                 ) -> dict[str, torch.Tensor]:
    """Each Linear layer's input on `x`, in the full network or (with `masks`) with the subnetwork alone."""
    record: dict[str, torch.Tensor] = {}
    keep_all = {name: torch.ones_like(m.weight) for name, m in linear_layers(model).items()}
    with edge_intervention(model, masks if masks is not None else keep_all, "isolate", record=record):
        predict(model, x, batch_size=len(x))
    return record


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict(model, x, batch_size=len(x)) == y).float().mean())


def in_context(model: nn.Module, masks: dict[str, torch.Tensor], x_train: torch.Tensor, x: torch.Tensor,
               y: torch.Tensor, chance: float) -> dict[str, float]:
    """Accuracies of the subnetwork alone, of the full network, with the subnetwork removed (zero / mean) and with
    the isolated run patched in, plus sufficiency, necessity, the gap and the share restored."""
    with edge_intervention(model, masks, "isolate"):
        iso = accuracy(model, x, y)
    full = accuracy(model, x, y)
    means = {name: v.mean(0, keepdim=True) for name, v in layer_inputs(model, x_train).items()}
    zeros = {name: torch.zeros_like(v) for name, v in means.items()}
    with edge_intervention(model, masks, "replace", zeros):
        removed_zero = accuracy(model, x, y)
    with edge_intervention(model, masks, "replace", means):
        removed_mean = accuracy(model, x, y)
    with edge_intervention(model, masks, "replace", layer_inputs(model, x, masks)):
        patched = accuracy(model, x, y)
    cost = full - removed_mean
    return {"iso_acc": iso, "full_acc": full, "removed_zero_acc": removed_zero, "removed_mean_acc": removed_mean,
            "patched_acc": patched, "sufficiency": iso - chance, "necessity": cost, "necessity_zero": full - removed_zero,
            "gap": (iso - chance) - cost, "gap_zero": (iso - chance) - (full - removed_zero),
            "restored": (patched - removed_mean) / cost
            if cost >= MIN_REMOVAL_COST and full - chance >= MIN_FULL_MARGIN else float("nan")}


def finetune_masked(model: nn.Module, masks: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, *, epochs: int,
                    lr: float, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    """The parameters of a pruned network after a brief SGD fine-tune of what survives (pruned weights stay zero);
    the model is not changed. Returns the new parameters by name, for `functional_call`."""
    g = torch.Generator().manual_seed(seed)
    keep = {f"{name}.weight": m for name, m in masks.items()}
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    pruned = lambda: {n: p * keep[n] if n in keep else p for n, p in params.items()}
    opt = torch.optim.SGD(list(params.values()), lr=lr, momentum=0.9)
    with evaluating(model):
        run_steps(opt, epoch_batches(len(x), batch_size, epochs, g),
                  lambda idx: F.cross_entropy(functional_call(model, pruned(), (x[idx],)), y[idx]))
    return {n: p.detach() for n, p in pruned().items()}


# --- the study --------------------------------------------------------------------------------------------------

def subnetwork_zoo(cfg: SubnetworkConfig, seed: int) -> ZooConfig:
    """The study's zoo: `cfg.seeds` clean digits MLPs at the Kaiming-normal init (zero biases), trained densely;
    no split, the gate off."""
    return ZooConfig(name="subnetworks-digits", seed=seed, models_per_arch=cfg.seeds, clean_fraction=1.0,
                     test_fraction=0.0, data={"name": "digits"}, trojans={"kinds": ["patch"]},
                     archs=[{"arch": "mlp", "kwargs": {"width": cfg.width, "depth": cfg.depth,
                                                       "init": "kaiming-normal"}}],
                     train=TrainConfig(epochs=cfg.train_epochs, lr=cfg.train_lr, batch_size=64, augment=False,
                                       channels_last=False),
                     gate={"min_asr": 0.0, "max_clean_drop": 1.0, "retries": 0})


def build_models(cfg: SubnetworkConfig, seed: int, progress: Progress) -> list[tuple[int, nn.Module, nn.Module]]:
    """Build (or resume, or reuse from the cache) the study's zoo; [(model seed, theta0, thetaT)] by seed. theta0 is
    each model's initial weights, rebuilt from its card (the zoo seeds every model's init by the card's seed)."""
    zcfg = subnetwork_zoo(cfg, seed)
    root, start = cache_folder(zcfg), time.perf_counter()
    counts = build_zoo(zcfg, root, executor="batched", batch_models=cfg.seeds)
    if counts.get("failed"):
        raise UserError(f"{counts['failed']} models of the {zcfg.name} zoo failed to train; see `trojanbench zoo "
                        f"status {root}`")
    out = []
    for _job, folder, card in sorted(Zoo(root).models(), key=lambda t: t[2].seed):
        with private_rng():  # init_model seeds torch's global generator; leave it as it was
            theta0 = init_model(card.arch, card.arch_kwargs, card.seed).eval()
        out.append((card.seed, theta0, load_model(folder)[0].eval()))
    progress(f"zoo {zcfg.name}: {len(out)} models ({time.perf_counter() - start:.0f}s) in {root}")
    return out


def run_seed(cfg: SubnetworkConfig, ds, random_net: nn.Module, trained: nn.Module,
             seed: int) -> dict[tuple[str, str], float]:
    """Every measurement of one model (its init `random_net`, trained to `trained`; `seed` its zoo seed):
    {(method, metric): value}; density-sweep metrics carry `@density`."""
    chance = float(torch.bincount(ds.y_test).max()) / len(ds.y_test)
    out: dict[tuple[str, str], float] = {}
    popup = {"epochs": cfg.popup_epochs, "lr": cfg.popup_lr, "batch_size": cfg.batch_size, "seed": seed}
    for density in sorted(set(cfg.densities) | {cfg.density}):
        masks = {
            "supermask@random": edge_popup(random_net, ds.x_train, ds.y_train, density, scale=True, **popup),
            "random-mask@random": random_masks(random_net, density, seed + 1),
            "supermask@trained": edge_popup(trained, ds.x_train, ds.y_train, density, scale=False, **popup),
            "magnitude@trained": magnitude_masks(trained, density),
            "random-mask@trained": random_masks(trained, density, seed + 2),
        }
        for method, m in masks.items():
            net = random_net if method.endswith("@random") else trained
            res = in_context(net, m, ds.x_train, ds.x_test, ds.y_test, chance)
            for metric in ("iso_acc", "removed_mean_acc", "gap"):
                out[(method, f"{metric}@{density:g}")] = res[metric]
            if density == cfg.density:
                out.update({(method, k): v for k, v in res.items()})
        if density == cfg.density:
            tuned = finetune_masked(trained, masks["magnitude@trained"], ds.x_train, ds.y_train,
                                    epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, batch_size=64, seed=seed)
            pred = functional_call(trained.eval(), tuned, (ds.x_test,)).argmax(1)
            out[("magnitude@trained", "finetuned_acc")] = float((pred == ds.y_test).float().mean())
    out[("_", "chance")] = chance
    return out


def run_subnetworks_study(out_dir: Path, seed: int = 0, cfg: SubnetworkConfig = SubnetworkConfig(),
                          progress: Progress | None = None) -> StudySummary:
    progress = progress or (lambda message: None)
    if not 0 < cfg.density <= 1 or not all(0 < d <= 1 for d in cfg.densities):
        raise UserError("subnetwork densities must lie in (0, 1]: the share of each layer's weights a mask keeps")
    start = time.perf_counter()
    out_dir = Path(out_dir)
    ds = load_dataset("digits")
    per_seed: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for s, random_net, trained in build_models(cfg, seed, progress):
        for key, value in run_seed(cfg, ds, random_net, trained, s).items():
            per_seed[key][s] = value
        progress(f"model seed {s}: done ({time.perf_counter() - start:.0f}s)")
    estimates = {key: bootstrap_mean(list(v.values()), cfg.n_boot, seed) for key, v in per_seed.items()}
    rows = []
    for (method, metric), est in sorted(estimates.items()):
        if method == "_":
            continue
        task = TASK_DENSITY if "@" in metric and metric.split("@")[-1][0].isdigit() else TASK
        rows.append(ResultRow(method, MODEL_ID, task, metric, est.value, seed=seed,
                              extra={"low": est.low, "high": est.high, "n": est.n, "method": est.method,
                                     "baseline": method in BASELINES}))
        rows += [ResultRow(method, f"subnetworks-digits:seed{s}", task, metric, v, seed=s)
                 for s, v in per_seed[(method, metric)].items() if not math.isnan(v)]
    missing = Estimate(float("nan"), float("nan"), float("nan"), 0)
    est = lambda method, metric: estimates.get((method, metric), missing)
    fig_dir = out_dir / "figures"
    chance = float(np.mean(list(per_seed[("_", "chance")].values())))
    rows.append(figure_row("subnetworks-study", TASK_DENSITY, _figure_density(est, cfg, chance, fig_dir / "subnetworks-density.png"),
                           "Accuracy of each subnetwork alone (left) and the in-context gap (right) against the share "
                           "of weights kept (95% CIs over seeds; dotted: chance)", seed=seed))
    rows.append(figure_row("subnetworks-study", TASK, _figure_context(est, cfg, chance, fig_dir / "subnetworks-context.png"),
                           f"At density {cfg.density:g}: the subnetwork alone, the full network it lives in, the "
                           "network with the subnetwork removed (zero / mean), and with the isolated run's inputs "
                           "patched into the subnetwork's edges", seed=seed))
    results = out_dir / "results.sqlite"
    run_id = record_study(results, "subnetworks", asdict(cfg), seed, rows)
    findings = _findings(est, cfg, chance)
    seconds = time.perf_counter() - start
    findings["time"] = f"{seconds:.0f}s"
    return StudySummary("subnetworks", results, findings, seconds, run_id)


def _findings(est, cfg: SubnetworkConfig, chance: float) -> dict[str, str]:
    d = f"{cfg.density:g}"
    f = {"chance (majority class)": f"{chance:.3f}",
         f"supermask on random weights, alone (random mask), density {d}":
             f"{est('supermask@random', 'iso_acc')} ({est('random-mask@random', 'iso_acc')})",
         "supermask on random weights: the full random network / patched":
             f"{est('supermask@random', 'full_acc')} / {est('supermask@random', 'patched_acc')}",
         "trained network, full": str(est("magnitude@trained", "full_acc")),
         f"magnitude pruning to {d}, alone (fine-tuned {cfg.finetune_epochs} epochs)":
             f"{est('magnitude@trained', 'iso_acc')} ({est('magnitude@trained', 'finetuned_acc')})"}
    for method in ("supermask@trained", "magnitude@trained", "random-mask@trained"):
        f[f"{method}: alone / removed (mean) / patched"] = \
            f"{est(method, 'iso_acc')} / {est(method, 'removed_mean_acc')} / {est(method, 'patched_acc')}"
        f[f"{method}: gap (mean / zero ablation)"] = f"{est(method, 'gap')} / {est(method, 'gap_zero')}"
        f[f"{method}: share of the removal loss restored by patching"] = str(est(method, "restored"))
    return f


# --- figures ----------------------------------------------------------------------------------------------------

_COLORS = {"supermask@random": "#dd8452", "random-mask@random": "#bbbbbb", "supermask@trained": "#4c72b0",
           "magnitude@trained": "#55a868", "random-mask@trained": "#777777"}


def _errorbar(ax, xs, estimates: list[Estimate], **kwargs) -> None:
    vals = np.array([e.value for e in estimates])
    err = np.array([[max(0.0, e.value - e.low) if np.isfinite(e.low) else 0.0 for e in estimates],
                    [max(0.0, e.high - e.value) if np.isfinite(e.high) else 0.0 for e in estimates]])
    ax.errorbar(xs, vals, yerr=err, capsize=2, marker="o", ms=4, lw=1.3, **kwargs)


def _figure_density(est, cfg: SubnetworkConfig, chance: float, path: Path) -> Path:
    from ..report.plots import pyplot, save

    plt = pyplot()
    densities = sorted(set(cfg.densities) | {cfg.density})
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for method in METHODS:
        _errorbar(a, densities, [est(method, f"iso_acc@{d:g}") for d in densities], color=_COLORS[method], label=method,
                  ls="--" if method in BASELINES else "-")
        if method.endswith("@trained"):
            _errorbar(b, densities, [est(method, f"gap@{d:g}") for d in densities], color=_COLORS[method], label=method,
                      ls="--" if method in BASELINES else "-")
    a.axhline(chance, color="k", ls=":", lw=1)
    b.axhline(0, color="k", ls=":", lw=1)
    for ax in (a, b):
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(densities, [f"{d:g}" for d in densities])
        ax.set_xlabel("density (share of each layer's weights kept)")
    a.set_ylabel("test accuracy, subnetwork alone")
    a.set_ylim(0, 1.02)
    b.set_ylabel("gap = (alone - chance) - (full - removed)")
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def _figure_context(est, cfg: SubnetworkConfig, chance: float, path: Path) -> Path:
    from ..report.plots import pyplot, save

    plt = pyplot()
    metrics = [("iso_acc", "alone"), ("full_acc", "full network"), ("removed_zero_acc", "removed (zero)"),
               ("removed_mean_acc", "removed (mean)"), ("patched_acc", "patched")]
    colors = ["#dd8452", "#4c72b0", "#c44e52", "#8172b2", "#55a868"]
    fig, ax = plt.subplots(figsize=(10, 3.8), dpi=110)
    width = 0.8 / len(metrics)
    for i, ((metric, label), color) in enumerate(zip(metrics, colors)):
        e = [est(m, metric) for m in METHODS]
        xs = np.arange(len(METHODS)) + (i - (len(metrics) - 1) / 2) * width
        err = np.array([[max(0.0, x.value - x.low) if np.isfinite(x.low) else 0.0 for x in e],
                        [max(0.0, x.high - x.value) if np.isfinite(x.high) else 0.0 for x in e]])
        ax.bar(xs, np.nan_to_num([x.value for x in e]), width, yerr=err, capsize=2, color=color, label=label)
    ax.axhline(chance, color="k", ls=":", lw=1)
    ax.set_xticks(np.arange(len(METHODS)), METHODS, fontsize=8)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"density {cfg.density:g}", fontsize=9)
    ax.legend(fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    return save(fig, path)


@register_study("subnetworks")
def subnetworks_study(out_dir: Path, seed: int, quick: bool, progress: Progress) -> StudySummary:
    """Edge-popup supermasks vs random masks vs magnitude pruning on a digits MLP; each subnetwork alone and in
    context (removed, mean-ablated, patched from its isolated run)."""
    with one_thread():
        return run_subnetworks_study(out_dir, seed, QUICK if quick else SubnetworkConfig(), progress)
