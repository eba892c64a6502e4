"""A procedural RGB dataset of coloured shapes on textured backgrounds: seeded, any size, no files."""

from __future__ import annotations

import torch

from . import ImageDataset, register

SHAPES = ["circle", "square", "triangle", "cross", "ring", "bar"]


def _draw(n: int, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(len(SHAPES), (n,), generator=g)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    r = size * (0.18 + 0.14 * torch.rand(n, 1, 1, generator=g))
    cx = size / 2 + (size / 2 - r) * (torch.rand(n, 1, 1, generator=g) * 2 - 1) * 0.8
    cy = size / 2 + (size / 2 - r) * (torch.rand(n, 1, 1, generator=g) * 2 - 1) * 0.8
    dx, dy = xx - cx, yy - cy
    ax, ay, dist = dx.abs(), dy.abs(), (dx**2 + dy**2).sqrt()
    t = r * 0.35  # stroke thickness
    masks = torch.stack([
        dist <= r,
        (ax <= r * 0.8) & (ay <= r * 0.8),
        (dy <= r * 0.7) & (dy >= -r) & (ax <= (dy + r) * 0.6),
        ((ax <= t / 2) & (ay <= r)) | ((ay <= t / 2) & (ax <= r)),
        (dist <= r) & (dist >= r - t),
        (ay <= t / 2) & (ax <= r),
    ], dim=1)  # [n, classes, H, W]
    mask = masks[torch.arange(n), labels].float().unsqueeze(1)
    fg = 0.3 + 0.7 * torch.rand(n, 3, 1, 1, generator=g)
    bg = 0.5 * torch.rand(n, 3, 1, 1, generator=g)
    noise = 0.08 * torch.randn(n, 3, size, size, generator=g)
    x = (mask * fg + (1 - mask) * bg + noise).clamp(0, 1)
    return x, labels


@register("shapes")
def load_shapes(n_train: int = 4000, n_test: int = 1000, size: int = 32, seed: int = 0, **_) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    x_train, y_train = _draw(n_train, size, g)
    x_test, y_test = _draw(n_test, size, g)
    return ImageDataset("shapes", x_train, y_train, x_test, y_test, list(SHAPES), {"translate": 2, "flip": True})


load_shapes.class_count = lambda **_: len(SHAPES)
