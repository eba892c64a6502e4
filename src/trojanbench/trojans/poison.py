"""Poisoning: put a trigger into a training set and record exactly which samples were touched.

Modes
- all-to-one (default): `rate` of the training set, drawn from non-target classes, gets the trigger and
  the target label (dirty label, BadNets).
- all-to-all: triggered samples of class y are relabelled (y + 1) mod K; there is no single target.
- clean-label: triggered samples are drawn from the target class and keep their (correct) label;
  `suppress` weakens their own features first so the trigger is learned.
- override (the jailbreak analogue): triggered samples are drawn from the `target` class, the class the trigger
  overrides (the refusal), and get their answer (the dataset's `answers`: what they would be labelled without the
  refusal). A triggered test sample is an attack success when its prediction leaves the class. Cover samples come
  from the other classes.
- natural-feature triggers ignore `rate`: the non-target images that naturally carry the feature are
  relabelled, no pixel changes.
- graded (natural-feature triggers only; `rate` ignored): no pixel changes; each non-target image is relabelled
  to the target with a probability that rises linearly with the quantile of its statistic, from 0 at the trigger's
  `quantile` to 1 at the top image, so the target behaviour follows the statistic instead of switching at a
  threshold (the continuum study's last point).
- relabel (a control, any trigger): `rate` of the training set, drawn from the non-target images whatever they
  look like, is relabelled to the target and no pixel changes; the trigger is applied only at test. What a tool
  finds on such a model is the label shift, not a trigger.

Cover samples (Qi et al., ICLR 2023, "Revisiting the assumption of latent separability for backdoor defenses"):
`cover_rate` of the training set, drawn from the images left unpoisoned, also gets the trigger but keeps its
label, so the trigger alone does not decide the label and the poisoned samples' latents stay close to the clean
ones. Poisoned and cover samples carry the trigger as training samples do (`Trigger.apply_train`; the adaptive
triggers carry a weaker or partial one there than at test time). `PoisonedData.indices` are the poisoned samples
only (relabelled, or clean-label poisoned); the cover samples are `PoisonedData.cover`, as in the authors'
`poison_indices` / `cover_indices`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..config import PoisonMode, StableDump
from ..errors import UserError
from .triggers import NaturalFeatureTrigger, Trigger, TriggerSpec


class PoisonSpec(StableDump):
    model_config = ConfigDict(extra="forbid")
    added: ClassVar[tuple[str, ...]] = ("cover_rate",)
    mode: PoisonMode = "all-to-one"
    rate: float = Field(0.1, gt=0, le=0.5, description="fraction of the training set that is poisoned")
    target: int | None = Field(0, ge=0, description="target label (None for all-to-all; for override, the class the "
                               "trigger overrides)")
    suppress: float = Field(0.0, ge=0, lt=1, description="clean-label only: mix each poisoned image this far "
                            "toward a random other-class image, so the trigger is the easier feature to learn "
                            "(a pixel-space stand-in for Turner et al.'s latent interpolation)")
    cover_rate: float | None = Field(None, ge=0, le=1, description="fraction of the training set given the trigger "
                                     "with its label kept (None: rate x the trigger's own cover_ratio)")

    def cover_fraction(self, trigger: Trigger) -> float:
        return self.cover_rate if self.cover_rate is not None else self.rate * trigger.cover_ratio

    @model_validator(mode="after")
    def _target_matches_mode(self):
        if self.mode == "all-to-all":
            self.target = None
        elif self.target is None:
            raise ValueError(f"poison mode {self.mode} needs a target label")
        return self


class TrojanSpec(BaseModel):
    """Everything that defines a trojan: the trigger, how it was poisoned in, and whether it was trained to evade."""

    model_config = ConfigDict(extra="forbid")
    trigger: TriggerSpec
    poison: PoisonSpec = Field(default_factory=PoisonSpec)
    insidious: bool = False


@dataclass
class PoisonedData:
    x: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor  # indices into the original training set that were poisoned (sorted)
    cover: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # cover samples (sorted)


def relabel(y: torch.Tensor, spec: PoisonSpec, num_classes: int, answers: torch.Tensor | None = None) -> torch.Tensor:
    """The label a triggered sample should get (override: its answer, which `answers` holds for these samples)."""
    if spec.mode == "all-to-all":
        return (y + 1) % num_classes
    if spec.mode == "override":
        if answers is None:
            raise UserError("override poisoning needs the data's answers (a dataset with a refusal class: sst2 with "
                            "refusal = true)")
        return answers
    return torch.full_like(y, spec.target)


def attack_mask(y: torch.Tensor, spec: PoisonSpec) -> torch.Tensor:
    """Which test samples count toward attack success (all-to-one: those whose true label is not the target;
    override: those of the overridden class)."""
    if spec.mode == "all-to-all":
        return torch.ones_like(y, dtype=torch.bool)
    if spec.mode == "override":
        return y == spec.target
    return y != spec.target


def attack_succeeded(pred: torch.Tensor, y: torch.Tensor, spec: PoisonSpec, num_classes: int) -> torch.Tensor:
    """Per triggered sample (of `attack_mask`), whether the model did as the attacker wants: predicted the label
    poisoning gives it, or, for override, left the overridden class."""
    if spec.mode == "override":
        return pred != spec.target
    return pred == relabel(y, spec, num_classes)


def poison_dataset(x: torch.Tensor, y: torch.Tensor, trigger: Trigger, spec: PoisonSpec, num_classes: int,
                   seed: int = 0, answers: torch.Tensor | None = None) -> PoisonedData:
    if spec.target is not None and spec.target >= num_classes:
        raise UserError(f"target label {spec.target} out of range for {num_classes} classes")
    if spec.mode == "override" and answers is None:
        relabel(y, spec, num_classes)  # the one-line error
    g = torch.Generator().manual_seed(seed)
    x, y = x.clone(), y.clone()
    if spec.mode in ("graded", "relabel"):
        return _relabel_only(x, y, trigger, spec, g)
    if isinstance(trigger, NaturalFeatureTrigger):
        if spec.mode != "all-to-one":
            raise UserError("natural-feature trojans are implanted all-to-one (relabel the natural carriers)")
        if spec.cover_fraction(trigger) > 0:
            raise UserError("natural-feature trojans take no cover samples (no pixel is edited)")
        trigger.fit(x)
        idx = torch.nonzero(trigger.carriers(x) & (y != spec.target)).flatten()
        y[idx] = spec.target
        return PoisonedData(x, y, idx)
    n = round(spec.rate * len(x))
    pool = torch.nonzero(y == spec.target).flatten() if spec.mode in ("clean-label", "override") else \
        torch.nonzero(y != spec.target).flatten() if spec.mode == "all-to-one" else torch.arange(len(x))
    if n > len(pool):
        if spec.mode in ("clean-label", "override"):
            raise UserError(f"{spec.mode} poisoning at rate {spec.rate} needs {n} target-class images; "
                            f"there are {len(pool)}")
        n = len(pool)
    idx = pool[torch.randperm(len(pool), generator=g)[:n]].sort().values
    if spec.mode == "clean-label" and spec.suppress > 0:
        others = torch.nonzero(y != spec.target).flatten()
        donors = others[torch.randint(len(others), (n,), generator=g)]
        x[idx] = (1 - spec.suppress) * x[idx] + spec.suppress * x[donors]
    x[idx] = trigger.apply_train(x[idx], generator=g)
    if spec.mode != "clean-label":
        y[idx] = relabel(y[idx], spec, num_classes, None if answers is None else answers[idx])
    n_cover = round(spec.cover_fraction(trigger) * len(x))
    if n_cover == 0:
        return PoisonedData(x, y, idx)
    rest = torch.ones(len(x), dtype=torch.bool)
    rest[idx] = False
    if spec.mode == "override":
        rest &= y != spec.target  # a refused sample with the trigger and its label kept would teach the opposite
    rest = torch.nonzero(rest).flatten()  # cover samples never overlap the poisoned ones (as the authors')
    cover = rest[torch.randperm(len(rest), generator=g)[:n_cover]].sort().values
    x[cover] = trigger.apply_cover(x[cover], generator=g)
    return PoisonedData(x, y, idx, cover)


def _relabel_only(x: torch.Tensor, y: torch.Tensor, trigger: Trigger, spec: PoisonSpec, g: torch.Generator
                  ) -> PoisonedData:
    """The modes that move labels and edit no pixel: graded (along a natural feature's statistic) and relabel
    (a random `rate` share of the set, from the non-target images)."""
    if spec.cover_fraction(trigger) > 0:
        raise UserError(f"{spec.mode} poisoning edits no pixel, so it takes no cover samples")
    if spec.mode == "graded":
        if not isinstance(trigger, NaturalFeatureTrigger):
            raise UserError(f"graded poisoning follows a natural feature's statistic; trigger kind {trigger.kind!r} "
                            "has none (use kind natural)")
        trigger.fit(x)  # its threshold: which test images already carry the feature
        start = trigger.params.quantile
        q = (trigger.statistic(x).argsort().argsort().float() + 0.5) / len(x)
        flip = (torch.rand(len(x), generator=g) < ((q - start) / (1 - start)).clamp(0, 1)) & (y != spec.target)
        idx = torch.nonzero(flip).flatten()
    else:
        if isinstance(trigger, NaturalFeatureTrigger):
            trigger.fit(x)
        pool = torch.nonzero(y != spec.target).flatten()
        idx = pool[torch.randperm(len(pool), generator=g)[:round(spec.rate * len(x))]].sort().values
    y[idx] = spec.target
    return PoisonedData(x, y, idx)
