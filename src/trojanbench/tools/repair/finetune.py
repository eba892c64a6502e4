"""The fine-tuning references and the two anchors: plain fine-tuning, fine-tuning with the strongest method's
budget, do nothing, retrain from scratch on the budget."""

from __future__ import annotations

from . import STRONG_LR, STRONG_STEPS, Repairer, fit, fresh_model, register, steps_for, strong_augment, strong_views, working_copy


@register("do-nothing")
class DoNothing(Repairer):
    """Anchor: the trojaned model as it is (a copy)."""

    modalities = ("image", "text")
    is_baseline = True
    is_anchor = True  # a reference point, not a bar to beat
    fidelity = "baseline: the trojaned model unchanged (the no-repair anchor)"

    def repair(self, model, x_clean, y_clean, ctx):
        return working_copy(model, ctx)


@register("finetune")
class FineTune(Repairer):
    """The reference: fine-tune every weight on the clean budget with the data's own augmentation."""

    modalities = ("image", "text")
    is_baseline = True
    fidelity = "baseline: plain fine-tuning of every weight on the clean budget (20 epochs, lr 0.01, light augmentation)"

    def __init__(self, epochs: int = 20, lr: float = 0.01, min_steps: int = 60):
        self.epochs, self.lr, self.min_steps = epochs, lr, min_steps

    def repair(self, model, x_clean, y_clean, ctx):
        m = working_copy(model, ctx)
        return fit(m, x_clean, y_clean, ctx, steps=steps_for(len(x_clean), self.epochs, min_steps=self.min_steps), lr=self.lr)


@register("finetune-matched")
class FineTuneMatched(Repairer):
    """The reference with the strongest repairers' budget (self-distillation, the KD student): fine-tune every
    weight of the trojaned model for the same 250 steps, at the same peak lr 0.05 with the same warm-up and linear
    decay, on the same views (64 strongly augmented views of the budget plus a mixup blend of each, the blends
    labelled with their mixed one-hot labels) and the same clean budget. It differs from self-distillation only in
    starting from the trojaned weights and learning from the true labels instead of the teacher's. Fine-tuning at
    a high learning rate is known to remove many backdoors (FT-SAM: Zhu et al., ICCV 2023), so plain
    fine-tuning at lr 0.01 alone is not a fair bar."""

    modalities = ("image", "text")
    is_baseline = True
    fidelity = "baseline: fine-tuning with the strongest method's steps, lr schedule, strong augmentation and mixup"

    def __init__(self, steps: int = STRONG_STEPS, lr: float = STRONG_LR, mixup: bool = True):
        self.steps, self.lr, self.mixup = steps, lr, mixup

    def repair(self, model, x_clean, y_clean, ctx):
        m = working_copy(model, ctx)
        return fit(m, x_clean, y_clean, ctx, steps=self.steps, lr=self.lr,
                   views=lambda xb, yb, g: strong_views(xb, yb, g, ctx, mix=self.mixup, soft_targets=True))


@register("retrain")
class Retrain(Repairer):
    """Anchor: the same architecture from a fresh initialisation, trained on the clean budget only (with the
    same strong augmentation self-distillation gets, so the two differ only in the teacher's labels)."""

    modalities = ("image", "text")
    is_baseline = True
    is_anchor = True
    fidelity = "baseline: a fresh model trained on the clean budget alone (the from-scratch anchor)"

    def __init__(self, steps: int = STRONG_STEPS, lr: float = STRONG_LR):
        self.steps, self.lr = steps, lr

    def repair(self, model, x_clean, y_clean, ctx):
        m = fresh_model(ctx, ctx.seed).to(ctx.device)
        if hasattr(m, "init_from_data"):
            m.init_from_data(x_clean.to(ctx.device))
        return fit(m, x_clean, y_clean, ctx, steps=self.steps, lr=self.lr,
                   views=lambda xb, yb, g: (strong_augment(xb, ctx, g), yb))
