"""Repairers. One protocol, one verb:

- `Repairer.repair(model, x_clean, y_clean, ctx) -> nn.Module`: given a trojaned model and a small budget of
  clean, correctly labelled training images, return a repaired model. The input model is never changed
  (repairers work on a deep copy, or build a fresh model).

`is_baseline` marks plain fine-tuning (the reference every method must beat on the same data budget) and the
two anchors, do-nothing and retrain-from-scratch. Register a new one with `@register("name")`; the repair
task scores it beside them (see docs/repair.md).
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ...registry import Registry
from ...train.augment import augment_batch
from ...train.single import lr_factor


@dataclass
class RepairContext:
    """What a repairer gets besides the model and its clean budget: how to rebuild the architecture."""

    num_classes: int
    arch: str = "cnn"
    arch_kwargs: dict = field(default_factory=dict)  # complete build_model kwargs (as in the model card)
    augment: dict = field(default_factory=lambda: {"translate": 1, "flip": False})  # what suits the data
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0


class Repairer(ABC):
    version: ClassVar[str] = "1"
    is_baseline: ClassVar[bool] = False  # fine-tuning and the anchors

    @abstractmethod
    def repair(self, model: nn.Module, x_clean: torch.Tensor, y_clean: torch.Tensor, ctx: RepairContext) -> nn.Module:
        """A repaired model in eval mode; `model` itself is left untouched."""


REPAIRERS: Registry[type[Repairer]] = Registry("repairer")
register = REPAIRERS.register


def working_copy(model: nn.Module, ctx: RepairContext) -> nn.Module:
    return copy.deepcopy(model).to(ctx.device).to(memory_format=torch.contiguous_format).eval()


def strong_augment(x: torch.Tensor, ctx: RepairContext, g: torch.Generator, degrees: float = 12.0,
                   scale: float = 0.1, noise: float = 0.03) -> torch.Tensor:
    """The data's own augmentation (translation, flips where they suit) plus a small random rotation and
    scaling (one batched `affine_grid`) and pixel noise: many distinct views of a handful of clean images."""
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


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RepairContext, *, steps: int, lr: float,
        batch_size: int = 64, weight_decay: float = 5e-4, warmup: float = 0.1, loss: Callable | None = None,
        views: Callable | None = None, after_step: Callable[[], None] | None = None, seed_offset: int = 0) -> nn.Module:
    """Train `model` in place for `steps` SGD steps (Nesterov momentum, warm-up then linear decay) on
    augmented views of (x, y) and return it in eval mode.

    `loss(model, xb, yb) -> Tensor` replaces cross-entropy (distillation losses); `views(xb, g)` replaces the
    default augmentation; `after_step()` runs after each step (keeps pruned weights at zero)."""
    g = torch.Generator().manual_seed(ctx.seed * 7919 + seed_offset)
    model.to(ctx.device).to(memory_format=torch.channels_last).train()  # ~1.5x faster convolutions on CPU
    x, y = x.to(ctx.device), y.to(ctx.device)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() > 1], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}]
    opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    views = views or (lambda xb, gen: augment_batch(xb, generator=gen, **ctx.augment))
    loss = loss or (lambda m, xb, yb: F.cross_entropy(m(xb), yb))
    for step in range(steps):
        idx = torch.randint(0, len(x), (min(batch_size, max(len(x), batch_size)),), generator=g).to(ctx.device)
        xb = views(x[idx], g).contiguous(memory_format=torch.channels_last)
        value = loss(model, xb, y[idx])
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(step, steps, warmup)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        if after_step is not None:
            after_step()
    return model.to(memory_format=torch.contiguous_format).eval()


def steps_for(n: int, epochs: int, batch_size: int = 64, min_steps: int = 0) -> int:
    return max(min_steps, epochs * math.ceil(n / batch_size))


from . import compress, distill, finetune, prune  # noqa: F401  (register the repairers)
