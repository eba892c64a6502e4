"""Datasets as tensors: every loader returns an `ImageDataset` of float32 images in [0, 1], shape [N, C, H, W].

Loaders are registered by name (`load_dataset("digits")`); an unknown name fails with the list of known ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..registry import Registry


@dataclass
class ImageDataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    # batched augmentation that suits the data: digits must not be flipped, natural photos may be
    augment: dict = field(default_factory=lambda: {"translate": 1, "flip": False})

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != torch.float32 or x.dim() != 4:
                raise ValueError(f"{self.name}: x_{split} must be float32 [N,C,H,W], got {x.dtype} {tuple(x.shape)}")
            if len(x) != len(y):
                raise ValueError(f"{self.name}: {len(x)} images but {len(y)} labels in {split}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images (models normalise with these)."""
        mean = self.x_train.mean(dim=(0, 2, 3))
        std = self.x_train.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> "ImageDataset":
        """The first n images of each split (splits are already shuffled by the loaders)."""
        return ImageDataset(
            self.name, self.x_train[:n_train], self.y_train[:n_train], self.x_test[:n_test],
            self.y_test[:n_test], self.classes, dict(self.augment),
        )


DATASETS: Registry[Callable[..., ImageDataset]] = Registry("dataset")
register = DATASETS.register


def load_dataset(name: str, **kwargs) -> ImageDataset:
    return DATASETS.get(name)(**kwargs)


from . import cifar10, digits, imagefolder, shapes  # noqa: E402,F401  (register the loaders)
