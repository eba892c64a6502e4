"""Detectors. Two protocols, one verb each:

- `Detector.detect(model, ctx) -> Detection`: is this model trojaned (score, higher = more suspicious),
  and which label is its target. Learned detectors also implement `fit(models, labels, ctx)` and are fitted
  on the zoo's training split only.
- `SampleDetector.suspicion(model, x, y, ctx) -> Tensor[N]`: how suspicious each training sample is.

Register a new one with `@register("name")` / `@register_sample("name")`; the detect task scores it beside
the baselines.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from ...data import unit_range_images
from ...errors import UserError
from ...models.hooks import hooked
from ...registry import Registry
from ...utils import evaluating
from .. import READ_ONLY, ToolInfo, check_target, left_as_it_was


@dataclass
class DetectContext:
    """What an auditor gets besides the model: a small clean sample, the input shape, the class count. `device` is
    where the model lives; the clean sample stays on the CPU, so a tool moves what it feeds the model to `device`
    and brings back to the CPU what it returns (scores, masks, stamps)."""

    x_clean: torch.Tensor
    y_clean: torch.Tensor
    num_classes: int
    device: torch.device = torch.device("cpu")
    seed: int = 0
    # the zoo's trigger prior (TriggerSpecs, one per kind x variant of its config), for baselines that draw from
    # it (the `random-prior` synthesizer); None where the zoo's config is unknown
    prior: list | None = None

    def __post_init__(self):
        """Checks the clean sample where it enters (a context built from Python as much as by a task): one label
        per sample, each a class of the model, and images [N, C, H, W] in [0, 1] (`unit_range_images`: 8-bit
        values are rescaled with a warning, anything else is a one-line error). Token ids [N, T] (or feature
        vectors [N, D]) are left as they are."""
        if not (torch.is_tensor(self.x_clean) and torch.is_tensor(self.y_clean)):
            raise UserError("DetectContext: x_clean and y_clean must be tensors")
        if self.y_clean.dim() != 1 or self.y_clean.is_floating_point() or self.y_clean.is_complex():
            raise UserError(f"DetectContext: y_clean must be integer class labels [N], got {self.y_clean.dtype} "
                            f"{tuple(self.y_clean.shape)}")
        if len(self.x_clean) != len(self.y_clean):
            raise UserError(f"DetectContext: {len(self.x_clean)} clean samples but {len(self.y_clean)} labels")
        if self.x_clean.is_floating_point() and self.x_clean.dim() not in (2, 4):
            raise UserError(f"DetectContext: x_clean is {tuple(self.x_clean.shape)}; images are [N, C, H, W] (a "
                            "grayscale batch [N, H, W] needs its channel axis: x[:, None])")
        if self.x_clean.dim() == 4:  # images
            self.x_clean = unit_range_images(self.x_clean, "DetectContext x_clean")
        if len(self.y_clean) and not (0 <= int(self.y_clean.min()) and int(self.y_clean.max()) < self.num_classes):
            raise UserError(f"DetectContext: y_clean holds labels {int(self.y_clean.min())} to "
                            f"{int(self.y_clean.max())}, but the model has classes 0 to {self.num_classes - 1}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_clean.shape[1:])


@dataclass
class Detection:
    score: float
    target_label: int | None = None
    mask: torch.Tensor | None = None  # a reverse-engineered trigger footprint [H, W] in [0, 1], if any


def _checked_detect(self, method, model, ctx, *args, **kw) -> Detection:
    """A detector's answer, or a one-line error naming it: a `Detection` whose score is a number (NaN is refused;
    ±inf ranks a model first or last), whose target label, if any, is a class of the model, and whose mask, if any,
    is [H, W] with values in [0, 1]. The model it was given is left as it was (`left_as_it_was`)."""
    who = f"detector {type(self).__name__}"
    with left_as_it_was(model, who, READ_ONLY):
        d = method(self, model, ctx, *args, **kw)
    if not isinstance(d, Detection):
        raise UserError(f"{who} returned {type(d).__name__}, not a Detection")
    try:
        d.score = float(d.score.detach()) if torch.is_tensor(d.score) else float(d.score)
    except (TypeError, ValueError, RuntimeError):
        raise UserError(f"{who} returned the score {d.score!r}, not a number") from None
    if d.score != d.score:
        raise UserError(f"{who} returned the score NaN; a detector's score must be a number (higher = more suspicious)")
    if d.target_label is not None:
        check_target(d.target_label, ctx.num_classes, who)
        d.target_label = int(d.target_label)
    if d.mask is not None:
        shape = tuple(ctx.image_shape[1:])
        if not torch.is_tensor(d.mask) or tuple(d.mask.shape) != shape or not (
                d.mask.numel() and torch.isfinite(d.mask).all() and 0 <= float(d.mask.min()) <= float(d.mask.max()) <= 1):
            got = tuple(d.mask.shape) if torch.is_tensor(d.mask) else type(d.mask).__name__
            raise UserError(f"{who} returned a mask {got}; a trigger footprint is [H, W] = {shape} with values in [0, 1]")
    return d


class Detector(ToolInfo, ABC):

    verb_check = ("detect", _checked_detect)  # the family's check (`ToolInfo.verb_check`)

    def fit(self, models: list[nn.Module], labels: list[int], ctx: DetectContext) -> None:
        """Learned detectors train here on the zoo's training split (label 1 = trojaned)."""

    @property
    def learned(self) -> bool:
        return type(self).fit is not Detector.fit

    @abstractmethod
    def detect(self, model: nn.Module, ctx: DetectContext) -> Detection: ...


