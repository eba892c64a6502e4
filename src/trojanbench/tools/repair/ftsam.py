"""FT-SAM: fine-tuning with (adaptive) sharpness-aware minimisation (Zhu, Wei, Shen, Fan & Wu, ICCV 2023).

The paper's observation: in a backdoored model the backdoor-related neurons have large weight norms, and vanilla
fine-tuning on a small clean set barely moves them. Sharpness-aware minimisation with an adaptive (ASAM-style,
Kwon et al. 2021) perturbation, whose size is scaled by each weight's magnitude, perturbs exactly those large
weights most, and minimising the loss at the perturbed point shrinks them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ...errors import UserError
from . import STRONG_LR, STRONG_STEPS, Repairer, fit, register, strong_views, working_copy


def sam_loss(model: torch.nn.Module, xb: torch.Tensor, yb: torch.Tensor, *, rho: float, adaptive: bool = True,
             eps: float = 1e-12) -> torch.Tensor:
    """The loss at the sharpness-aware point w + e(w), differentiable with respect to the weights w, which stay
    where they are: one forward/backward at w gives g = grad L(w); the ascent step is
    e = rho T_w^2 g / ||T_w g|| (the solution of max L(w + e) over ||T_w^-1 e|| <= rho to first order), with
    T_w = diag(|w|) when `adaptive` (ASAM, as FT-SAM) or the identity (SAM); the returned loss is evaluated by a
    functional call at w + e with e held constant, so its gradient with respect to w is grad L(w + e) and the
    optimiser steps from w. BatchNorm running statistics move with the first pass only (the second runs on
    copies of the buffers), as SAM implementations disable them for the perturbed pass."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    loss = F.cross_entropy(model(xb), yb)
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    with torch.no_grad():
        scaled = [g * p.abs() if adaptive else g for p, g in zip(params.values(), grads) if g is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s) for s in scaled])) if scaled else 0.0
        steps = {}
        for (n, p), g in zip(params.items(), grads):
            if g is not None:
                steps[n] = rho * (g * p.square() if adaptive else g) / (norm + eps)
    perturbed = {n: p + steps[n] if n in steps else p for n, p in params.items()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    return F.cross_entropy(functional_call(model, {**perturbed, **buffers}, (xb,)), yb)


@register("ft-sam")
class FineTuneSAM(Repairer):
    """FT-SAM (Zhu et al., ICCV 2023): fine-tune every weight of the trojaned model on the clean budget
    with sharpness-aware minimisation; the inner maximisation is adaptive (ASAM: the perturbation of each weight
    scales with its magnitude, so neurons with large norms, the backdoor-related ones, are pushed hardest), radius
    `rho` (2, the authors' CIFAR-10 setting in BackdoorBench; 8 for GTSRB and Tiny-ImageNet). Every step takes two
    forward/backward passes: the ascent at w, then the gradient at w + e(w), applied at w.

    The budget is `finetune-matched`'s, so the two differ only in the sharpness-aware step: 250 SGD steps at peak
    lr 0.05 with warm-up and linear decay, on the same strongly augmented views and mixup blends of the same
    clean budget (same generator, so the same batches)."""

    modalities = ("image", "text")
    paper = ("Zhu, Wei, Shen, Fan & Wu (2023). Enhancing Fine-Tuning Based Backdoor Defense with Sharpness-Aware "
             "Minimization. ICCV (adaptive perturbation: Kwon et al. 2021, ASAM)")
    fidelity = ("adapted: the paper's adaptive sharpness-aware step (e = rho |w|^2 g / || |w| g ||, rho 2, BatchNorm "
                "statistics frozen in the perturbed pass), but with finetune-matched's budget: 250 steps at peak lr 0.05 "
                "with warm-up and linear decay, strong augmentation and mixup, weight decay on weight matrices only "
                "(paper / BackdoorBench: 100 epochs on a 5% clean split, lr 0.01 cosine, batch 256, label smoothing 0.1)")

    def __init__(self, rho: float = 2.0, adaptive: bool = True, steps: int = STRONG_STEPS, lr: float = STRONG_LR,
                 mixup: bool = True):
        if rho < 0:
            raise UserError(f"FT-SAM needs rho >= 0, got {rho}")
        self.rho, self.adaptive, self.steps, self.lr, self.mixup = rho, adaptive, steps, lr, mixup

    def repair(self, model, x_clean, y_clean, ctx):
        m = working_copy(model, ctx)
        return fit(m, x_clean, y_clean, ctx, steps=self.steps, lr=self.lr,
                   loss=lambda net, xb, yb: sam_loss(net, xb, yb, rho=self.rho, adaptive=self.adaptive),
                   views=lambda xb, yb, g: strong_views(xb, yb, g, ctx, mix=self.mixup, soft_targets=True))
