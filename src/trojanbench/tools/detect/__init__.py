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

from ...models.hooks import hooked
from ...registry import Registry
from ...utils import evaluating
from .. import ToolInfo


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

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_clean.shape[1:])


@dataclass
class Detection:
    score: float
    target_label: int | None = None
    mask: torch.Tensor | None = None  # a reverse-engineered trigger footprint [H, W] in [0, 1], if any


class Detector(ToolInfo, ABC):

    def fit(self, models: list[nn.Module], labels: list[int], ctx: DetectContext) -> None:
        """Learned detectors train here on the zoo's training split (label 1 = trojaned)."""

    @property
    def learned(self) -> bool:
        return type(self).fit is not Detector.fit

    @abstractmethod
    def detect(self, model: nn.Module, ctx: DetectContext) -> Detection: ...


class SampleDetector(ToolInfo, ABC):

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
