"""One plain, fast trainer: data as tensors, index-sliced batches, batched augmentation (on `train.loop`)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..config import TrainConfig
from .augment import augment_batch
from .loop import epoch_batches, lr_factor, make_optimizer, run_steps, steps_per_epoch

__all__ = ["lr_factor", "make_optimizer", "train_model"]


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
    layout = torch.channels_last if cfg.channels_last and x.dim() == 4 else torch.contiguous_format  # images only
    model.to(memory_format=layout)
    augment = augment if (cfg.augment and augment) else {}

    def loss_of(idx):
        xb = augment_batch(x[idx], generator=g, **augment) if augment else x[idx]
        return F.cross_entropy(model(xb.contiguous(memory_format=layout)), y[idx], label_smoothing=cfg.label_smoothing)

    run_steps(make_optimizer(model, cfg), epoch_batches(len(x), cfg.batch_size, cfg.epochs, g, device), loss_of,
              lr=cfg.lr, warmup=cfg.warmup, total=cfg.epochs * steps_per_epoch(len(x), cfg.batch_size),
              on_epoch=progress)
    return model.to(memory_format=torch.contiguous_format).eval()
