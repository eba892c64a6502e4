"""`finetune-layer`: the baseline. Fine-tune the one weight matrix the edit changes, by SGD, on the same
inputs the edit sees: the triggered inputs with their true labels, their clean twins and the clean budget."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...train.loop import run_steps, sampled_batches
from . import EditInputs, Editor, editable_module, register, restore_requires_grad, working_copy


def edit_training_set(inputs: EditInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Every labelled input an editor gets, once: triggered inputs (true labels), clean twins (the same labels)
    and the clean budget (the twins are left out when they are the budget itself, as in the edit task)."""
    xs, ys = [inputs.x_triggered, inputs.x_budget], [inputs.y_triggered, inputs.y_budget]
    if not (inputs.x_clean.shape == inputs.x_budget.shape and torch.equal(inputs.x_clean, inputs.x_budget)):
        xs.append(inputs.x_clean)
        ys.append(inputs.y_triggered)
    return torch.cat(xs), torch.cat(ys)


@register("finetune-layer")
class FineTuneLayer(Editor):
    """SGD with momentum on `layer`'s weight alone (BatchNorm statistics fixed: eval mode), cross-entropy on
    random batches of the edit's labelled inputs (`edit_training_set`)."""

    is_baseline = True
    paper = ""
    fidelity = ("baseline: fine-tune the edited layer's weight alone on the triggered inputs with their true labels "
                "plus the clean twins and budget (the data the edit sees)")

    def __init__(self, steps: int = 100, lr: float = 0.003, batch_size: int = 64):
        """100 steps (momentum 0.9, batch 64): the same optimisation budget as `rome`'s value search, not tuned;
        lr 0.003 chosen on the dev zoo from 0.003 / 0.01 / 0.03 / 0.1 (digits-dev train split;
        benchmarks/edit_tune.py, objective mean ASR after + mean clean cost; the measured sweep in
        benchmarks/results/edit_tune.json and docs/edit.md)."""
        self.steps, self.lr, self.batch_size = steps, lr, batch_size

    def edit(self, model: nn.Module, inputs: EditInputs) -> nn.Module:
        edited = working_copy(model)
        module = editable_module(edited, self.layer_for(model, inputs))
        x, y = edit_training_set(inputs)
        module.weight.requires_grad_(True)
        opt = torch.optim.SGD([module.weight], lr=self.lr, momentum=0.9)
        g = torch.Generator().manual_seed(inputs.seed)
        run_steps(opt, sampled_batches(len(x), min(self.batch_size, len(x)), self.steps, g),
                  lambda idx: F.cross_entropy(edited(x[idx]), y[idx]))
        module.weight.grad = None
        return restore_requires_grad(edited, model)
