"""Feature synthesis: images that should reveal what makes a model predict the trojan's target.

Every synthesizer returns what it found as something with `apply(x)` (the images with it applied), so the task
can score all of them the same way (transfer ASR: apply it to clean images of other classes, count how many go
to the target; multiple choice: show the judge the probes with it applied):
- a `Stamp`: a pattern [C, H, W] and a mask [H, W] in [0, 1], applied as x' = (1 - m) x + m p (every optimised
  method);
- a `TriggerStamp`: any trigger of `trojanbench.trojans` (a blend, a warp, a style, ...), which cannot be written
  as a stamp; its `mask` is the trigger's footprint, or None for global triggers.

Registered here:
- `trigger-inversion`: Neural Cleanse's mask + pattern optimisation for the target class alone;
- `adversarial-patch`: a universal patch (after Brown et al. 2017) of the trojan-patch size, optimised on clean
  images toward the target at a few random places, the best place kept;
- `exemplar`: the clean image that most excites the target logit, blended in at 30% (dataset exemplars, the
  competitor feature visualisation must beat);
- baselines `noise-patch` (a random patch at a random place), `mean-image` (the mean clean image at 30%) and
  `random-prior` (random_prior.py: a trigger drawn from the zoo's trigger prior, independent of the model).
The rest, one module each (imported at the bottom, which registers them):
- `fourier-fv` (fourier_fv.py): class feature visualisation of the target logit, decorrelated Fourier
  parametrisation with jitter/scale robustness (after Olah et al. 2017), blended in at 30% like `exemplar`;
- `cppn-fv` (cppn_fv.py): the same, the image drawn by a small CPPN of (x, y, r) (after Mordvintsev et al. 2018);
- `regularised-inversion` (tabor.py; registered as `tabor` before): Neural Cleanse plus TABOR's area,
  smoothness, overlay and trigger-alone regularisers, with a growing area weight;
- `feature-adversary` (feature_adversary.py): a feature-level adversarial patch (after Casper et al. 2022),
  optimised in the latent of a tiny autoencoder trained on the clean sample;
- `natural-patch-search` (snafue.py; registered as `snafue` before): SNAFUE's idea (Casper et al. 2023), the
  natural patch from the clean sample nearest to an adversarial patch in the model's feature space that works
  best.
On text models (text.py): `dbs-trigger` (DBS's inversion toward the target) beside the baselines `word-scan` and
`random-words`; each returns a `WordStamp` (word ids and where they go).
Each class says how closely it follows its paper in `paper` and `fidelity` (see `trojanbench.tools.ToolInfo`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UserError
from ...registry import Registry
from ...trojans.triggers import Trigger
from ...utils import evaluating, frozen
from .. import READ_ONLY, ToolInfo, check_target, left_as_it_was
from ..detect import DetectContext


@dataclass
class Stamp:
    pattern: torch.Tensor  # [C, H, W]
    mask: torch.Tensor  # [H, W]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return (1 - self.mask) * x + self.mask * self.pattern

    def check(self, image_shape: tuple[int, ...], tool: str) -> "Stamp":
        """This stamp, or a one-line error naming `tool`: the pattern [C, H, W] of the images' shape and the mask
        [H, W], every value finite and in [0, 1], so that what is scored is an image (a pattern of 5 under a mask
        of 3 scored as a working trigger, and people were shown it clamped)."""
        c, h, w = image_shape
        for part, value, shape in (("pattern", self.pattern, (c, h, w)), ("mask", self.mask, (h, w))):
            if not torch.is_tensor(value) or tuple(value.shape) != shape:
                got = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
                raise UserError(f"synthesizer {tool} returned a stamp whose {part} is {got}, not {shape}")
            if value.numel() and not (torch.isfinite(value).all() and 0 <= float(value.min()) and float(value.max()) <= 1):
                raise UserError(f"synthesizer {tool} returned a stamp whose {part} has values in "
                                f"[{float(value.min()):g}, {float(value.max()):g}]; a stamp's pattern and mask are in [0, 1]")
        return self


@dataclass
class TriggerStamp:
    """A whole trigger as a synthesizer's answer. `apply` is deterministic: a trigger at a random place per image
    takes its places from a generator seeded with `placement_seed` on every call (never the trigger's own
    generator, whose state would change from call to call)."""

    trigger: Trigger
    placement_seed: int = 1

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.trigger.apply(x, generator=torch.Generator().manual_seed(self.placement_seed))

    @property
    def mask(self) -> torch.Tensor | None:
        """The trigger's footprint [H, W], or None for global or moving triggers (nothing to draw)."""
        return self.trigger.mask()


Synthesis = Stamp | TriggerStamp


def _checked_synthesize(self, method, model, target, ctx, *args, **kw):
    check_target(target, ctx.num_classes, type(self).__name__)
    with left_as_it_was(model, f"synthesizer {type(self).__name__}", READ_ONLY):
        found = method(self, model, target, ctx, *args, **kw)
    if not callable(getattr(found, "apply", None)):
        raise UserError(f"synthesizer {type(self).__name__} returned {type(found).__name__}, not a Stamp or TriggerStamp "
                        "(something with apply(x))")
    return found.check(ctx.image_shape, type(self).__name__) if isinstance(found, Stamp) else found


