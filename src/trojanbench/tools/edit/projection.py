"""`trigger-key-projection`: cancel the trigger's key direction with one rank-one update, no optimisation.

The trigger adds a key direction d to the layer's keys (the mean difference between keys of triggered inputs
and of their clean twins, over the positions where they differ). The edit

    W' = W - (W d) (C^-1 d)^T / (d^T C^-1 d)

maps d to nothing (W' d = 0) while changing W as little as possible on the keys clean data produces: ROME's
closed form with the key *difference* as key and the value zero. It is not ROME (no value is optimised), so
it carries a descriptive name.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import UserError
from . import (
    EditInputs,
    Editor,
    editable_module,
    insert_rank_one,
    key_second_moment,
    layer_keys,
    register,
    restore_requires_grad,
    working_copy,
)


def trigger_key_direction(model: nn.Module, layer: str, x_triggered: torch.Tensor, x_clean: torch.Tensor) -> torch.Tensor:
    """The mean key difference (triggered minus clean twin) over the positions the trigger changes."""
    diff = (layer_keys(model, layer, x_triggered) - layer_keys(model, layer, x_clean)).flatten(0, 1)
    norms = diff.norm(dim=1)
    moved = norms > 1e-6 * (1 + norms.max())
    if not moved.any():
        raise UserError(f"the trigger does not change the keys of layer {layer!r}")
    return diff[moved].mean(0)


@torch.no_grad()
def project_out_trigger_key(model: nn.Module, layer: str, x_triggered: torch.Tensor, x_clean: torch.Tensor,
                            x_reference: torch.Tensor, ridge: float = 0.1) -> nn.Module:
    """A frozen eval-mode copy of `model` whose `layer` maps the trigger's key direction to zero (see the
    module docstring); `x_reference` is clean data for the key statistics."""
    edited = working_copy(model)
    module = editable_module(edited, layer)
    d = trigger_key_direction(edited, layer, x_triggered, x_clean)
    w = module.weight.view(module.weight.shape[0], -1)
    insert_rank_one(module, d, -(w @ d), key_second_moment(edited, layer, x_reference, ridge))
    return edited


@register("trigger-key-projection")
class TriggerKeyProjection(Editor):
    """Map the trigger's key direction to zero in the traced layer with one rank-one update."""

    paper = "Meng et al., Locating and Editing Factual Associations in GPT, NeurIPS 2022 (closed form only)"
    fidelity = ("adapted: ROME's closed-form rank-one insertion with the key = the trigger's mean key difference "
                "(triggered minus clean twin) and the value zero; no value optimisation")

    def __init__(self, ridge: float = 0.1):
        """ridge 0.1 chosen on the dev zoo from 1e-3 / 1e-2 / 1e-1 (digits-dev train split;
        benchmarks/edit_tune.py; the measured sweep in benchmarks/results/edit_tune.json and docs/edit.md)."""
        self.ridge = ridge

    def edit(self, model: nn.Module, inputs: EditInputs) -> nn.Module:
        edited = project_out_trigger_key(model, self.layer_for(model, inputs), inputs.x_triggered, inputs.x_clean,
                                         inputs.x_budget, self.ridge)
        return restore_requires_grad(edited, model)
