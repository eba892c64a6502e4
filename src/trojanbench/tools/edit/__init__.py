"""Editors: change one weight matrix of a trojaned model so the trigger stops working. One protocol, one verb:

- `Editor.edit(model, inputs: EditInputs) -> nn.Module`: an edited copy (the input model is never changed);
- `Editor.layer_for(model, inputs) -> str`: the layer it edits (the traced one, `inputs.layer`, unless the
  editor is a control that picks its own).

Every editor and baseline gets the same `EditInputs`: the layer causal tracing named, trigger-stamped inputs
with their true labels, their clean twins, and the clean budget. A layer is a linear map from keys to values:
a Linear's key is its input vector (one per token for token inputs); a Conv2d's key is the unfolded input
patch (in_channels x k x k) at each position, so the conv is a matrix W [out, in*k*k] applied at every
position.

Registered: `rome` (Meng et al. 2022, `rome.py`), `trigger-key-projection` (the older value-zero projection,
`projection.py`), `finetune-layer` (the baseline, `finetune.py`), and for each of `rome` and `finetune-layer`
the controls `@last-layer` and `@random-layer` (`controls.py`), which ignore the traced layer, so the board
shows whether tracing adds anything.
"""

from __future__ import annotations

import copy
import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UserError
from ...models.hooks import hooked
from ...registry import Registry
from ...utils import evaluating
from .. import ToolInfo, checked_copy
from ..locate import traceable_layers


@dataclass(frozen=True)
class EditInputs:
    """What every editor sees. `x_triggered[i]` is `x_clean[i]` with the trigger and `y_triggered[i]` its true
    label (the label of `x_clean[i]`); (x_budget, y_budget) is the clean budget; `layer` is the layer causal
    tracing named; `seed` drives every random choice (pass a different one per model)."""

    layer: str
    x_triggered: torch.Tensor
    y_triggered: torch.Tensor
    x_clean: torch.Tensor
    x_budget: torch.Tensor
    y_budget: torch.Tensor
    seed: int = 0

    def __post_init__(self):
        if self.x_triggered.shape != self.x_clean.shape:
            raise UserError(f"x_triggered {tuple(self.x_triggered.shape)} and its clean twins x_clean "
                            f"{tuple(self.x_clean.shape)} differ in shape")
        if len(self.y_triggered) != len(self.x_triggered) or len(self.y_budget) != len(self.x_budget):
            raise UserError("every triggered and every budget input needs one true label")
        if len(self.x_triggered) == 0 or len(self.x_budget) == 0:
            raise UserError("editing needs at least one triggered input and one clean budget input")

    def to(self, device: torch.device | str) -> EditInputs:
        """The same inputs on `device`: editors feed them to the model as they are, so they must live where the
        model does."""
        tensors = ("x_triggered", "y_triggered", "x_clean", "x_budget", "y_budget")
        return replace(self, **{name: getattr(self, name).to(device) for name in tensors})


class Editor(ToolInfo, ABC):

    verb_check = ("edit", checked_copy("editor"))
    """`edit(model, inputs)` returns an edited copy of `model` in eval mode; `model` itself is never changed
    (parameters, buffers, mode, requires_grad). `uses_trace` is False for the controls that pick their own
    layer (the task then does not charge them the trace's time). Every editor works on a Linear's keys per token
    as on a Conv2d's per position, so on text models too (the edit track gives them aligned clean twins)."""

    uses_trace: ClassVar[bool] = True
    modalities: ClassVar[tuple[str, ...]] = ("image", "text")

    def layer_for(self, model: nn.Module, inputs: EditInputs) -> str:
        """The layer this editor changes: the traced one."""
        return inputs.layer

    @abstractmethod
    def edit(self, model: nn.Module, inputs: EditInputs) -> nn.Module: ...


EDITORS: Registry[type[Editor]] = Registry("editor")
register = EDITORS.register


