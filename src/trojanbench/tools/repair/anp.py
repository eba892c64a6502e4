"""Adversarial Neuron Pruning (Wu & Wang, NeurIPS 2021): a backdoored network collapses to its target label under
small adversarial perturbations of its neurons, so learn a mask per neuron that keeps the clean loss low both as it
is and under such perturbations, and prune the neurons whose mask falls low. No fine-tuning afterwards."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ...models.hooks import hooked
from ...train.augment import augment_batch
from ..locate import called_in_order
from . import STRONG_STEPS, RepairContext, Repairer, register, working_copy

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def neuron_layers(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """The layers whose output units are ANP's neurons, in call order: every normalisation layer with a per-unit
    scale and shift (BatchNorm as in the paper; LayerNorm in a transformer, as BackdoorBench's ViT port), or, in a
    model with none (an MLP), every linear/conv layer but the one that produces the logits. Found by one probe
    forward (eval mode, no gradient) with hooks that are always removed, so only modules that really run count."""
    def usable(m):
        w = getattr(m, "weight", None)
        return isinstance(w, torch.Tensor) and (w.dim() == 1 or not isinstance(m, _NORMS))

    norms = [m for m in model.modules() if isinstance(m, _NORMS) and usable(m)]
    candidates = norms or [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and usable(m)]
    layers = called_in_order(model, x, candidates)
    return layers if norms else layers[:-1]  # without normalisation layers, the last linear layer is the head


def _unit_dim(layer: nn.Module) -> int:
    return 1 if isinstance(layer, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.Conv2d)) else -1


class NeuronPerturbation:
    """ANP's per-neuron variables for `layers`: a mask m in [0, 1] and perturbations delta, xi in [-eps, eps]. While
    `hooked`, each layer's output gamma * h + beta becomes (m + delta) * gamma * h + (1 + xi) * beta (delta, xi only
    when `perturbed`): the paper's multiplicative perturbation of the neuron's weight and bias, with the mask on the
    weight only."""

    def __init__(self, layers: list[nn.Module], device: torch.device):
        self.layers = layers
        sizes = [layer.weight.shape[0] for layer in layers]
        self.masks = [torch.ones(n, device=device, requires_grad=True) for n in sizes]
        self.deltas = [torch.zeros(n, device=device) for n in sizes]
        self.xis = [torch.zeros(n, device=device) for n in sizes]
        self.perturbed = False

    def _hook(self, i: int):
        layer = self.layers[i]
        dim = _unit_dim(layer)

        def hook(mod, inp, out):
            shape = [1] * out.dim()
            shape[dim] = -1
            scale = self.masks[i] + self.deltas[i] if self.perturbed else self.masks[i]
            if mod.bias is None:
                return out * scale.view(shape)
            bias = mod.bias.view(shape)
            shift = bias * (1 + self.xis[i].view(shape)) if self.perturbed else bias
            return scale.view(shape) * (out - bias) + shift

        return hook

    @contextmanager
    def hooked(self):
        with hooked({layer: self._hook(i) for i, layer in enumerate(self.layers)}):
            yield self


@register("anp")
class ANP(Repairer):
    """Adversarial Neuron Pruning (Wu & Wang, NeurIPS 2021; Algorithm 1 with its experimental defaults): masks m in
    [0, 1] on the BatchNorm neurons (scale gamma, shift beta) of the trojaned model, optimised on the clean budget by
    SGD (lr 0.2, momentum 0.9, batch 128, the data's own augmentation, batch statistics as in the authors' code)
    against alpha x L(m) + (1 - alpha) x L(m + delta, 1 + xi), where the perturbations (delta, xi) of every neuron's
    weight and bias start uniform in [-eps, eps] at each step and take one signed-gradient ascent step of size eps on
    the clean loss, projected back to [-eps, eps] (the paper's bound; the released code leaves them unprojected, up to
    2 eps). Then every neuron whose mask is below `threshold` is pruned (its gamma set to zero, beta kept, as in the
    authors' pruning script; `prune_fraction` prunes that fraction of neurons with the lowest masks instead). The
    other weights and the BatchNorm statistics stay as they were; no fine-tuning.

    Budget: 250 mask iterations (`STRONG_STEPS`) instead of the paper's 2000 on 500 CIFAR-10 images (each about 2.5
    forward-backward passes of 128 images, without the strong augmentation: a few seconds per digits CNN). On three
    dev-zoo CNNs 1000 iterations pruned the same neurons, give or take one, with ASR within 2 points.

    On the dev zoo's width-16 digits CNNs (112 BatchNorm neurons) the paper's threshold prunes 2-7% of the neurons
    and leaves most of the ASR; pruning more by mask value (`prune_fraction` 0.05-0.1) removes the trojan but costs
    20 points of clean accuracy or more. The defaults are the paper's and were not tuned to the zoo.

    Models without BatchNorm: a transformer's neurons are its LayerNorm features (as in BackdoorBench's ViT port);
    a model without any normalisation layer (the MLP) gets the masks and perturbations on the output units of its
    hidden linear/conv layers (weight rows and biases), pruning zeroes their weight rows."""

    paper = ("Wu & Wang (2021). Adversarial Neuron Pruning Purifies Backdoored Deep Models. NeurIPS")
    fidelity = ("adapted: 250 mask iterations on the small budget (paper: 2000 on 500 images); otherwise the paper's "
                "algorithm and defaults (eps 0.4, alpha 0.2, mask lr 0.2, threshold 0.2, no fine-tuning), "
                "perturbations projected to [-eps, eps]; without BatchNorm the neurons are LayerNorm features or "
                "hidden linear/conv units")

    def __init__(self, iterations: int = STRONG_STEPS, eps: float = 0.4, alpha: float = 0.2, lr: float = 0.2,
                 threshold: float = 0.2, prune_fraction: float | None = None, batch_size: int = 128):
        if prune_fraction is not None and not 0 <= prune_fraction <= 1:
            raise ValueError(f"prune_fraction must be in [0, 1], got {prune_fraction}")
        self.iterations, self.eps, self.alpha, self.lr = iterations, eps, alpha, lr
        self.threshold, self.prune_fraction, self.batch_size = threshold, prune_fraction, batch_size

    def repair(self, model, x_clean, y_clean, ctx):
        masks = self.optimise_masks(model, x_clean, y_clean, ctx)
        values = torch.cat(masks)
        if self.prune_fraction is None:
            pruned = values < self.threshold
        else:
            pruned = torch.zeros_like(values, dtype=torch.bool)
            pruned[values.argsort()[:round(self.prune_fraction * len(values))]] = True
        self.mask_values, self.pruned_fraction = values, float(pruned.float().mean())
        out = working_copy(model, ctx)
        layers = neuron_layers(out, x_clean.to(ctx.device))
        with torch.no_grad():
            for layer, chosen in zip(layers, pruned.split([len(m) for m in masks])):
                layer.weight[chosen.to(layer.weight.device)] = 0.0  # gamma (or the unit's weight row); the bias stays, as in the paper
        return out.eval()

    def optimise_masks(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: RepairContext) -> list[torch.Tensor]:
        """The learned mask of every neuron (one tensor per neuron layer, values in [0, 1])."""
        m = working_copy(model, ctx)  # a scratch copy: its BatchNorm statistics move in training mode
        for p in m.parameters():
            p.requires_grad_(False)
        x, y = x.to(ctx.device), y.to(ctx.device)
        state = NeuronPerturbation(neuron_layers(m, x), ctx.device)
        opt = torch.optim.SGD(state.masks, lr=self.lr, momentum=0.9)
        g = torch.Generator().manual_seed(ctx.seed * 7919 + 31)
        m.train()
        with state.hooked():
            for _ in range(self.iterations):
                idx = torch.randint(0, len(x), (self.batch_size,), generator=g).to(ctx.device)
                xb, yb = augment_batch(x[idx], generator=g, **ctx.augment), y[idx]
                if self.eps > 0:  # one signed step of ascent on the clean loss from a random start (the paper's K=1)
                    perturbations = state.deltas + state.xis
                    for t in perturbations:
                        t.copy_((torch.rand(t.shape, generator=g).to(t) * 2 - 1) * self.eps).requires_grad_(True)
                    state.perturbed = True
                    grads = torch.autograd.grad(F.cross_entropy(m(xb), yb), perturbations)
                    with torch.no_grad():
                        for t, gr in zip(perturbations, grads):
                            t.add_(self.eps * gr.sign()).clamp_(-self.eps, self.eps)
                            t.requires_grad_(False)
                    loss_rob = F.cross_entropy(m(xb), yb)
                else:
                    loss_rob = 0.0
                state.perturbed = False
                loss = self.alpha * F.cross_entropy(m(xb), yb) + (1 - self.alpha) * loss_rob
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for mask in state.masks:
                        mask.clamp_(0.0, 1.0)
        return [mask.detach().cpu() for mask in state.masks]
