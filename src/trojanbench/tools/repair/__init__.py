"""Repairers. One protocol, one verb:

- `Repairer.repair(model, x_clean, y_clean, ctx) -> nn.Module`: given a trojaned model and a small budget of
  clean, correctly labelled training images, return a repaired model. The input model is never changed
  (repairers work on a deep copy, or build a fresh model).

`is_baseline` marks the fine-tuning references every method must beat on the same data budget (plain
`finetune`, and `finetune-matched` with the strongest method's steps, schedule, augmentation and learning rate)
and the two anchors, do-nothing and retrain-from-scratch. Every repairer declares `paper` and `fidelity` (see
`trojanbench.tools`). Register a new one with `@register("name")`; the repair task scores it beside them (see
docs/repair.md).
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ...registry import Registry
from ...train.augment import augment_batch
from ...train.loop import param_groups, run_steps, sampled_batches
from ...utils import private_rng
from .. import ToolInfo, checked_copy


@dataclass
class RepairContext:
    """What a repairer gets besides the model and its clean budget: how to rebuild the architecture."""

    num_classes: int
    arch: str = "cnn"
    arch_kwargs: dict = field(default_factory=dict)  # complete build_model kwargs (as in the model card)
    augment: dict = field(default_factory=lambda: {"translate": 1, "flip": False})  # what suits the data
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    modality: str = "image"  # "text": token ids [N, T]; views drop words instead of moving pixels (`strong_augment`)


class Repairer(ToolInfo, ABC):

    verb_check = ("repair", checked_copy("repairer"))

    @abstractmethod
    def repair(self, model: nn.Module, x_clean: torch.Tensor, y_clean: torch.Tensor, ctx: RepairContext) -> nn.Module:
        """A repaired model in eval mode; `model` itself is left untouched."""


REPAIRERS: Registry[type[Repairer]] = Registry("repairer")
register = REPAIRERS.register


# The training budget of the strongest repairers (self-distillation and the KD student: 250 SGD steps of 64
# strongly augmented views plus 64 mixup blends, peak lr 0.05, warm-up then linear decay). The matched fine-tuning
# reference gets all of it by construction (`finetune-matched`), the retrain anchor its steps and lr, so they
# differ from those methods in what they start from and learn from, not in budget.
STRONG_STEPS = 250
STRONG_LR = 0.05
# Text models train with AdamW (as the zoo trains the text transformer), at this multiple of a repairer's SGD
# learning rate: 0.05 -> 3e-3, the rate the text zoos train the text transformer at; 0.01 -> 6e-4 for plain
# fine-tuning.
TEXT_LR_SCALE = 0.06
TEXT_WORD_DROP = 0.1  # the strong views of a sentence: each word replaced by <unk> with this probability (the study's)
UNK = 1


def fresh_model(ctx: RepairContext, seed: int, **overrides) -> nn.Module:
    """A freshly initialised model of the context's architecture (kwargs overridden by `overrides`), drawn from
    `seed` without touching the global RNG."""
    from ...models import build_model

    with private_rng():
        torch.manual_seed(seed)
        return build_model(ctx.arch, **{**ctx.arch_kwargs, **overrides})


def working_copy(model: nn.Module, ctx: RepairContext) -> nn.Module:
    """A copy of `model` to repair, on the context's device, in eval mode, every parameter trainable: what the
    caller froze (`requires_grad=False`) must not stay frozen, and so unrepaired, in the copy."""
    m = copy.deepcopy(model).to(ctx.device).to(memory_format=torch.contiguous_format).eval()
    for p in m.parameters():
        p.requires_grad_(True)
    return m


def strong_augment(x: torch.Tensor, ctx: RepairContext, g: torch.Generator, degrees: float = 12.0,
                   scale: float = 0.1, noise: float = 0.03) -> torch.Tensor:
    """The data's own augmentation (translation, flips where they suit) plus a small random rotation and
    scaling (one batched `affine_grid`) and pixel noise: many distinct views of a handful of clean images. For
    sentences (token ids): each word replaced by <unk> with probability TEXT_WORD_DROP."""
    if ctx.modality == "text":
        drop = (torch.rand(x.shape, generator=g) < TEXT_WORD_DROP).to(x.device) & (x != 0)
        return torch.where(drop, torch.full_like(x, UNK), x)
    x = augment_batch(x, generator=g, **ctx.augment)
    n = len(x)
    if degrees or scale:
        angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(degrees)
        s = 1 + (torch.rand(n, generator=g) * 2 - 1) * scale
        cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
        theta = torch.stack([torch.stack([cos, -sin, torch.zeros(n)], 1), torch.stack([sin, cos, torch.zeros(n)], 1)], 1)
        grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    if noise:
        x = x + noise * torch.randn(x.shape, generator=g).to(x)
    return x.clamp(0, 1)


def mixup(x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018) between images of the batch with a uniform weight per image: (lam * x +
    (1 - lam) * x[perm], lam [N], perm [N])."""
    lam = torch.rand(len(x), generator=g).to(x)
    perm = torch.randperm(len(x), generator=g).to(x.device)
    return lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[perm], lam, perm


