"""Fine-pruning (Liu et al., 2018): prune the last convolution's channels that stay dormant on clean data,
where a backdoor tends to hide, then fine-tune with the pruned channels held at zero."""

from __future__ import annotations

import math

import torch
from torch import nn

from ...models.hooks import hooked
from ...train.evaluate import predict
from ...utils import evaluating
from . import Repairer, fit, register, steps_for, working_copy


def last_conv_block(model: nn.Module) -> tuple[nn.Conv2d, nn.BatchNorm2d | None, nn.Module | None]:
    """The model's last Conv2d, the BatchNorm2d that follows it (if any) and the first ReLU after that
    (in module order); raises ValueError if the model has no convolution."""
    mods = list(model.modules())
    convs = [i for i, m in enumerate(mods) if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("fine-pruning needs a convolutional model")
    i = convs[-1]
    conv = mods[i]
    bn = next((m for m in mods[i + 1:] if isinstance(m, nn.BatchNorm2d) and m.num_features == conv.out_channels), None)
    act = next((m for m in mods[i + 1:] if isinstance(m, (nn.ReLU, nn.GELU, nn.SiLU))), None)
    return conv, bn, act


@torch.no_grad()
def channel_activity(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean activation per channel of `layer`'s output on `x` (eval mode; the hook is always removed)."""
    acts: list[torch.Tensor] = []
    with evaluating(model):
        with hooked(layer, lambda mod, inp, out: acts.append(out.detach().mean((0, 2, 3)))):
            model(x)
    return acts[0]


@register("fine-pruning")
class FinePruning(Repairer):
    """Fine-pruning (Liu et al., 2018): rank the last convolution's channels by mean activation on the clean
    budget (the defender's clean data), prune them in increasing order of activation and stop before the budget
    accuracy falls more than `max_drop` below the unpruned model's (the paper's "pre-determined threshold"), then
    fine-tune every weight on the same clean data like the `finetune` reference, the pruned channels held at zero.

    The paper prunes one channel per iteration; here a step prunes ceil(C / 64) channels of a C-channel layer
    (one channel on the digits CNNs, 8 on a ResNet-18) to bound the forward passes."""

    version = "2"  # paper's procedure: channel by channel, no cap on the pruned fraction (was a 5% grid up to 80%)
    paper = ("Liu, Dolan-Gavitt & Garg (2018). Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural "
             "Networks. RAID")
    fidelity = "faithful"
    max_steps = 64

    def __init__(self, max_drop: float = 0.10, epochs: int = 20, lr: float = 0.01):
        self.max_drop, self.epochs, self.lr = max_drop, epochs, lr

    def repair(self, model, x_clean, y_clean, ctx):
        m = working_copy(model, ctx)
        conv, bn, act = last_conv_block(m)
        x, y = x_clean.to(ctx.device), y_clean.to(ctx.device)
        order = channel_activity(m, act or bn or conv, x).argsort()  # most dormant first
        base = float((predict(m, x) == y.cpu()).float().mean())
        params = [conv.weight] + ([bn.weight, bn.bias] if bn is not None else [conv.bias] if conv.bias is not None else [])
        original = [p.detach().clone() for p in params]
        chosen = order[:0]
        n = conv.out_channels
        step = math.ceil(n / self.max_steps)
        for k in range(step, n + 1, step):
            pruned = order[:k]
            self._zero(params, original, pruned)
            if float((predict(m, x) == y.cpu()).float().mean()) < base - self.max_drop:
                break
            chosen = pruned
        self._zero(params, original, chosen)
        self.pruned_fraction = len(chosen) / n
        after = (lambda: self._zero(params, None, chosen)) if len(chosen) else None
        return fit(m, x_clean, y_clean, ctx, steps=steps_for(len(x_clean), self.epochs, min_steps=60), lr=self.lr,
                   after_step=after)

    @staticmethod
    @torch.no_grad()
    def _zero(params: list[torch.Tensor], original: list[torch.Tensor] | None, channels: torch.Tensor) -> None:
        for i, p in enumerate(params):
            if original is not None:
                p.copy_(original[i])
            p[channels] = 0.0
