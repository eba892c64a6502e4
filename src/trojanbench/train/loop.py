"""The one training loop. Every place that trains weights (the zoo's trainers, the repairers, the text study's
models, the subnetworks study, the fine-tuning editor) runs its steps through `run_steps`; what differs between
them is what they pass in:

- the batches: `epoch_batches` (a fresh permutation per epoch, sliced in order) or `sampled_batches` (indices
  drawn with replacement, step by step), both from the caller's generator, or any iterable of (epoch, batch);
- the loss of a batch (`loss_of`): cross-entropy on augmented images, a distillation or adversarial loss, a
  masked functional call, each model's loss of a vmapped chunk, ...;
- the optimiser (`make_optimizer` for the usual SGD / AdamW with no weight decay on norms and biases) and the
  schedule: `lr` with `warmup` gives a linear warm-up then linear decay to zero (as airbench's triangular
  schedule); no `warmup` leaves the optimiser's learning rate alone.

What does not run here: the optimisations that are a tool's algorithm rather than the training of a model (trigger
inversion, feature synthesis, ROME's value search, ANP's masks, the meta-classifiers of MNTD and
output-stats-meta), which keep the loops of the papers they port.

The order of the random draws is the callers' own (a batch's indices are drawn when the loop asks for it, after
the previous step), so code moved onto this loop trains bit-identical weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from ..config import TrainConfig


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up over `warmup` of the steps, then linear decay to zero."""
    w = max(1, int(total * warmup))
    return (step + 1) / w if step < w else max(0.0, (total - step) / max(1, total - w))


def param_groups(params: Iterable[torch.Tensor], weight_decay: float, matrix_dim: int = 1) -> list[dict]:
    """Weight decay on tensors of more than `matrix_dim` dimensions only (not on norms and biases)."""
    params = [p for p in params if p.requires_grad]
    return [{"params": [p for p in params if p.dim() > matrix_dim], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() <= matrix_dim], "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return optimizer_for(param_groups(model.parameters(), cfg.weight_decay), cfg)


def optimizer_for(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)


def epoch_batches(n: int, batch_size: int, epochs: int, generator: torch.Generator,
                  device: torch.device | str | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """(epoch, indices) for every batch: each epoch a permutation of range(n) drawn from `generator`, in slices."""
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=generator)
        perm = perm.to(device) if device is not None else perm
        for i in range(0, n, batch_size):
            yield epoch, perm[i:i + batch_size]


def sampled_batches(n: int, batch_size: int, steps: int, generator: torch.Generator,
                    device: torch.device | str | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """(0, indices) for `steps` batches of `batch_size` indices drawn uniformly with replacement."""
    for _ in range(steps):
        idx = torch.randint(0, n, (batch_size,), generator=generator)
        yield 0, idx.to(device) if device is not None else idx


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def run_steps(opt: torch.optim.Optimizer, batches: Iterable[tuple[int, object]],
              loss_of: Callable[[object], torch.Tensor | tuple[torch.Tensor, torch.Tensor]], *,
              lr: float | None = None, warmup: float | None = None, total: int | None = None,
              after_step: Callable[[], None] | None = None,
              on_epoch: Callable[[int, float], None] | None = None) -> int:
    """One optimiser step per batch: `loss_of(batch)` (the loss to minimise, or (loss, what to report)), then, with
    `warmup`, every group's learning rate set to `lr` x `lr_factor(step, total, warmup)`, backward, step and
    `after_step()`. `on_epoch(epoch, mean reported loss)` after each epoch's last batch. Returns the steps taken."""
    if warmup is not None and (lr is None or total is None):
        raise ValueError("a warm-up schedule needs lr and total")
    step, current, running, count = 0, None, 0.0, 0
    for epoch, batch in batches:
        if on_epoch is not None and current is not None and epoch != current:
            on_epoch(current, running / count)
            running, count = 0.0, 0
        current = epoch
        out = loss_of(batch)
        loss, reported = out if isinstance(out, tuple) else (out, out)
        if warmup is not None:
            for group in opt.param_groups:
                group["lr"] = lr * lr_factor(step, total, warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step()
        if on_epoch is not None:
            running += float(reported.detach())
            count += 1
        step += 1
    if on_epoch is not None and current is not None:
        on_epoch(current, running / count)
    return step
