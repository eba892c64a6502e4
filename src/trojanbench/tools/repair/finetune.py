"""The reference and the two anchors: plain fine-tuning, do nothing, retrain from scratch on the budget."""

from __future__ import annotations

import torch

from ...models import build_model
from . import Repairer, fit, register, steps_for, strong_augment, working_copy


@register("do-nothing")
class DoNothing(Repairer):
    """Anchor: the trojaned model as it is (a copy)."""

    is_baseline = True

    def repair(self, model, x_clean, y_clean, ctx):
        return working_copy(model, ctx)


@register("finetune")
class FineTune(Repairer):
    """The reference: fine-tune every weight on the clean budget with the data's own augmentation."""

    is_baseline = True

    def __init__(self, epochs: int = 20, lr: float = 0.01, min_steps: int = 60):
        self.epochs, self.lr, self.min_steps = epochs, lr, min_steps

    def repair(self, model, x_clean, y_clean, ctx):
        m = working_copy(model, ctx)
        return fit(m, x_clean, y_clean, ctx, steps=steps_for(len(x_clean), self.epochs, min_steps=self.min_steps), lr=self.lr)


@register("retrain")
class Retrain(Repairer):
    """Anchor: the same architecture from a fresh initialisation, trained on the clean budget only (with the
    same strong augmentation self-distillation gets, so the two differ only in the teacher's labels)."""

    is_baseline = True

    def __init__(self, steps: int = 250, lr: float = 0.05):
        self.steps, self.lr = steps, lr

    def repair(self, model, x_clean, y_clean, ctx):
        torch.manual_seed(ctx.seed)
        m = build_model(ctx.arch, **ctx.arch_kwargs)
        if hasattr(m, "init_from_data"):
            m.init_from_data(x_clean)
        return fit(m, x_clean, y_clean, ctx, steps=self.steps, lr=self.lr, views=lambda xb, g: strong_augment(xb, ctx, g))