def editable_module(model: nn.Module, layer: str) -> nn.Conv2d | nn.Linear:
    module = dict(model.named_modules()).get(layer)
    if not isinstance(module, (nn.Conv2d, nn.Linear)):
        what = "no such layer" if module is None else type(module).__name__
        raise UserError(f"layer {layer!r} cannot be edited ({what}); editable layers: {', '.join(traceable_layers(model))}")
    return module


def working_copy(model: nn.Module) -> nn.Module:
    """A frozen copy in eval mode (BatchNorm statistics stay fixed): editors change only this copy."""
    edited = copy.deepcopy(model).eval()
    for p in edited.parameters():
        p.requires_grad_(False)
    return edited


def restore_requires_grad(edited: nn.Module, model: nn.Module) -> nn.Module:
    """Give the edited copy the requires_grad flags of the model it came from."""
    for p, q in zip(edited.parameters(), model.parameters()):
        p.requires_grad_(q.requires_grad)
    return edited.eval()


def model_seed(model: nn.Module, seed: int) -> int:
    """A seed that depends on `seed` and on the model's weights, so a control that draws a layer at random
    draws independently for every model of a zoo even when the caller passes one seed to all."""
    h = hashlib.sha256(str(seed).encode())
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes()[:4096])
    return int.from_bytes(h.digest()[:8], "little")


def _keys(module: nn.Module, inp: torch.Tensor) -> torch.Tensor:
    """[N, positions, key_dim] keys of a Conv2d (unfolded patches) or a Linear (rows of its input)."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or not isinstance(module.padding, tuple) or module.padding_mode != "zeros":
            raise UserError("rank-one editing needs an ungrouped, zero- and explicitly padded Conv2d")
        cols = F.unfold(inp, module.kernel_size, module.dilation, module.padding, module.stride)  # [N, D, L]
        return cols.transpose(1, 2)
    if isinstance(module, nn.Linear):
        return inp.reshape(inp.shape[0], -1, inp.shape[-1])
    raise UserError(f"rank-one editing needs a Conv2d or Linear layer, got {type(module).__name__}")


def from_positions(per_position: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A tensor [N, positions, C] (positions in the order of `_keys`) laid out like the layer output `like`:
    [N, C, H, W] for a Conv2d, [N, tokens, C] or [N, C] for a Linear."""
    if like.dim() == 4:
        return per_position.transpose(1, 2).reshape(like.shape)
    return per_position.reshape(like.shape)


@torch.no_grad()
def layer_keys(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """[N, positions, key_dim] keys of `layer` on inputs `x` (the model is run in eval mode; its mode is restored)."""
    module = dict(model.named_modules())[layer]
    got = {}
    with evaluating(model), hooked(module, lambda m, i, o: got.__setitem__("k", _keys(m, i[0].detach()))):
        model(x)
    return got["k"]


def key_second_moment(model: nn.Module, layer: str, x: torch.Tensor, ridge: float) -> torch.Tensor:
    """C = E[k k^T] over every position of the clean inputs `x` (uncentred, as ROME's `mom2`), plus
    `ridge` x its mean diagonal: a small clean budget gives fewer keys than key dimensions at a head."""
    keys = layer_keys(model, layer, x).flatten(0, 1)
    cov = keys.T @ keys / len(keys)
    return cov + ridge * cov.diagonal().mean().clamp_min(1e-12) * torch.eye(len(cov), dtype=cov.dtype, device=cov.device)


@torch.no_grad()
def insert_rank_one(module: nn.Conv2d | nn.Linear, key: torch.Tensor, residual: torch.Tensor, cov: torch.Tensor) -> None:
    """ROME's closed form, in place: W' = W + r (C^-1 k)^T / (k^T C^-1 k), so that W' k = W k + r and keys
    that clean data produces (C their second moment) move as little as possible."""
    c_inv_k = torch.linalg.solve(cov, key)
    w = module.weight.view(module.weight.shape[0], -1)  # [out, key_dim]; a view, so this writes the weight
    w += torch.outer(residual, c_inv_k) / (key @ c_inv_k)


from . import controls, finetune, projection, rome  # noqa: F401  (register the editors)
