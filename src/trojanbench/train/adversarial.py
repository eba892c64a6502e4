"""Adversarial robustness: untargeted L-inf PGD (Madry et al. 2018) and accuracy under it.

Images live in [0, 1] (every model normalises inside), so eps is in pixel units: 8/255 on CIFAR-10 is the
usual budget. PGD starts from a uniform random point in the eps-ball, takes `steps` signed-gradient steps of
`rel_step * eps` on the cross-entropy of the true label, and projects back onto the ball and [0, 1] after each.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..utils import evaluating, frozen


def pgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor, *, steps: int = 10,
               rel_step: float = 0.25, random_start: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Adversarial copies of `x` [N, C, H, W] within `eps` (a float, or one budget per image [N]) in L-inf.
    The model is used in eval mode with its parameters frozen; its train()/requires_grad state is restored."""
    device = x.device
    eps_t = torch.as_tensor(eps, dtype=x.dtype, device=device).reshape(-1, *([1] * (x.dim() - 1)))
    step = rel_step * eps_t
    with frozen(model):
        if random_start:
            noise = torch.rand(x.shape, generator=generator).to(device) * 2 - 1
            x_adv = (x + noise * eps_t).clamp(0, 1)
        else:
            x_adv = x.clone()
        for _ in range(steps):
            x_adv.requires_grad_(True)
            # summed, not averaged: each image's step depends only on its own sign, not on the batch size
            loss = F.cross_entropy(model(x_adv), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + step * grad.sign()
            x_adv = torch.minimum(torch.maximum(x_adv, x - eps_t), x + eps_t).clamp(0, 1)
    return x_adv.detach()


def robust_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_grid: Sequence[float], *, steps: int = 10,
                   rel_step: float = 0.25, batch_size: int = 512, seed: int = 0) -> dict[float, np.ndarray]:
    """Per image and budget, 1.0 if the model gives the true label both unattacked and under PGD at that eps
    (eps = 0: the plain prediction, so its mean is the clean accuracy). All budgets of a batch go through one
    attack call."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    out: dict[float, list[np.ndarray]] = {float(e): [] for e in eps_grid}
    budgets = [float(e) for e in eps_grid if e > 0]
    per = max(1, batch_size // max(1, len(budgets)))
    for i in range(0, len(x), per):
        xb, yb = x[i:i + per].to(device), y[i:i + per].to(device)
        with evaluating(model), torch.no_grad():
            clean = (model(xb).argmax(1) == yb).float().cpu().numpy()
        for e in eps_grid:
            if e <= 0:
                out[float(e)].append(clean)
        if budgets:
            eps = torch.tensor(budgets, dtype=xb.dtype, device=device).repeat_interleave(len(xb))
            xs, ys = xb.repeat(len(budgets), *([1] * (xb.dim() - 1))), yb.repeat(len(budgets))
            adv = pgd_attack(model, xs, ys, eps, steps=steps, rel_step=rel_step, generator=g)
            with evaluating(model), torch.no_grad():
                hit = (model(adv).argmax(1) == ys).float().cpu().numpy().reshape(len(budgets), len(xb))
            for j, e in enumerate(budgets):
                out[e].append(hit[j] * clean)  # an image the model gets wrong unattacked is not robust
    return {e: np.concatenate(v) if v else np.zeros(0) for e, v in out.items()}
