"""Compression as repair: magnitude pruning at several sparsities and post-training quantization, both
written by hand (no quantization engine) and both calibrated on the clean budget only."""

from __future__ import annotations

import torch
from torch import nn

from ...models.hooks import hooked
from . import RepairContext, Repairer, register, strong_augment, working_copy


def _weights(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, ctx: RepairContext, passes: int = 8) -> nn.Module:
    """Re-estimate BatchNorm running statistics (cumulative average) on augmented views of the budget."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    g = torch.Generator().manual_seed(ctx.seed)
    model.train()
    try:
        for _ in range(passes):
            model(strong_augment(x.to(ctx.device), ctx, g))
    finally:
        for bn, mom in zip(bns, saved):
            bn.momentum = mom
        model.eval()
    return model


class MagnitudePrune(Repairer):
    """Global unstructured magnitude pruning of every conv and linear weight to `sparsity`, then BatchNorm
    statistics re-estimated on the clean budget. No fine-tuning: the weights that remain are the trojaned
    model's own."""

    sparsity = 0.5
    paper = ("Han, Pool, Tran & Dally (2015). Learning both Weights and Connections for Efficient Neural Networks. "
             "NeurIPS")
    fidelity = ("adapted: one-shot global magnitude threshold with BatchNorm statistics re-estimated, no retraining "
                "(Han et al. prune iteratively with per-layer thresholds and retrain)")

    def repair(self, model, x_clean, y_clean, ctx):
        m = working_copy(model, ctx)
        layers = _weights(m)
        with torch.no_grad():
            mags = torch.cat([layer.weight.abs().flatten() for layer in layers])
            k = int(self.sparsity * len(mags))
            if k:
                threshold = mags.kthvalue(k).values
                for layer in layers:
                    layer.weight.mul_((layer.weight.abs() > threshold).to(layer.weight))
        return recalibrate_bn(m, x_clean, ctx)


for _s in (50, 80, 90):
    register(f"magnitude-prune-{_s}")(type(f"MagnitudePrune{_s}", (MagnitudePrune,), {
        "sparsity": _s / 100, "__doc__": f"Magnitude pruning to {_s}% sparsity (see MagnitudePrune)."}))


def fake_quantize(w: torch.Tensor, bits: int, per_channel: bool = True) -> torch.Tensor:
    """Symmetric uniform quantization to signed `bits`-bit integers and back (per output channel)."""
    qmax = 2 ** (bits - 1) - 1
    amax = w.abs().flatten(1).amax(1).view(-1, *[1] * (w.dim() - 1)) if per_channel and w.dim() > 1 else w.abs().max()
    scale = amax.clamp_min(1e-12) / qmax
    return (w / scale).round().clamp(-qmax, qmax) * scale


class QuantReLU(nn.ReLU):
    """ReLU whose output is fake-quantized to unsigned 8 bits with a per-tensor scale fixed at calibration."""

    def __init__(self, bits: int = 8):
        super().__init__()
        self.levels = 2 ** bits - 1
        self.register_buffer("scale", torch.tensor(0.0))

    def forward(self, x):
        x = super().forward(x)
        if float(self.scale) <= 0:
            return x
        return (x / self.scale).round().clamp(0, self.levels) * self.scale


class Quantize(Repairer):
    """Post-training quantization: weights to `weight_bits` (symmetric, per output channel), ReLU outputs to
    unsigned 8 bits (per tensor, scale from the maximum on the clean budget); BatchNorm is left in float
    (it folds into the convolution at deployment)."""

    weight_bits = 8
    paper = ("Krishnamoorthi (2018). Quantizing deep convolutional networks for efficient inference: A whitepaper. "
             "arXiv:1806.08342")
    fidelity = ("adapted: simulated (fake) quantization in float, BatchNorm not folded, activations quantized at ReLU "
                "modules only, scale from the maximum on the clean budget")

    def repair(self, model, x_clean, y_clean, ctx):
        m = working_copy(model, ctx)
        with torch.no_grad():
            for layer in _weights(m):
                layer.weight.copy_(fake_quantize(layer.weight, self.weight_bits))
        acts = []
        for parent in list(m.modules()):
            for name, child in parent.named_children():
                if type(child) is nn.ReLU:
                    q = QuantReLU().to(ctx.device)
                    setattr(parent, name, q)
                    acts.append(q)
        peaks = {q: torch.tensor(0.0) for q in acts}
        with torch.no_grad(), hooked(acts, lambda mod, inp, out: peaks.__setitem__(mod, torch.maximum(
                peaks[mod], out.detach().max().cpu()))):
            m(x_clean.to(ctx.device))
        for q in acts:
            q.scale.fill_(float(peaks[q]) / q.levels)
        return m.eval()


register("quantize-int8")(type("QuantizeInt8", (Quantize,), {"weight_bits": 8, "__doc__": "int8 weights and activations."}))
register("quantize-int4")(type("QuantizeInt4", (Quantize,), {"weight_bits": 4,
                                                            "__doc__": "int4 weights, int8 activations."}))
