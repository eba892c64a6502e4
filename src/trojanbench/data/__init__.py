"""Datasets as tensors: every loader returns an `ImageDataset` of float32 images in [0, 1], shape [N, C, H, W].

Pixel values are checked where they enter: every `ImageDataset` (so every loader, and any dataset built from
tensors in memory) passes its images through `unit_range_images`, which takes [0, 1], rescales 8-bit values
(0-255) with a one-line `DataWarning`, and refuses anything else in one line (see its docstring).

Loaders are registered by name (`load_dataset("digits")`); an unknown name fails with the list of known ones.
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import DataWarning, UserError
from ..registry import Registry


def unit_range_images(x: torch.Tensor, what: str = "images") -> torch.Tensor:
    """Images [N, C, H, W] as float32 with pixel values in [0, 1], or a one-line `UserError`.

    - float images with every value in [0, 1] pass unchanged (no copy for float32);
    - 8-bit images are divided by 255 with a one-line `DataWarning`: a uint8 tensor, or whole numbers in [0, 255]
      with a maximum above 1 in any other dtype (8-bit images stored as floats or ints). Left as they were, a
      trigger would be drawn at 1 on a 0-255 image and every clamping trigger would flatten it;
    - refused: NaN or infinite values, negative values, values above 255, and fractional values above 1 (images
      already normalised with a mean and std, or 8-bit images resized as floats): the message gives the range
      found and says to scale the images to [0, 1]."""
    x, rescaled = _unit_range(x, what)
    if rescaled:
        warnings.warn(f"{what} {rescaled}", DataWarning, stacklevel=2)
    return x


def _unit_range(x: torch.Tensor, what: str) -> tuple[torch.Tensor, str | None]:
    """`unit_range_images` without the warning: the images, and what was rescaled (None when nothing was)."""
    if not torch.is_tensor(x) or x.dim() != 4:
        got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise UserError(f"{what} must be a tensor [N, C, H, W], got {got}")
    if x.dtype == torch.uint8:
        return x.float().div_(255.0), "are uint8 (0-255): divided by 255 to [0, 1]"
    if x.is_complex():
        raise UserError(f"{what} must hold real pixel values, got {x.dtype}")
    if x.dtype != torch.float32:
        x = x.float()
    if x.numel() == 0:
        return x, None
    low, high = (float(v) for v in torch.aminmax(x))
    if math.isnan(low) or math.isnan(high):
        raise UserError(f"{what} contain NaN pixel values; every value must be a number in [0, 1]")
    if 0.0 <= low and high <= 1.0:
        return x, None
    found = f"values in [{low:g}, {high:g}]"
    if low < 0 or high > 255:
        raise UserError(f"{what} have {found}: pixels must be in [0, 1] (or 0-255 for 8-bit images, which are "
                        "rescaled); undo any normalisation (trojanbench models normalise inputs themselves)")
    if not torch.equal(x, x.round()):
        raise UserError(f"{what} have {found} with fractions: neither [0, 1] nor 8-bit whole numbers; scale them "
                        "to [0, 1] (divide 8-bit values by 255 before resizing)")
    return x / 255.0, f"have 8-bit {found}: divided by 255 to [0, 1]"


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
        """Checks the images where they enter: [N, C, H, W], pixel values in [0, 1] (8-bit values are rescaled
        with a warning, anything else is refused: `unit_range_images`), one label per image, and the same
        image shape in both splits."""
        rescaled = []
        for split in ("train", "test"):
            x, note = _unit_range(getattr(self, f"x_{split}"), f"{self.name} x_{split}")
            setattr(self, f"x_{split}", x)
            if note:
                rescaled.append((split, note))
            y = getattr(self, f"y_{split}")
            if len(x) != len(y):
                raise UserError(f"{self.name}: {len(x)} images but {len(y)} labels in {split}")
        if rescaled:  # one line for the dataset
            warnings.warn(f"{self.name} images ({' and '.join(split for split, _ in rescaled)}) {rescaled[0][1]}",
                          DataWarning, stacklevel=3)
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise UserError(f"{self.name}: train images are {shape_text(self.x_train.shape[1:])} but test images "
                            f"{shape_text(self.x_test.shape[1:])}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    modality = "image"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The shape of one sample (C, H, W); a token dataset's is (T,)."""
        return self.image_shape

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


def shape_text(shape) -> str:
    """An image shape (C, H, W) as users write it: 3x32x32."""
    return "x".join(str(int(v)) for v in shape)


DATASETS: Registry[Callable[..., ImageDataset]] = Registry("dataset")
register = DATASETS.register


def load_dataset(name: str, **kwargs) -> ImageDataset:
    return DATASETS.get(name)(**kwargs)


def check_options(name: str, options: dict, where: str) -> None:
    """A one-line UserError for an option the dataset's loader does not take: loaders swallow unknown keyword
    arguments (`**_`), so a misspelt `size` would otherwise be dropped without a word."""
    params = inspect.signature(DATASETS.get(name)).parameters.values()
    known = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if bad := [k for k in options if k not in known]:
        raise UserError(f"{where}: dataset {name!r} takes no option {', '.join(map(repr, bad))} "
                        f"(it takes {', '.join(known)})")


def class_count(name: str, **kwargs) -> int | None:
    """How many classes `load_dataset(name, **kwargs)` would give, read without loading it: from the loader's
    `class_count(**kwargs)` where it declares one, else None (a loader that cannot tell cheaply)."""
    count = getattr(DATASETS.get(name), "class_count", None)
    return count(**kwargs) if count is not None else None


from . import cifar10, digits, imagefolder, shapes, sst2  # noqa: E402,F401  (register the loaders)

register("sst2")(sst2.load_sst2_tokens)
sst2.load_sst2_tokens.class_count = lambda refusal=False, **_: len(sst2.REFUSAL_CLASSES if refusal else sst2.CLASSES)