class Synthesizer(ToolInfo, ABC):

    verb_check = ("synthesize", _checked_synthesize)

    @abstractmethod
    def synthesize(self, model: nn.Module, target: int, ctx: DetectContext) -> Synthesis: ...


SYNTHESIZERS: Registry[type[Synthesizer]] = Registry("synthesizer")
register = SYNTHESIZERS.register


def _patch_mask(ctx: DetectContext, size: int, g: torch.Generator) -> torch.Tensor:
    _, h, w = ctx.image_shape
    r, c = int(torch.randint(h - size + 1, (1,), generator=g)), int(torch.randint(w - size + 1, (1,), generator=g))
    mask = torch.zeros(h, w)
    mask[r:r + size, c:c + size] = 1.0
    return mask


@register("trigger-inversion")
class TriggerInversion(Synthesizer):
    paper = "Wang et al., Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural Networks, IEEE S&P 2019"
    fidelity = ("adapted: Neural Cleanse's per-label mask and pattern search (the detector's own implementation) run "
                "for the given target label only, 150 steps; no anomaly index, since the target is known")

    def __init__(self, steps: int = 150):
        self.steps = steps

    def synthesize(self, model, target, ctx):
        from ..detect.neural_cleanse import NeuralCleanse

        masks, patterns = NeuralCleanse(steps=self.steps).reverse_engineer(model, ctx, classes=[target])
        # tanh(w) / (2 - 1e-7) + 0.5 rounds to -6e-8 in float32 where tanh saturates: a stamp stays in [0, 1]
        return Stamp(patterns[0].clamp(0, 1), masks[0].clamp(0, 1))


@register("adversarial-patch")
class AdversarialPatch(Synthesizer):
    """Optimised at `starts` random places; the place whose patch ends with the lowest loss wins (where a patch
    goes matters as much as what it shows)."""

    paper = "Brown et al., Adversarial Patch, arXiv:1712.09665, 2017"
    fidelity = ("adapted: a universal targeted square patch of the trojan-patch size, optimised at one fixed place per "
                "start (the best of 4 starts kept) rather than over Brown's random places, scales and rotations")

    def __init__(self, size: int | None = None, steps: int = 120, lr: float = 0.1, batch_size: int = 32, starts: int = 4):
        self.size, self.steps, self.lr, self.batch_size, self.starts = size, steps, lr, batch_size, starts

    def synthesize(self, model, target, ctx):
        g = torch.Generator().manual_seed(ctx.seed)
        c, h, _ = ctx.image_shape
        best = None
        with frozen(model):
            for _ in range(self.starts):
                mask = _patch_mask(ctx, self.size or max(3, h // 8), g)
                logit = (torch.randn(c, *mask.shape, generator=g) * 0.1).requires_grad_(True)
                opt = torch.optim.Adam([logit], lr=self.lr)
                for _ in range(self.steps):
                    x = ctx.x_clean[torch.randint(len(ctx.x_clean), (self.batch_size,), generator=g)]
                    out = model(((1 - mask) * x + mask * torch.sigmoid(logit)).to(ctx.device))
                    loss = F.cross_entropy(out, torch.full((len(x),), target, device=ctx.device))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                with torch.no_grad():  # the patch lives on the CPU with the images; only the model's input moves
                    x = ctx.x_clean
                    final = float(F.cross_entropy(model(((1 - mask) * x + mask * torch.sigmoid(logit)).to(ctx.device)),
                                                  torch.full((len(x),), target, device=ctx.device)))
                if best is None or final < best[0]:
                    best = (final, Stamp(torch.sigmoid(logit).detach(), mask))
        return best[1]


@register("exemplar")
class Exemplar(Synthesizer):
    paper = "Olah et al., Feature Visualization, Distill 2017 (dataset examples)"
    fidelity = ("adapted: the one image of the auditor's clean sample that most excites the target logit, blended "
                "over the whole image at 30% so that it can be scored like a stamp")

    def __init__(self, alpha: float = 0.3):
        self.alpha = alpha

    def synthesize(self, model, target, ctx):
        with evaluating(model), torch.no_grad():  # the caller's model keeps its modes
            logits = model(ctx.x_clean.to(ctx.device)).cpu()
        best = int(logits[:, target].argmax())
        return Stamp(ctx.x_clean[best].clone(), torch.full(ctx.image_shape[1:], self.alpha))


@register("noise-patch")
class NoisePatch(Synthesizer):
    is_baseline = True
    fidelity = "baseline: a uniform-noise square patch (side max(3, H/8)) at a random place"

    def synthesize(self, model, target, ctx):
        g = torch.Generator().manual_seed(ctx.seed + target)
        h = ctx.image_shape[1]
        return Stamp(torch.rand(ctx.image_shape, generator=g), _patch_mask(ctx, max(3, h // 8), g))


@register("mean-image")
class MeanImage(Synthesizer):
    is_baseline = True
    fidelity = "baseline: the mean image of the auditor's clean sample blended over the whole image at 30%"

    def synthesize(self, model, target, ctx):
        return Stamp(ctx.x_clean.mean(0), torch.full(ctx.image_shape[1:], 0.3))


from . import cppn_fv, feature_adversary, fourier_fv, random_prior, snafue, tabor, text  # noqa: F401  (register them)
