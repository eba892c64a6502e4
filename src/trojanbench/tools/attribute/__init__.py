"""Attribution methods: where in the input does the model look when it gives this answer?

One verb: `Attributor.attribute(model, x, target) -> Tensor[N, H, W]`, a non-negative relevance per input
pixel for images `x` [N, C, H, W] in [0, 1] and the class `target` (an int, or one label per image).
Signed attributions are reduced over channels by the sum of absolute values (`reduce_channels`), so a
pixel that pushes the logit strongly either way counts as relevant; maps at a coarser resolution (GradCAM)
are upsampled bilinearly to H x W.

The model given is never changed: model-using methods work on a private copy (`attribution_copy`) in eval
mode with in-place ReLUs swapped for fresh non-in-place ones. captum's DeepLIFT, guided backprop and
deconvolution override the backward pass of activation *modules* only (guided backprop and deconvolution: nn.ReLU
only; DeepLIFT: ReLU, ELU, LeakyReLU, Sigmoid, Tanh, Softplus, max-pooling, Softmax): a functional `F.relu`
gets plain gradients, so a network without such modules makes DeepLIFT collapse onto input x gradient and guided
backprop / deconvolution onto saliency. The CNN, MLP and ResNet-18 use one nn.ReLU module per call site; the
ViT and airnet use GELU, which captum has no rule for, so on them those methods do collapse (see
docs/diagnose.md). Baselines (`uses_model = False`, `is_baseline = True`) look only at the image (and the clean
reference sample).

Clean reference sample (fair access): before attributing on a model's inputs, the task hands every attributor,
baseline or not, the same clean images through `fit_reference(x_clean)` [N, C, H, W] in [0, 1] (clean images
of the zoo's dataset, never the images being explained). The default keeps them in `self.reference`; a method
that needs them (`needs_reference = True`: the pixel-anomaly baseline, GradientSHAP's background) reads them
with `self.reference_for(x)` and says so in one line if they are missing.

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

from ...data import unit_range_images
from ...errors import UserError
from ...registry import Registry
from ...utils import evaluating, private_rng
from .. import ToolInfo, check_target


def _class_count(model: nn.Module, x: torch.Tensor) -> int | None:
    """The model's class count from one forward pass of one sample (eval mode, no gradient, modes given back), or
    None where the model does not take `x` (a model-free baseline may still explain it; a method that uses the
    model reports the mismatch itself)."""
    if not len(x):
        return None
    device = next(iter(model.parameters()), torch.empty(0)).device
    try:
        with evaluating(model), torch.no_grad():
            return int(model(x[:1].to(device)).shape[-1])
    except Exception:  # noqa: BLE001 - only the target check is skipped
        return None


def _checked_attribute(self, method, model, x, target, *args, **kw) -> torch.Tensor:
    """An attributor's maps, or a one-line error naming it. In: images [N, C, H, W] in [0, 1] (`unit_range_images`;
    token ids [N, T] pass as they are) and one target, or one per sample. Out: maps [N, H, W] (sentences: [N, T]),
    finite and non-negative."""
    who = f"attributor {type(self).__name__}"
    if not torch.is_tensor(x):
        raise UserError(f"{who}: x must be a tensor, got {type(x).__name__}")
    if x.dim() == 4:  # images
        x = unit_range_images(x, f"{who}: images")
    if torch.is_tensor(target) and target.dim() and tuple(target.shape) != (len(x),):
        raise UserError(f"{who}: {tuple(target.shape)} targets for {len(x)} samples; give one target, or one per sample")
    classes = _class_count(model, x)
    if classes is not None:
        for t in (target.flatten().unique().tolist() if torch.is_tensor(target) else [target]):
            check_target(t, classes, who)
    maps = method(self, model, x, target, *args, **kw)
    want = (len(x), *x.shape[2:]) if x.dim() == 4 else tuple(x.shape[:2])
    if not torch.is_tensor(maps) or tuple(maps.shape) != want:
        got = tuple(maps.shape) if torch.is_tensor(maps) else type(maps).__name__
        raise UserError(f"{who} returned maps {got}; it must return {list(want)}, one map per sample")
    if maps.numel() and not (torch.isfinite(maps).all() and float(maps.min()) >= 0):
        raise UserError(f"{who} returned maps with values in [{float(maps.min()):g}, {float(maps.max()):g}]; "
                        "relevance is finite and non-negative (use reduce_channels)")
    return maps


class Attributor(ToolInfo, ABC):

    verb_check = ("attribute", _checked_attribute)
    uses_model: ClassVar[bool] = True  # False: the map is a function of the image alone
    needs_reference: ClassVar[bool] = False  # True: `attribute` needs `fit_reference` first

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.reference: torch.Tensor | None = None

    def fit_reference(self, x_clean: torch.Tensor) -> Attributor:
        """Keep the clean reference sample [N, C, H, W] (pixels in [0, 1]) that every attributor of a board gets;
        returns self."""
        if not torch.is_tensor(x_clean) or x_clean.dim() != 4 or len(x_clean) == 0:
            raise UserError(f"{type(self).__name__}.fit_reference needs clean images [N, C, H, W] with N >= 1, "
                            f"got {tuple(x_clean.shape) if torch.is_tensor(x_clean) else type(x_clean).__name__}")
        self.reference = x_clean.detach().float().cpu().clone()
        return self

    def reference_for(self, x: torch.Tensor) -> torch.Tensor:
        """The clean reference sample, checked against the images `x` to explain (same C, H, W)."""
        if self.reference is None:
            raise UserError(f"{type(self).__name__} needs a clean reference sample: call fit_reference(x_clean) "
                            "before attribute()")
        if tuple(self.reference.shape[1:]) != tuple(x.shape[1:]):
            raise UserError(f"{type(self).__name__}: reference images are {tuple(self.reference.shape[1:])}, "
                            f"the images to explain {tuple(x.shape[1:])}")
        return self.reference

    @abstractmethod
    def attribute(self, model: nn.Module, x: torch.Tensor, target: int | torch.Tensor) -> torch.Tensor:
        """Relevance maps [N, H, W], non-negative and finite, for `x` [N, C, H, W] and class `target`."""


ATTRIBUTORS: Registry[type[Attributor]] = Registry("attributor")
register = ATTRIBUTORS.register

REFERENCE_SIZE = 200  # clean images in the reference sample (as many as the detectors' clean sample)


def reference_sample(x_clean: torch.Tensor, n: int = REFERENCE_SIZE, seed: int = 0) -> torch.Tensor:
    """The clean reference sample a task hands to every attributor (`fit_reference`): `n` images drawn without
    replacement from `x_clean` (the dataset's clean training images: disjoint from the test images explained),
    deterministic in `seed`."""
    idx = torch.randperm(len(x_clean), generator=torch.Generator().manual_seed(seed))[:n]
    return x_clean[idx]


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
    with private_rng():
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
                    with private_rng():
                        torch.manual_seed(self.seed)
                        np.random.seed(self.seed)
                        out.append(reduce_channels(self._captum(m, xb, tb), tuple(x.shape[-2:])).cpu())
                finally:
                    np.random.set_state(np_state)
        return torch.cat(out) if out else torch.zeros(0, *x.shape[-2:])

    @abstractmethod
    def _captum(self, model: nn.Module, x: torch.Tensor, target) -> torch.Tensor: ...


from . import baselines, captum_methods, text  # noqa: F401  (register the attributors)
