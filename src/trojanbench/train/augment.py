"""Batched augmentation on tensors: no per-sample Python loop.

Drawing the random choices (`draw_augment`) is kept apart from applying them (`apply_augment`, exact
indexing only), so the many-models trainer can draw each model's choices from that model's own generator,
in the same order as the one-model loop, and still apply them to the whole stacked batch in one gather.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentDraw:
    """One batch's random choices: per image a flip flag and a shift (dy, dx) in [0, 2 * pad]."""

    pad: int
    flip: torch.Tensor | None  # bool [N], or None when flipping is off
    dy: torch.Tensor | None  # long [N], or None when pad is 0
    dx: torch.Tensor | None

    @staticmethod
    def cat(draws: list[AugmentDraw]) -> AugmentDraw:
        def join(name):
            parts = [getattr(d, name) for d in draws]
            return None if parts[0] is None else torch.cat(parts)

        return AugmentDraw(draws[0].pad, join("flip"), join("dy"), join("dx"))


def draw_augment(n: int, translate: int = 0, flip: bool = False,
                 generator: torch.Generator | None = None) -> AugmentDraw:
    """The random choices for `n` images, drawn in a fixed order: flips, then row shifts, then column shifts."""
    flips = torch.rand(n, generator=generator) < 0.5 if flip else None
    dy = dx = None
    if translate > 0:
        dy = torch.randint(0, 2 * translate + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * translate + 1, (n,), generator=generator)
    return AugmentDraw(translate, flips, dy, dx)


def apply_augment(x: torch.Tensor, d: AugmentDraw) -> torch.Tensor:
    """Apply drawn choices to `x` [N, C, H, W]: a select and a gather, so the result is exact."""
    if d.flip is not None:
        x = torch.where(d.flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
    if d.dy is None:
        return x
    pad = d.pad
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (d.dy.to(x.device).view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (d.dx.to(x.device).view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chan = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[batch, chan, rows, cols]


def random_translate(x: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by up to `pad` pixels (zero-filled), one gather for the whole batch."""
    return apply_augment(x, draw_augment(len(x), translate=pad, generator=generator))


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return apply_augment(x, draw_augment(len(x), flip=True, generator=generator))


def augment_batch(x: torch.Tensor, translate: int = 0, flip: bool = False,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    return apply_augment(x, draw_augment(len(x), translate, flip, generator))
