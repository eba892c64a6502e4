"""Attribution methods: where in the input does the model look when it gives this answer?

One verb: `Attributor.attribute(model, x, target) -> Tensor[N, H, W]`, a non-negative relevance per input
pixel for images `x` [N, C, H, W] in [0, 1] and the class `target` (an int, or one label per image).
Signed attributions are reduced over channels by the sum of absolute values (`reduce_channels`), so a
pixel that pushes the logit strongly either way counts as relevant; maps at a coarser resolution (GradCAM)
are upsampled bilinearly to H x W.

The model given is never changed: model-using methods work on a private copy (`attribution_copy`) in eval
mode with in-place ReLUs swapped for fresh non-in-place ones (captum's DeepLIFT and guided backprop
override the gradients of ReLU *modules*; functional `F.relu` calls, as in the ResNet, get plain
gradients there). Baselines (`uses_model = False`, `is_baseline = True`) look only at the image.

Register a new one with `@register("name")`; the diagnose task (`trojanbench.tasks.diagnose`) scores it
beside the baselines. See docs/diagnose.md.
"""

from __future__ import annotations

import copy
import warnings
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...registry import Registry


class Attributor(ABC):
    version: ClassVar[str] = "1"
    is_baseline: ClassVar[bool] = False
    uses_model: ClassVar[bool] = True  # False: the map is a function of the image alone

    def __init__(self, seed: int = 0):
        self.seed = seed

    @abstractmethod
    def attribute(self, model: nn.Module, x: torch.Tensor, target: int | torch.Tensor) -> torch.Tensor:
        """Relevance maps [N, H, W], non-negative and finite, for `x` [N, C, H, W] and class `target`."""


ATTRIBUTORS: Registry[type[Attributor]] = Registry("attributor")
register = ATTRIBUTORS.register


def reduce_channels(a: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[N, C, h, w] signed attributions -> [N, H, W] non-negative: abs-sum over channels, bilinear upsampling
    if the map is coarser than the image, NaN/inf replaced by 0."""
    a = a.detach().float()
    if a.dim() == 3:
        a = a.unsqueeze(1)
    a = a.abs().sum(1, keepdim=True)
    if tuple(a.shape[-2:]) != tuple(size):
        a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
    return torch.nan_to_num(a[:, 0], nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0)


_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Hardtanh, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh)


def attribution_copy(model: nn.Module) -> nn.Module:
    """A private copy for captum: eval mode, parameters requiring grad, and every activation module a distinct
    non-in-place instance (a module used twice, or an in-place ReLU, breaks DeepLIFT / guided backprop)."""
    m = copy.deepcopy(model).eval()
    seen: set[int] = set()
    for parent in list(m.modules()):
        for name, child in list(parent._modules.items()):  # named_children() would hide a reused module
            if not isinstance(child, _ACTIVATIONS):
                continue
            if id(child) in seen or getattr(child, "inplace", False):
                new = copy.deepcopy(child)
                if hasattr(new, "inplace"):
                    new.inplace = False
                setattr(parent, name, new)
            seen.add(id(child))
    for p in m.parameters():
        p.requires_grad_(True)
    return m


def last_conv(model: nn.Module) -> nn.Module:
    """The last nn.Conv2d in registration order (the GradCAM layer)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("GradCAM needs a model with a Conv2d layer")
    return convs[-1]


def randomized_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """The sanity-check model (Adebayo et al. 2018, full cascading randomization): a copy whose every layer
    with parameters is re-initialised by its own `reset_parameters` (BatchNorm running statistics too);
    leftover parameters (e.g. a ViT's position embedding) are redrawn from N(0, 0.02). Global RNG untouched."""
    m = copy.deepcopy(model).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        done: set[int] = set()
        for mod in m.modules():
            if hasattr(mod, "reset_parameters"):
                mod.reset_parameters()
                done.update(id(p) for p in mod.parameters(recurse=False))
            if hasattr(mod, "reset_running_stats"):
                mod.reset_running_stats()
        with torch.no_grad():
            for p in m.parameters():
                if id(p) not in done:
                    p.normal_(0, 0.02)
    return m


class CaptumAttributor(Attributor):
    """Runs `_captum(model_copy, x, target)` on a private copy with captum's warnings silenced, in batches, with
    torch's and numpy's RNGs seeded from `seed` (and both global states restored afterwards)."""

    batch_size: ClassVar[int] = 64

    def attribute(self, model, x, target):
        m = attribution_copy(model)
        device = next(m.parameters()).device
        out = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i in range(0, len(x), self.batch_size):
                xb = x[i:i + self.batch_size].to(device).clone()
                tb = target[i:i + self.batch_size].to(device) if torch.is_tensor(target) and target.dim() else int(target)
                np_state = np.random.get_state()  # captum's GradientShap draws references with numpy's global RNG
                try:
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(self.seed)
                        np.random.seed(self.seed)
                        out.append(reduce_channels(self._captum(m, xb, tb), tuple(x.shape[-2:])).cpu())
                finally:
                    np.random.set_state(np_state)
        return torch.cat(out) if out else torch.zeros(0, *x.shape[-2:])

    @abstractmethod
    def _captum(self, model: nn.Module, x: torch.Tensor, target) -> torch.Tensor: ...


from . import baselines, captum_methods  # noqa: F401  (register the attributors)
