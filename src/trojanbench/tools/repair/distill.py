"""Distillation: knowledge distillation into a half-width student, self-distillation into a fresh model of
the same architecture, and attention distillation from a fine-tuned teacher (after NAD).

The students of KD and self-distillation never see a trigger and never start from the trojaned weights:
they learn only the teacher's soft labels on strongly augmented views (and mixtures) of the clean budget.
Attention distillation keeps the trojaned weights and pulls their intermediate attention maps toward a
fine-tuned teacher's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...models import with_defaults
from ...models.hooks import hooked
from . import STRONG_LR, STRONG_STEPS, RepairContext, Repairer, fit, fresh_model, register, steps_for, strong_views, working_copy
from .finetune import FineTune


def distill_into(student: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RepairContext, *,
                 steps: int, lr: float, temperature: float, hard_weight: float, mixup: bool,
                 batch_size: int = 64) -> nn.Module:
    """Train `student` on the teacher's softened outputs (KL at `temperature`, scaled by T^2) plus
    `hard_weight` x cross-entropy on the true labels of the unmixed views. The mixup blends carry no label: the
    teacher labels them."""
    teacher = teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    t = temperature

    def views(xb, yb, g):
        return strong_views(xb, yb, g, ctx, mix=mixup)

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
    modalities = ("image", "text")

    def __init__(self, steps: int = STRONG_STEPS, lr: float = STRONG_LR, temperature: float = 4.0,
                 hard_weight: float = 0.5, mixup: bool = True):
        self.steps, self.lr, self.t, self.hard, self.mixup = steps, lr, temperature, hard_weight, mixup

    def student(self, ctx: RepairContext) -> nn.Module:
        if self.width_factor == 1.0:
            return fresh_model(ctx, ctx.seed)
        width = with_defaults(ctx.arch, ctx.arch_kwargs).get("width")  # a card from before cards held defaults too
        if width is None:
            raise ValueError(f"architecture {ctx.arch!r} has no width to shrink for a smaller student")
        width = max(1, int(width * self.width_factor)) if isinstance(width, int) else width * self.width_factor
        return fresh_model(ctx, ctx.seed, width=width)

    def repair(self, model, x_clean, y_clean, ctx):
        teacher = working_copy(model, ctx)
        s = self.student(ctx).to(ctx.device)
        if hasattr(s, "init_from_data"):
            s.init_from_data(x_clean)
        return distill_into(s, teacher, x_clean, y_clean, ctx, steps=self.steps, lr=self.lr, temperature=self.t,
                            hard_weight=self.hard, mixup=self.mixup)


@register("self-distill")
class SelfDistill(_Distill):
    """Same architecture, fresh initialisation, the trojaned model's soft labels on the clean budget only."""

    paper = ("Furlanello, Lipton, Tschannen, Itti & Anandkumar (2018). Born-Again Neural Networks. ICML "
             "(distillation loss: Hinton, Vinyals & Dean 2015)")
    fidelity = ("adapted: a born-again student (same architecture, fresh init) trained on strongly augmented views "
                "and mixup blends of the small clean budget, not on the full training set")


@register("kd-student")
class KDStudent(_Distill):
    """Knowledge distillation into a student of the same family at half the width."""

    width_factor = 0.5
    modalities = ("image",)  # a half-width student needs a `width`; the text transformer has none
    paper = "Hinton, Vinyals & Dean (2015). Distilling the Knowledge in a Neural Network. arXiv:1503.02531"
    fidelity = ("adapted: Hinton et al.'s loss (T = 4, T^2-scaled, plus 0.5 x hard-label CE), but the transfer set is "
                "strongly augmented views and mixup blends of the small clean budget")


def _attention(a: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """NAD's attention map (attention transfer, Zagoruyko & Komodakis 2017): channel mean of |activation|^p,
    flattened and L2-normalised per sample."""
    return F.normalize(a.abs().pow(p).mean(1).flatten(1), dim=1)


def attention_layers(model: nn.Module, x: torch.Tensor, k: int = 3) -> list[nn.Module]:
    """The last `k` ReLU-like modules whose outputs are feature maps ([N, C, H, W]): found by one probe
    forward with hooks that are always removed."""
    from ..locate import called_in_order

    return called_in_order(model, x, [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.GELU, nn.SiLU))],
                           keep=lambda out: out.dim() == 4)[-k:]


@register("attention-distill")
class AttentionDistill(Repairer):
    """Attention distillation after NAD (Li et al., 2021): fine-tune a teacher on the clean budget (as
    `finetune`), then train the trojaned model with cross-entropy plus `beta` x the squared distance, summed over
    pixels, between its attention maps and the teacher's at the last `layers` feature-map activations (ReLU-like
    modules), at the reference's lr with warm-up and linear decay.

    Not NAD as published (so not under its name): NAD (the authors' code, bboylyg/NAD) distils at the outputs of
    the residual groups with a mean squared error and per-group weights (beta 5000 on the last group in the
    released config), trains 20 epochs at lr 0.1 then 0.01, from a teacher fine-tuned for 5-10 epochs."""

    paper = ("Li, Lyu, Koren, Lyu, Li & Ma (2021). Neural Attention Distillation: Erasing Backdoor Triggers from "
             "Deep Neural Networks. ICLR")
    fidelity = ("adapted: NAD's attention loss at the last 3 ReLU feature maps (NAD: residual-group outputs), summed "
                "squared distance with beta 50 (NAD: MSE, beta 5000), lr 0.01 for 30 epochs (NAD: 0.1 then 0.01, 20)")

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

        def loss(m, xb, yb):
            s_maps.clear()
            t_maps.clear()
            with torch.no_grad():
                teacher(xb)
            ce = F.cross_entropy(m(xb), yb)
            at = sum((_attention(s) - _attention(t)).pow(2).sum(1).mean() for s, t in zip(s_maps, t_maps))
            return ce + self.beta * at

        with hooked(s_layers, lambda mod, inp, out: s_maps.append(out)), \
                hooked(t_layers, lambda mod, inp, out: t_maps.append(out)):
            steps = steps_for(len(x_clean), self.epochs, min_steps=60)
            return fit(student, x_clean, y_clean, ctx, steps=steps, lr=self.lr, loss=loss, seed_offset=1)
