"""Architectures by name. Every model takes images in [0, 1] and normalises them itself (a `Normalize`
first layer), so triggers, attributions and masks all live in pixel space.

`build_model(arch, **kwargs)` -> nn.Module; the kwargs (with the data-dependent ones: in_channels,
num_classes, image_size, mean, std) are what a model card stores to rebuild the model exactly.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..errors import UserError
from ..registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("architecture")
register = MODELS.register


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def build_model(arch: str, **kwargs) -> nn.Module:
    factory = MODELS.get(arch)
    try:
        return factory(**kwargs)
    except TypeError as e:
        raise UserError(f"bad arguments for architecture {arch!r}: {e}") from None


def data_kwargs(dataset) -> dict:
    """The arguments every architecture takes from the data it is trained on."""
    mean, std = dataset.channel_stats()
    c, h, _ = dataset.image_shape
    return {"in_channels": c, "num_classes": dataset.num_classes, "image_size": h, "mean": mean, "std": std}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


from . import airnet, cnn, mlp, resnet, text, vit  # noqa: E402,F401  (register the architectures)
