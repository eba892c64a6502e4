"""sklearn's 8x8 handwritten digits (1,797 images, ships with scikit-learn), upsampled to 16x16.

Why 16x16: at 8x8 a 2x2 patch trigger already hides 6% of the image and a warp field has almost no room
to bend; at 16x16 triggers can be small, local and realistic while a CNN still trains in seconds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import ImageDataset, register


@register("digits")
def load_digits(size: int = 16, test_fraction: float = 0.2, split_seed: int = 0, **_) -> ImageDataset:
    from sklearn.datasets import load_digits as sk_load

    bunch = sk_load()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    y = torch.tensor(bunch.target, dtype=torch.long)
    # stratified split, fixed by split_seed so every model of a zoo sees the same test set
    g = torch.Generator().manual_seed(split_seed)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = round(len(idx) * test_fraction)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train_idx = torch.cat(train_idx)[torch.randperm(sum(len(i) for i in train_idx), generator=g)]
    test_idx = torch.cat(test_idx)[torch.randperm(sum(len(i) for i in test_idx), generator=g)]
    return ImageDataset(
        "digits", x[train_idx].contiguous(), y[train_idx], x[test_idx].contiguous(), y[test_idx],
        [str(c) for c in range(10)], {"translate": 1, "flip": False},
    )


load_digits.class_count = lambda **_: 10  # read by `data.class_count` (a zoo config's targets are checked with it)
