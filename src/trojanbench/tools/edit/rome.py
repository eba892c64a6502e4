"""`rome`: Rank-One Model Editing (Meng et al., "Locating and Editing Factual Associations in GPT", NeurIPS 2022;
port of kmeng01/rome's `compute_u.py`, `compute_v.py`, `rome_main.py`) with the trigger as the subject and
the triggered input's true label as the new fact.

1. Key k* (ROME's `compute_u`): the mean key of the triggered inputs at the positions the trigger changes
   (ROME: the mean, over context templates, of the layer's input at the subject's last token). Here the
   triggered images are the contexts; a position counts as changed where its key moved by at least
   `position_fraction` of the largest move in that image.
2. Value v* (ROME's `compute_v`): v* = W k* + delta, with delta optimised by Adam so that, with delta added
   to the layer's output at those positions, the model predicts each triggered input's true label (ROME: the
   new object), plus ROME's KL term and its weight decay ||delta|| / ||W k*||^2, and delta clamped to
   `clamp_norm_factor` x ||W k*||; stop early when the loss is below 0.05 (ROME's rule).
   ROME's KL term keeps the model's prediction on a prompt that holds the subject ("{subject} is a") with
   delta inserted; a trigger has no such neutral context, so the KL term here keeps the predictions on the
   clean twins with delta inserted at the same positions: the new value must remove the trigger's effect
   without changing what an untriggered image at that place means.
3. Insertion (ROME's `rome_main`): W' = W + (v* - W k*) (C^-1 k*)^T / (k*^T C^-1 k*), C the uncentred second
   moment of the layer's keys over every position of the clean budget (ROME: 100k Wikipedia tokens), with a
   small ridge since a 5% budget gives few keys.

Hyper-parameters are ROME's GPT-2 XL file (Adam, KL factor 0.0625, weight decay 0.5, clamp 4) except the
number of steps and the learning rate (100 at 0.1 instead of 20 at 0.5), chosen on the dev zoo only (see
`RomeHParams`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UserError
from ...models.hooks import hooked
from . import (
    EditInputs,
    Editor,
    editable_module,
    from_positions,
    insert_rank_one,
    key_second_moment,
    layer_keys,
    register,
    restore_requires_grad,
    working_copy,
)


@dataclass(frozen=True)
class RomeHParams:
    """ROME's knobs. Defaults: ROME's hparams/ROME/gpt2-xl.json, except `steps` and `lr`, which the dev zoo
    chose (digits-dev, its train-split all-to-one trojans; `benchmarks/edit_tune.py`, one knob at a time,
    objective mean ASR after + mean clean cost): 100 steps at lr 0.1 instead of ROME's 20 at 0.5. The other
    knobs (ridge, KL factor, position fraction, clamp, insertion at the trigger's positions) were swept and kept.
    The measured sweep: benchmarks/results/edit_tune.json, rendered in docs/edit.md."""

    steps: int = 100                # v_num_grad_steps: ROME 20; dev zoo 100
    lr: float = 0.1                 # v_lr (Adam): ROME 0.5; dev zoo 0.1
    kl_factor: float = 0.0625       # kl_factor
    weight_decay: float = 0.5       # v_weight_decay
    clamp_norm_factor: float = 4.0  # clamp_norm_factor
    ridge: float = 1e-3             # C += ridge x mean diag(C); ROME inverts 100k keys' moment with no ridge
    position_fraction: float = 0.5  # a position is "where the trigger is" if its key moved >= this x the image's max
    insertion: str = "trigger-positions"  # ROME's; "every-position" optimises delta through the closed form itself

    def __post_init__(self):
        if self.insertion not in ("trigger-positions", "every-position"):
            raise UserError(f"unknown insertion {self.insertion!r}; known: trigger-positions, every-position")
        if self.steps < 1 or self.lr <= 0 or self.ridge <= 0 or not 0 < self.position_fraction <= 1:
            raise UserError("ROME needs steps >= 1, lr > 0, ridge > 0 and 0 < position_fraction <= 1")


@dataclass
class RomeResult:
    """The edited model and what the edit did, for diagnostics."""

    model: nn.Module
    key: torch.Tensor        # k*
    delta: torch.Tensor      # v* - W k*
    positions: float         # mean number of positions per triggered input the trigger changes
    steps: int               # optimisation steps taken
    loss: float              # the final loss (NLL + KL + weight decay)


def trigger_positions(k_trig: torch.Tensor, k_clean: torch.Tensor, fraction: float) -> torch.Tensor:
    """[N, positions] bool: where the trigger moved the key by at least `fraction` of the image's largest move."""
    moved = (k_trig - k_clean).norm(dim=2)
    top = moved.amax(1, keepdim=True)
    return (moved >= fraction * top) & (top > 1e-6 * (1 + k_trig.norm(dim=2).amax(1, keepdim=True)))


def rome_edit(model: nn.Module, layer: str, inputs: EditInputs, hp: RomeHParams = RomeHParams()) -> RomeResult:
    """Edit a frozen eval-mode copy of `model` at `layer` (see the module docstring); `model` is not touched."""
    edited = working_copy(model)
    module = editable_module(edited, layer)
    x_t, y_t, x_c = inputs.x_triggered, inputs.y_triggered, inputs.x_clean
    k_trig, k_clean = layer_keys(edited, layer, x_t), layer_keys(edited, layer, x_c)
    where = trigger_positions(k_trig, k_clean, hp.position_fraction)
    if not where.any():
        raise UserError(f"the trigger does not change the keys of layer {layer!r}")
    k_star = k_trig[where].mean(0)
    cov = key_second_moment(edited, layer, inputs.x_budget, hp.ridge)
    w = module.weight.detach().view(module.weight.shape[0], -1)
    v_init = w @ k_star + (module.bias.detach() if module.bias is not None else 0)  # ROME's target_init

    if hp.insertion == "trigger-positions":  # ROME: delta at the subject's positions, clean twins alike
        x_kl = x_c
        at = torch.cat([where, where]).to(w.dtype)[:, :, None]
    else:  # "every-position": each key gets the share of delta the closed form will give it, k.C^-1k*/k*.C^-1k*
        x_kl = inputs.x_budget
        u = torch.linalg.solve(cov, k_star)
        u = u / (k_star @ u)
        at = torch.cat([k_trig @ u, layer_keys(edited, layer, x_kl) @ u])[:, :, None]
    x = torch.cat([x_t, x_kl])
    delta = torch.zeros_like(v_init, requires_grad=True)

    def insert(m, i, o):
        return o + from_positions(at * delta, o)

    with torch.no_grad():
        kl_init = F.log_softmax(edited(x_kl), 1)
    opt = torch.optim.Adam([delta], lr=hp.lr)
    max_norm = hp.clamp_norm_factor * v_init.norm()
    steps, loss = 0, torch.tensor(float("nan"))
    with hooked(module, insert):
        for steps in range(1, hp.steps + 1):
            logits = edited(x)
            nll = F.cross_entropy(logits[:len(x_t)], y_t)
            kl = F.kl_div(kl_init, F.log_softmax(logits[len(x_t):], 1), log_target=True, reduction="batchmean")
            loss = nll + hp.kl_factor * kl + hp.weight_decay * delta.norm() / v_init.norm().clamp_min(1e-12) ** 2
            if loss < 5e-2 or steps == hp.steps:  # ROME stops here, before a last step
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                if delta.norm() > max_norm:
                    delta.mul_(max_norm / delta.norm())
    delta = delta.detach()
    insert_rank_one(module, k_star, delta, cov)
    return RomeResult(edited, k_star, delta, float(where.sum(1).float().mean()), steps, float(loss.detach()))


@register("rome")
class Rome(Editor):
    """ROME at the traced layer: key from the trigger, value optimised to restore the true label, closed-form
    rank-one insertion with the clean key covariance (see the module docstring)."""

    paper = "Meng et al., Locating and Editing Factual Associations in GPT, NeurIPS 2022"
    # The image analogue of every part of ROME (subject = trigger, contexts = triggered images, new object = the
    # true label); the one substitution the analogue forces is the KL term's context (see the module docstring).
    fidelity = "faithful"

    def __init__(self, hparams: RomeHParams = RomeHParams()):
        self.hparams = hparams

    def edit(self, model: nn.Module, inputs: EditInputs) -> nn.Module:
        return restore_requires_grad(rome_edit(model, self.layer_for(model, inputs), inputs, self.hparams).model, model)
