"""One plain, fast training loop: data as tensors, index-sliced batches, batched augmentation."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import TrainConfig
from .augment import augment_batch


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]  # no weight decay on norms and biases
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up, then linear decay to zero (as airbench's triangular schedule)."""
    w = max(1, int(total * warmup))
    return (step + 1) / w if step < w else max(0.0, (total - step) / max(1, total - w))


def train_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, *,
                seed: int = 0, augment: dict | None = None, device: torch.device | str = "cpu",
                progress=None) -> nn.Module:
    """Train `model` in place on (x, y) and return it in eval mode. `progress(epoch, loss)` is called per epoch."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    model.to(device).train()
    if hasattr(model, "init_from_data"):
        model.init_from_data(x)
    x, y = x.to(device), y.to(device)
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=layout)
    opt = make_optimizer(model, cfg)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    augment = augment if (cfg.augment and augment) else {}
    step = 0
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(x), generator=g).to(device)
        running = 0.0
        for i in range(0, len(x), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            xb = augment_batch(x[idx], generator=g, **augment) if augment else x[idx]
            xb = xb.contiguous(memory_format=layout)
            loss = loss_fn(model(xb), y[idx])
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, total, cfg.warmup)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += float(loss.detach())
            step += 1
        if progress is not None:
            progress(epoch, running / steps_per_epoch)
    return model.to(memory_format=torch.contiguous_format).eval()