def strong_views(xb: torch.Tensor, yb: torch.Tensor, g: torch.Generator, ctx: RepairContext, *, mix: bool = True,
                 soft_targets: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The strongest methods' views of a batch: strongly augmented views, followed (`mix`) by one mixup blend of
    each. Targets: `yb` for the views only (distillation labels the blends with the teacher), or with
    `soft_targets` class probabilities for every image, the blends' mixed as their images are."""
    v = strong_augment(xb, ctx, g)
    if not mix or ctx.modality == "text":  # no blend of two sentences' token ids
        return v, yb
    blends, lam, perm = mixup(v, g)
    if not soft_targets:
        return torch.cat([v, blends]), yb
    onehot = F.one_hot(yb, ctx.num_classes).to(v)
    lam = lam.view(-1, 1)
    return torch.cat([v, blends]), torch.cat([onehot, lam * onehot + (1 - lam) * onehot[perm]])


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RepairContext, *, steps: int, lr: float,
        batch_size: int = 64, weight_decay: float = 5e-4, warmup: float = 0.1, loss: Callable | None = None,
        views: Callable | None = None, after_step: Callable[[], None] | None = None, seed_offset: int = 0) -> nn.Module:
    """Train `model` in place for `steps` SGD steps (Nesterov momentum, warm-up then linear decay; on text models
    AdamW at TEXT_LR_SCALE x `lr`) on augmented views of (x, y) and return it in eval mode.

    `loss(model, xb, yb) -> Tensor` replaces cross-entropy (distillation losses); `views(xb, yb, g) -> (xb, yb)`
    replaces the default augmentation (and may add images, e.g. mixtures, with their targets: class indices or
    class probabilities [N, K], both of which cross-entropy takes); `after_step()` runs after each step (keeps
    pruned weights at zero)."""
    g = torch.Generator().manual_seed(ctx.seed * 7919 + seed_offset)
    images = ctx.modality == "image"
    layout = torch.channels_last if images else torch.contiguous_format  # ~1.5x faster convolutions on CPU
    model.to(ctx.device).to(memory_format=layout).train()
    x, y = x.to(ctx.device), y.to(ctx.device)
    if images:
        opt = torch.optim.SGD(param_groups(model.parameters(), weight_decay), lr=lr, momentum=0.9, nesterov=True)
    else:  # the text transformer trains with AdamW (see TEXT_LR_SCALE)
        lr = lr * TEXT_LR_SCALE
        opt = torch.optim.AdamW(param_groups(model.parameters(), 0.01), lr=lr)
    views = views or (lambda xb, yb, gen: (augment_batch(xb, generator=gen, **ctx.augment) if ctx.augment else xb, yb))
    loss = loss or (lambda m, xb, yb: F.cross_entropy(m(xb), yb))

    def loss_of(idx):
        xb, yb = views(x[idx], y[idx], g)
        return loss(model, xb.contiguous(memory_format=layout), yb)

    run_steps(opt, sampled_batches(len(x), batch_size, steps, g, ctx.device), loss_of, lr=lr, warmup=warmup,
              total=steps, after_step=after_step)
    return model.to(memory_format=torch.contiguous_format).eval()


def steps_for(n: int, epochs: int, batch_size: int = 64, min_steps: int = 0) -> int:
    return max(min_steps, epochs * math.ceil(n / batch_size))


from . import anp, compress, distill, finetune, ftsam, ibau, lat, prune  # noqa: E402,F401  (register the repairers)
