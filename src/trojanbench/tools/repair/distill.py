"""Distillation: knowledge distillation into a half-width student, self-distillation into a fresh model of
the same architecture, and neural attention distillation (NAD).

The students of KD and self-distillation never see a trigger and never start from the trojaned weights:
they learn only the teacher's soft labels on strongly augmented views (and mixtures) of the clean budget.
NAD keeps the trojaned weights and pulls their intermediate attention maps toward a fine-tuned teacher's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...models import build_model
from . import RepairContext, Repairer, fit, register, steps_for, strong_augment, working_copy
from .finetune import FineTune


def _mix(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mixup between images of the batch with a uniform weight (the teacher labels the mixture, so no label
    is needed)."""
    lam = torch.rand(len(x), generator=g).to(x).view(-1, 1, 1, 1)
    perm = torch.randperm(len(x), generator=g).to(x.device)
    return lam * x + (1 - lam) * x[perm]


def distill_into(student: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RepairContext, *,
                 steps: int, lr: float, temperature: float, hard_weight: float, mixup: bool,
                 batch_size: int = 64) -> nn.Module:
    """Train `student` on the teacher's softened outputs (KL at `temperature`, scaled by T^2) plus
    `hard_weight` x cross-entropy on the true labels of the unmixed views."""
    teacher = teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    t = temperature

    def views(xb, g):
        v = strong_augment(xb, ctx, g)
        return torch.cat([v, _mix(v, g)]) if mixup else v

    def loss(m, xb, yb):
        with torch.no_grad():
            soft = F.softmax(teacher(xb) / t, 1)
        out = m(xb)
        kd = F.kl_div(F.log_softmax(out / t, 1), soft, reduction="batchmean") * t * t
        if hard_weight > 0:
            kd = kd + hard_weight * F.cross_entropy(out[:len(yb)], yb)
        return kd

    return fit(student, x, y, ctx, steps=steps, lr=lr, batch_size=batch_size, loss=loss, views=views)


class _Distill(Repairer):
    width_factor = 1.0

    def __init__(self, steps: int = 250, lr: float = 0.05, temperature: float = 4.0, hard_weight: float = 0.5,
                 mixup: bool = True):
        self.steps, self.lr, self.t, self.hard, self.mixup = steps, lr, temperature, hard_weight, mixup

    def student(self, ctx: RepairContext) -> nn.Module:
        kwargs = dict(ctx.arch_kwargs)
        if self.width_factor != 1.0:
            if "width" not in kwargs:
                kwargs["width"] = _default_width(ctx.arch)
            kwargs["width"] = max(1, int(kwargs["width"] * self.width_factor)) if isinstance(kwargs["width"], int) \
                else kwargs["width"] * self.width_factor
        torch.manual_seed(ctx.seed)
        return build_model(ctx.arch, **kwargs)

    def repair(self, model, x_clean, y_clean, ctx):
        teacher = working_copy(model, ctx)
        s = self.student(ctx).to(ctx.device)
        if hasattr(s, "init_from_data"):
            s.init_from_data(x_clean)
        return distill_into(s, teacher, x_clean, y_clean, ctx, steps=self.steps, lr=self.lr, temperature=self.t,
                            hard_weight=self.hard, mixup=self.mixup)


def _default_width(arch: str):
    import inspect

    from ...models import MODELS

    p = inspect.signature(MODELS.get(arch)).parameters.get("width")
    if p is None or p.default is inspect.Parameter.empty:
        raise ValueError(f"architecture {arch!r} has no width to halve for a smaller student")
    return p.default


@register("self-distill")
class SelfDistill(_Distill):
    """Same architecture, fresh initialisation, the trojaned model's soft labels on the clean budget only."""


@register("kd-student")
class KDStudent(_Distill):
    """Knowledge distillation into a student of the same family at half the width."""

    width_factor = 0.5


def _attention(a: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """NAD's attention map: channel mean of |activation|^p, flattened and L2-normalised per sample."""
    return F.normalize(a.abs().pow(p).mean(1).flatten(1), dim=1)


def attention_layers(model: nn.Module, x: torch.Tensor, k: int = 3) -> list[nn.Module]:
    """The last `k` ReLU-like modules whose outputs are feature maps ([N, C, H, W]): found by one probe
    forward with hooks that are always removed."""
    seen: list[nn.Module] = []
    handles = [m.register_forward_hook(lambda mod, inp, out: seen.append(mod) if out.dim() == 4 else None)
               for m in model.modules() if isinstance(m, (nn.ReLU, nn.GELU, nn.SiLU))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x[:2])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    unique = list(dict.fromkeys(seen))
    return unique[-k:]


@register("nad")
class NAD(Repairer):
    """Neural attention distillation (Li et al., 2021): fine-tune a teacher on the clean budget, then train
    the trojaned model with cross-entropy plus `beta` x the distance between its attention maps and the
    teacher's at the last `layers` feature-map activations."""

    def __init__(self, teacher_epochs: int = 20, epochs: int = 30, lr: float = 0.01, beta: float = 50.0,
                 layers: int = 3):
        self.teacher_epochs, self.epochs, self.lr, self.beta, self.layers = teacher_epochs, epochs, lr, beta, layers

    def repair(self, model, x_clean, y_clean, ctx):
        teacher = FineTune(epochs=self.teacher_epochs).repair(model, x_clean, y_clean, ctx)
        for p in teacher.parameters():
            p.requires_grad_(False)
        student = working_copy(model, ctx)
        s_layers = attention_layers(student, x_clean.to(ctx.device), self.layers)
        t_layers = attention_layers(teacher, x_clean.to(ctx.device), self.layers)
        s_maps: list[torch.Tensor] = []
        t_maps: list[torch.Tensor] = []
        handles = [m.register_forward_hook(lambda mod, inp, out: s_maps.append(out)) for m in s_layers] + \
                  [m.register_forward_hook(lambda mod, inp, out: t_maps.append(out)) for m in t_layers]

        def loss(m, xb, yb):
            s_maps.clear()
            t_maps.clear()
            with torch.no_grad():
                teacher(xb)
            ce = F.cross_entropy(m(xb), yb)
            at = sum((_attention(s) - _attention(t)).pow(2).sum(1).mean() for s, t in zip(s_maps, t_maps))
            return ce + self.beta * at

        try:
            steps = steps_for(len(x_clean), self.epochs, min_steps=60)
            return fit(student, x_clean, y_clean, ctx, steps=steps, lr=self.lr, loss=loss, seed_offset=1)
        finally:
            for h in handles:
                h.remove()
