"""Shared helpers for tests (ours and plug-in authors'): tiny datasets and fast training settings."""

from __future__ import annotations

import torch

from ..config import TrainConfig
from ..data import ImageDataset


def tiny_dataset(n_train: int = 256, n_test: int = 64, channels: int = 1, size: int = 16, classes: int = 4,
                 seed: int = 0) -> ImageDataset:
    """Separable blobs: class c lights up quadrant-ish region c. Trains to ~100% in a second."""
    g = torch.Generator().manual_seed(seed)

    def draw(n):
        y = torch.randint(classes, (n,), generator=g)
        x = 0.1 * torch.rand(n, channels, size, size, generator=g)
        half = size // 2
        for c in range(classes):
            r, col = (c // 2) % 2 * half, c % 2 * half
            x[y == c, :, r:r + half, col:col + half] += 0.6
        return x.clamp(0, 1), y

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return ImageDataset("tiny", x_train, y_train, x_test, y_test, [str(c) for c in range(classes)])


def fast_train_config(epochs: int = 4) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=64, lr=0.05)
