"""Architectures by name. Every model takes images in [0, 1] and normalises them itself (a `Normalize`
first layer), so triggers, attributions and masks all live in pixel space.

`build_model(arch, **kwargs)` -> nn.Module; the kwargs (with the data-dependent ones: in_channels,
num_classes, image_size, mean, std) are what a model card stores to rebuild the model exactly.
`image_size` is an int for square images (as every card before non-square support) and [H, W] otherwise;
every image architecture takes both (`image_hw`). Where a model meets data, the data's image shape is checked
against the model's (`check_image_shape`), and a freshly built model is run once on the data's shape before
training (`check_input_fits`), so a shape an architecture cannot take is a one-line error, not a crash mid-way.
"""

from __future__ import annotations

import inspect
import operator
import warnings
from typing import Callable

import torch
from torch import nn

from ..errors import UserError, first_error
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
        with warnings.catch_warnings():  # a width of 0: torch warns per layer; the check below says it in one line
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            model = factory(**kwargs)
    except (TypeError, ValueError, RuntimeError) as e:  # a missing or unknown argument, a width of -3, ...
        raise UserError(f"bad arguments for architecture {arch!r}: {first_error(e)}") from None
    empty = next((name for name, p in model.named_parameters() if p.numel() == 0), None)
    if empty is not None:  # name the arguments that are 0, the likely cause (a width of 0.01 rounds to 0 too)
        zeros = " ".join(f"{k}={v}" for k, v in kwargs.items() if type(v) in (int, float) and v == 0)
        raise UserError(f"bad arguments for architecture {arch!r}: layer {empty} has no weights "
                        f"({zeros or 'check its sizes'})")
    return model


def with_defaults(arch: str, kwargs: dict) -> dict:
    """`kwargs` with every argument the architecture takes by default written out (width, depth, ...): what a model
    card stores, so that it rebuilds its model exactly even after a default in the code changes. What `kwargs`
    gives wins; a factory whose signature cannot be read keeps `kwargs` as they are."""
    try:
        params = inspect.signature(MODELS.get(arch)).parameters.values()
    except (TypeError, ValueError):
        return dict(kwargs)
    defaults = {p.name: list(p.default) if isinstance(p.default, tuple) else p.default for p in params
                if p.default is not inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {**defaults, **kwargs}


def image_hw(image_size) -> tuple[int, int]:
    """(H, W) from an architecture's `image_size`: an int (square images) or a pair [H, W]."""
    if isinstance(image_size, (list, tuple)) and len(image_size) == 2:
        h, w = image_size
    elif isinstance(image_size, (list, tuple)):
        raise TypeError(f"image_size must be an int or [H, W], got {list(image_size)}")
    else:
        h = w = image_size
    try:
        if isinstance(h, bool) or isinstance(w, bool):
            raise TypeError
        h, w = operator.index(h), operator.index(w)
    except TypeError:
        raise TypeError(f"image_size must be a positive int or [H, W], got {image_size!r}") from None
    if h < 1 or w < 1:
        raise TypeError(f"image_size must be a positive int or [H, W], got {image_size!r}")
    return h, w


def data_kwargs(dataset) -> dict:
    """The arguments every architecture takes from the data it is trained on. `image_size` is H for square
    images (so cards of square-image models are what they always were) and [H, W] otherwise. A token dataset
    gives a text architecture its vocabulary size, class count and sentence length."""
    if getattr(dataset, "modality", "image") == "text":
        return {"vocab_size": len(dataset.vocab), "num_classes": dataset.num_classes, "max_len": dataset.max_len,
                "pad_id": dataset.vocab.pad_id}
    mean, std = dataset.channel_stats()
    c, h, w = dataset.image_shape
    return {"in_channels": c, "num_classes": dataset.num_classes, "image_size": h if h == w else [h, w],
            "mean": mean, "std": std}


def expected_image_shape(arch_kwargs: dict) -> tuple[int, int, int] | None:
    """The image shape (C, H, W) a model built with these kwargs takes, or None for non-image models."""
    if "in_channels" not in arch_kwargs or "image_size" not in arch_kwargs:
        return None
    try:
        return (int(arch_kwargs["in_channels"]), *image_hw(arch_kwargs["image_size"]))
    except (TypeError, ValueError):
        return None


def check_image_shape(arch_kwargs: dict, image_shape, what: str = "model") -> None:
    """A one-line UserError when data of `image_shape` (C, H, W) is not what the model was built for (channels
    or size), e.g. "model expects 1x8x8 images, data has 3x32x32"."""
    from ..data import shape_text

    expected = expected_image_shape(arch_kwargs)
    if expected is not None and tuple(expected) != tuple(int(v) for v in image_shape):
        raise UserError(f"{what} expects {shape_text(expected)} images, data has {shape_text(image_shape)}")


def check_input_fits(model: nn.Module, arch: str, image_shape, dtype: torch.dtype = torch.float32) -> None:
    """Run one blank image of `image_shape` through a freshly built model (eval mode, no gradient; its mode is
    restored, no statistics change, no random numbers drawn): a shape the architecture cannot take is a
    one-line UserError naming the shape and the architecture, before any training starts."""
    from ..data import shape_text
    from ..utils import evaluating

    device = next(iter(model.parameters()), torch.empty(0)).device
    try:
        with evaluating(model), torch.no_grad():
            model(torch.zeros(1, *image_shape, device=device, dtype=dtype))
    except Exception as e:  # noqa: BLE001 - whatever the forward pass raises, the user gets one line
        first = (str(e).splitlines() or [""])[0][:160]
        what = f"{shape_text(image_shape)} images" if dtype.is_floating_point else f"token ids of shape {shape_text(image_shape)}"
        raise UserError(f"architecture {arch!r} cannot take {what} ({first})") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


from . import airnet, cnn, mlp, resnet, text, vit  # noqa: E402,F401  (register the architectures)
