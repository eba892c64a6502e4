"""Latent adversarial training (LAT): fine-tune the trojaned model on its clean budget while an adversary
perturbs one hidden layer's activations to make the clean labels as unlikely as it can (Casper, Schulze, Patel &
Hadfield-Menell 2024). The adversary never sees a trigger: the hope is that a perturbation of the latents can
switch on the trojan's circuitry where no clean input does, so training to resist it takes that circuitry apart.

Sheshadri et al. (2024) make the adversary *targeted* (it pushes towards a known harmful behaviour, and the model
also keeps a clean utility loss); a repairer does not know the trojan's target, so this is the untargeted form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UserError
from ...models.hooks import hooked
from ...utils import evaluating
from . import STRONG_LR, STRONG_STEPS, Repairer, fit, register, strong_views, working_copy

_ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Tanh)


def latent_sites(model: nn.Module) -> list[str]:
    """The hidden layers LAT can perturb, from input to output, by module name. Where the model has a stack of
    blocks (a child `nn.Sequential` or `nn.ModuleList` whose members all hold parameters: a ResNet's residual
    blocks, a ViT's or the text transformer's blocks, airnet's conv groups) the sites are the blocks' outputs (the residual stream, as LAT's
    language-model experiments perturb it); in a flat model (mlp, cnn) they are the outputs of its activation
    modules, one per hidden layer."""
    for name, child in model.named_children():
        members = list(child.children())
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(members) > 1 and all(any(True for _ in m.parameters()) for m in members):
            return [f"{name}.{i}" for i in range(len(members))]
    inside_mha = {n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    sites = [n for n, m in model.named_modules()
             if isinstance(m, _ACTIVATIONS) and not any(n.startswith(p + ".") for p in inside_mha)]
    if not sites:
        raise UserError(f"{type(model).__name__} has no hidden layer LAT can perturb (no block stack, no activation "
                        "module); pass `layer` as a module name")
    return sites


def resolve_site(model: nn.Module, layer: int | str) -> str:
    """A module name from `layer`: an index into `latent_sites` (negative counts from the output) or a name."""
    if isinstance(layer, str):
        names = dict(model.named_modules())
        if layer not in names:
            raise UserError(f"no module {layer!r} in {type(model).__name__}; LAT sites: {', '.join(latent_sites(model))}")
        return layer
    sites = latent_sites(model)
    if not -len(sites) <= layer < len(sites):
        raise UserError(f"layer {layer} out of range: {type(model).__name__} has {len(sites)} LAT sites ({', '.join(sites)})")
    return sites[layer]


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def latent_pgd(model: nn.Module, site: nn.Module, xb: torch.Tensor, yb: torch.Tensor, *, epsilon: float, steps: int,
               generator: torch.Generator) -> torch.Tensor:
    """An untargeted L2 PGD perturbation of `site`'s output that raises the cross-entropy of `yb` (class indices or
    probabilities): per sample ||delta|| <= epsilon x ||activation||, random start inside the ball, `steps` steps of
    size epsilon / steps along the per-sample normalised gradient, each followed by projection onto the ball and
    clamping of the perturbed activations to the batch's activation range (as the authors' code). Run in eval mode
    (as the authors' code: no BatchNorm statistics move while the adversary searches); the caller's mode and every
    hook are restored."""
    captured: list[torch.Tensor] = []
    with evaluating(model):
        with torch.no_grad(), hooked(site, lambda mod, inp, out: captured.append(out)):
            model(xb)
        a = captured[0]
        radius = epsilon * _per_sample_norm(a)
        lo, hi = a.min(), a.max()

        def project(d: torch.Tensor) -> torch.Tensor:
            d = d * torch.clamp(radius / (_per_sample_norm(d) + 1e-12), max=1.0)
            return (a + d).clamp(lo, hi) - a

        d = torch.randn(a.shape, generator=generator).to(a)
        r = torch.rand((len(a),) + (1,) * (a.dim() - 1), generator=generator).to(a)
        delta = project(d / (_per_sample_norm(d) + 1e-12) * r * radius)
        step = epsilon / max(1, steps)
        for _ in range(steps):
            delta.requires_grad_(True)
            with hooked(site, lambda mod, inp, out, d=delta: out + d):
                loss = F.cross_entropy(model(xb), yb)
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta = project(delta + step * _per_sample_norm(a) * grad / (_per_sample_norm(grad) + 1e-12))
        return delta.detach()


@register("lat")
class LatentAdversarialTraining(Repairer):
    """Latent adversarial training (Casper et al. 2024, Algorithm 1; the image experiments remove trojans from a
    ResNet-50 by fine-tuning on clean data with L2-bounded perturbations of a hidden layer). For every batch of
    the clean budget an adversary runs `pgd_steps` steps of untargeted L2 PGD on a perturbation added to the
    activations of one hidden layer, maximising the cross-entropy of the clean labels; the training step then
    minimises the cross-entropy under that perturbation alone (the paper mixes in no clean loss; targeted LAT,
    Sheshadri et al. 2024, adds a utility loss, but it needs the harmful behaviour, here the unknown target).

    The budget is `finetune-matched`'s, so the two differ only in the latent adversary: 250 SGD steps at peak lr
    0.05 with warm-up and linear decay, the same strongly augmented views and mixup blends of the same budget
    (same generator, so the same batches).

    `layer`: an index into `latent_sites(model)` (negative counts from the output; the blocks' outputs of a
    ResNet / ViT / airnet, the activations of an mlp / cnn) or a module name. `epsilon`: the L2 radius of the
    perturbation *relative to each sample's activation norm* at that layer (0.03: a perturbation 3% as long
    as the activation vector). Relative, not absolute as in the paper, because activation norms differ by orders of
    magnitude between layers, widths and architectures, so an absolute radius tuned on one model means nothing on
    the next; the paper tunes its absolute radius per model and layer.

    The default layer (-2: the second-to-last site, on the digits CNN the ReLU after its second conv block) and
    epsilon (0.03) were chosen on the dev zoo by benchmarks/lat_sweep.py (layers -1, -2 x epsilon 0.03, 0.1, 0.3;
    results: benchmarks/results/lat_sweep.json): the lowest mean ASR after repair among the settings with a mean
    clean cost of at most 3 points. 6 PGD steps is the authors' code's default."""

    modalities = ("image", "text")
    paper = ("Casper, Schulze, Patel & Hadfield-Menell (2024). Defending Against Unforeseen Failure Modes with Latent "
             "Adversarial Training. arXiv:2403.05030 (TMLR 2025); targeted LAT: Sheshadri et al. (2024), arXiv:2407.15549")
    fidelity = ("adapted: Algorithm 1 (untargeted L2 PGD on one hidden layer's activations, random start, normalised "
                "steps of epsilon/steps, clamping to the activation range, the step on the perturbed loss alone), but "
                "epsilon is relative to each sample's activation norm (paper: absolute, tuned per model), the model "
                "trains in train mode (authors' code: eval mode), and the budget is finetune-matched's (250 steps, lr "
                "0.05, strong augmentation and mixup on a small clean budget; paper: one epoch of clean ImageNet)")

    def __init__(self, layer: int | str = -2, epsilon: float = 0.03, pgd_steps: int = 6, steps: int = STRONG_STEPS,
                 lr: float = STRONG_LR, mixup: bool = True):
        if epsilon < 0 or pgd_steps < 0:
            raise UserError(f"LAT needs epsilon >= 0 and pgd_steps >= 0, got {epsilon} and {pgd_steps}")
        self.layer, self.epsilon, self.pgd_steps = layer, epsilon, pgd_steps
        self.steps, self.lr, self.mixup = steps, lr, mixup

    def repair(self, model, x_clean, y_clean, ctx):
        m = working_copy(model, ctx)
        site = dict(m.named_modules())[resolve_site(m, self.layer)]
        g = torch.Generator().manual_seed(ctx.seed * 7919 + 101)  # the adversary's random starts

        def loss(net, xb, yb):
            delta = latent_pgd(net, site, xb, yb, epsilon=self.epsilon, steps=self.pgd_steps, generator=g)
            with hooked(site, lambda mod, inp, out: out + delta):
                return F.cross_entropy(net(xb), yb)

        return fit(m, x_clean, y_clean, ctx, steps=self.steps, lr=self.lr, loss=loss,
                   views=lambda xb, yb, gen: strong_views(xb, yb, gen, ctx, mix=self.mixup, soft_targets=True))