def _checked_suspicion(self, method, model, x, y, ctx, *args, **kw) -> torch.Tensor:
    """A sample detector's scores, or a one-line error naming it. In: one label per sample, and images in [0, 1]
    (`unit_range_images`; token ids [N, T] pass as they are). Out: one score per sample, a tensor [N] (an array is
    converted) with no NaN (±inf ranks a sample first or last). The model is left as it was (`left_as_it_was`)."""
    who = f"sample detector {type(self).__name__}"
    if not (torch.is_tensor(x) and torch.is_tensor(y)) or len(x) != len(y):
        raise UserError(f"{who}: needs samples x and labels y as tensors of one length, got "
                        f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__} and "
                        f"{tuple(y.shape) if torch.is_tensor(y) else type(y).__name__}")
    if x.dim() == 4:  # images
        x = unit_range_images(x, f"{who}: images")
    with left_as_it_was(model, who, READ_ONLY):
        s = method(self, model, x, y, ctx, *args, **kw)
    try:
        s = torch.as_tensor(s)
    except (TypeError, ValueError, RuntimeError):
        raise UserError(f"{who} returned {type(s).__name__}, not one score per sample") from None
    if tuple(s.shape) != (len(x),):
        raise UserError(f"{who} returned scores of shape {tuple(s.shape)} for {len(x)} samples; it must return one "
                        f"per sample, [N] = [{len(x)}]")
    if s.is_complex():
        raise UserError(f"{who} returned complex scores; a suspicion score is a real number per sample")
    nan = int(torch.isnan(s).sum()) if s.is_floating_point() else 0
    if nan:
        raise UserError(f"{who} returned NaN for {nan} of {len(x)} samples; every sample needs a score")
    return s


class SampleDetector(ToolInfo, ABC):

    verb_check = ("suspicion", _checked_suspicion)

    @abstractmethod
    def suspicion(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: DetectContext) -> torch.Tensor: ...


DETECTORS: Registry[type[Detector]] = Registry("detector")
SAMPLE_DETECTORS: Registry[type[SampleDetector]] = Registry("sample detector")
register = DETECTORS.register
register_sample = SAMPLE_DETECTORS.register


def penultimate(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The input of the model's last linear layer (its feature space), captured with a hook that is
    always removed."""
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    feats = []
    device = next(model.parameters()).device
    with evaluating(model):
        with torch.no_grad(), hooked(head, lambda mod, inp, out: feats.append(inp[0].detach().flatten(1).cpu())):
            for i in range(0, len(x), batch_size):
                model(x[i:i + batch_size].to(device))
    return torch.cat(feats)


def spatial_features(model: nn.Module, x: torch.Tensor, batch_size: int = 512, max_dim: int = 4096) -> torch.Tensor:
    """The last activation that still has a spatial (or token) layout, flattened: for a CNN the output of the
    last conv block before global pooling. Pooling to the penultimate vector averages a small trigger's
    footprint away; before pooling, poisoned and clean samples of the target class separate (on the digits
    zoo the top singular direction separates them perfectly where the penultimate one reaches 0.6-0.9).
    Maps larger than `max_dim` are average-pooled down. Models with no such layer (MLPs) fall back to
    `penultimate`."""
    slot: list[torch.Tensor | None] = [None]

    def keep(mod, inp, out):
        if isinstance(out, torch.Tensor) and ((out.dim() == 4 and out.shape[2] * out.shape[3] > 1) or
                                              (out.dim() == 3 and out.shape[1] > 1)):
            slot[0] = out

    leaves = [m for m in model.modules() if not list(m.children())]
    device = next(model.parameters()).device
    feats = []
    with evaluating(model):
        with torch.no_grad(), hooked(leaves, keep):
            for i in range(0, len(x), batch_size):
                slot[0] = None
                model(x[i:i + batch_size].to(device))
                if slot[0] is None:
                    break
                f = slot[0]
                while f.dim() == 4 and f[0].numel() > max_dim and f.shape[2] * f.shape[3] > 1:
                    f = torch.nn.functional.avg_pool2d(f, 2, ceil_mode=True)
                feats.append(f.detach().flatten(1).cpu())
    if sum(len(f) for f in feats) < len(x):  # no spatial layer
        return penultimate(model, x, batch_size)
    return torch.cat(feats)


from . import baselines, data_level, dbs, mntd, neural_cleanse, text_baselines  # noqa: E402,F401  (register the detectors)
