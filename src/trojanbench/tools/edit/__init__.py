"""Rank-one editing of one weight matrix (after ROME), aimed at a trojan.

A layer is a linear map from keys to values: for a Linear layer the key is its input vector; for a Conv2d
it is the unfolded input patch (in_channels x k x k) at each position, so the conv is a matrix
W [out, in*k*k] applied at every position. The trigger adds a key direction d (the mean difference between
keys of triggered inputs and of their clean twins, over the positions where they differ). The edit

    W' = W - (W d) (C^-1 d)^T / (d^T C^-1 d)

maps d to nothing (W' d = 0) while changing W as little as possible on the keys clean data produces (C is
their second-moment matrix, regularised): ROME's closed form with key d and value 0.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..locate import hooked


def _keys(module: nn.Module, inp: torch.Tensor) -> torch.Tensor:
    """[N, positions, key_dim] keys of a Conv2d (unfolded patches) or a Linear (rows of its input)."""
    if isinstance(module, nn.Conv2d):
        cols = F.unfold(inp, module.kernel_size, module.dilation, module.padding, module.stride)  # [N, D, L]
        return cols.transpose(1, 2)
    if isinstance(module, nn.Linear):
        return inp.reshape(inp.shape[0], -1, inp.shape[-1])
    raise TypeError(f"rank-one editing needs a Conv2d or Linear layer, got {type(module).__name__}")


@torch.no_grad()
def layer_keys(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    module = dict(model.named_modules())[layer]
    got = {}
    with hooked(module, lambda m, i, o: got.__setitem__("k", _keys(m, i[0].detach()))):
        model.eval()(x)
    return got["k"]


@torch.no_grad()
def rank_one_edit(model: nn.Module, layer: str, x_triggered: torch.Tensor, x_clean: torch.Tensor,
                  x_reference: torch.Tensor, ridge: float = 1e-3) -> nn.Module:
    """A copy of `model` with one rank-one update of `layer`'s weight that cancels the trigger's key direction.
    `x_triggered[i]` is `x_clean[i]` with the trigger; `x_reference` is clean data for the key statistics."""
    edited = copy.deepcopy(model).eval()
    module = dict(edited.named_modules())[layer]
    k_trig, k_clean = layer_keys(edited, layer, x_triggered), layer_keys(edited, layer, x_clean)
    diff = (k_trig - k_clean).flatten(0, 1)
    moved = diff.norm(dim=1) > 1e-6 * (1 + diff.norm(dim=1).max())
    if not moved.any():
        raise ValueError(f"the trigger does not change the keys of layer {layer!r}")
    d = diff[moved].mean(0)
    keys = layer_keys(edited, layer, x_reference).flatten(0, 1)
    cov = keys.T @ keys / len(keys)
    cov += ridge * cov.diagonal().mean() * torch.eye(len(cov))
    c_inv_d = torch.linalg.solve(cov, d)
    w = module.weight.view(module.weight.shape[0], -1)  # [out, key_dim]
    w -= torch.outer(w @ d, c_inv_d) / (d @ c_inv_d)
    return edited
