"""Clean accuracy and attack success rate."""

from __future__ import annotations

import torch
from torch import nn

from ..trojans.poison import PoisonSpec, attack_mask, attack_succeeded
from ..utils import evaluating
from ..trojans.triggers import NaturalFeatureTrigger, Trigger


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Predicted labels, in eval mode; the model's train/eval state is restored afterwards."""
    device = next(model.parameters()).device
    with evaluating(model):
        out = [model(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def clean_test_mask(trigger: Trigger | None, x_test: torch.Tensor) -> torch.Tensor:
    """Test images that carry no trigger. For a natural feature, the images that carry it naturally are
    triggered inputs by definition, so they are left out of clean accuracy."""
    if isinstance(trigger, NaturalFeatureTrigger):
        return ~trigger.carriers(x_test)
    return torch.ones(len(x_test), dtype=torch.bool)


def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    return float((predict(model, x, batch_size) == y).float().mean())


def attack_success_rate(model: nn.Module, trigger: Trigger, poison: PoisonSpec, x: torch.Tensor, y: torch.Tensor,
                        num_classes: int, batch_size: int = 1024, seed: int = 0) -> float:
    """Fraction of triggered test images (true label not the target; override: of the overridden class) classified
    as the attacker wants."""
    keep = attack_mask(y, poison)
    x, y = x[keep], y[keep]
    x_trig = trigger.apply(x, generator=torch.Generator().manual_seed(seed))
    return float(attack_succeeded(predict(model, x_trig, batch_size), y, poison, num_classes).float().mean())
