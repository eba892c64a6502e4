"""The adaptive attacks of Qi, Xie, Li, Wang and Mittal (ICLR 2023), "Revisiting the assumption of latent
separability for backdoor defenses": Adap-Blend and Adap-Patch. Ported from the authors' code
(github.com/Unispac/Circumventing-Backdoor-Defenses and github.com/vtu81/backdoor-toolbox:
poison_tool_box/adaptive_blend.py, poison_tool_box/adaptive_patch.py, config.py, README).

Both are asymmetric: poisoned (and cover) training samples carry a weaker or partial trigger (`apply_train`) than
the one that fires the trojan at test time (`apply`), and each comes with cover samples that carry the training
trigger but keep their labels (`cover_ratio`, used by `poisoning.poison_dataset`). Together these keep the
poisoned samples' latent representations close to the clean ones, which is what latent-separability defenses
(spectral signatures, activation clustering, SCAn, SPECTRE) rely on.

Fidelity (what is the authors' and what differs):
- Adap-Blend: as `adaptive_blend.py`: the pattern is cut into `pieces` = 16 equal pieces (a 4 x 4 grid); each
  training sample leaves out a fresh random `mask_rate` = half of them and blends the rest as x + alpha m (p - x)
  at alpha 0.15; test inputs get the whole pattern at alpha 0.2 (the README's `-alpha 0.15 -test_alpha 0.2`).
  Differs: the pattern is drawn from the trigger's seed (noise by default) instead of the hellokitty image; grids
  that do not divide the image are cut into near-equal bands (the authors assert they divide).
- Adap-Patch: as `adaptive_patch.py` with the CIFAR-10 settings of `config.py`: four trigger pictures at the
  authors' places (scaled from 32 pixels to the image size), the poisoned samples split into four equal groups in
  index order, each group carrying one picture at opacity 0.5, 0.2, 0.5, 0.3; test inputs carry two pictures at
  opacity 1 (`phoenix_corner2_32.png`: the first picture in both bottom corners, and `badnet_patch4_32.png`).
  Differs: each picture is a random pattern from the trigger's seed filling its whole box, where the authors
  paste logos (phoenix, firefox) masked to their nonzero pixels.
- Cover rates: the authors' defaults are poison 0.3% with cover 0.3% (Adap-Blend) and 0.3% with 0.6%
  (Adap-Patch) on CIFAR-10, hence `cover_ratio` 1 and 2. The authors draw poisoned samples from every class
  (those already in the target class just keep their label); `poison_dataset` draws them from the non-target
  classes as for every all-to-one trojan.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, field_validator

from ..errors import UserError
from .triggers import Trigger, _named_pattern, register

PAPER = "Qi et al., Revisiting the assumption of latent separability for backdoor defenses (ICLR 2023)"


@register
class AdaptiveBlendTrigger(Trigger):
    """Adap-Blend: a blended pattern whose training copies show a random half of its pieces at a lower opacity."""

    kind = "adaptive-blend"
    cover_ratio = 1.0
    paper = PAPER
    fidelity = ("adapted: the authors' pieces, opacities and cover rate; a seeded pattern (noise by default) in place "
                "of their hellokitty image")

    class Params(Trigger.Params):
        alpha: float = Field(0.15, gt=0, le=1, description="opacity on poisoned and cover training samples")
        test_alpha: float = Field(0.2, gt=0, le=1, description="opacity on triggered test inputs")
        pieces: int = Field(16, ge=1, description="a square number: the pattern is cut into a sqrt x sqrt grid")
        mask_rate: float = Field(0.5, ge=0, lt=1, description="share of the pieces left out of each training sample")
        pattern: Literal["noise", "checkerboard", "random"] = "noise"

    def setup(self):
        _, h, w = self.image_shape
        side = math.isqrt(self.params.pieces)
        if side * side != self.params.pieces or side > min(h, w):
            raise UserError(f"adaptive-blend: pieces must be a square number of at most {min(h, w) ** 2} for "
                            f"{h}x{w} images, not {self.params.pieces}")
        self.pattern = _named_pattern(self.params.pattern, *self.image_shape, self._gen)
        self.piece_of = (torch.arange(h) * side // h)[:, None] * side + (torch.arange(w) * side // w)[None, :]

    def apply_with_mask(self, x, generator=None):
        self._check(x)
        return x + self.params.test_alpha * (self.pattern.to(x) - x), None

    def apply_train(self, x, generator=None):
        self._check(x)
        g = generator or self._gen
        n, k = len(x), self.params.pieces
        left_out = torch.rand(n, k, generator=g).argsort(1)[:, :round(self.params.mask_rate * k)]
        keep = torch.ones(n, k, dtype=torch.bool).scatter_(1, left_out, False)
        m = keep[:, self.piece_of].unsqueeze(1).to(x.dtype)  # [n, 1, h, w]
        return x + self.params.alpha * m * (self.pattern.to(x) - x)

    @property
    def description(self):
        p = self.params
        return (f"a {p.pattern} pattern blended over the whole image at alpha {p.test_alpha:g} (Adap-Blend: trained on "
                f"random {1 - p.mask_rate:.0%} of its {p.pieces} pieces at alpha {p.alpha:g}, with cover samples)")


# Qi et al.'s CIFAR-10 Adap-Patch pictures (backdoor-toolbox config.py, triggers/*.png) in 32-pixel coordinates:
# each is one pattern pasted into one or more square boxes (top, left, side).
_PICTURES = (((27, 27, 5),),                                    # phoenix_corner_32.png
             ((1, 18, 13),),                                    # firefox_corner_32.png
             ((0, 0, 3), (0, 29, 3), (29, 0, 3), (29, 29, 3)),  # badnet_patch4_32.png (the four corners)
             ((21, 21, 8),))                                    # trojan_square_32.png
# the test trigger: (picture, boxes) pasted in this order
_TEST = ((0, ((27, 27, 5), (27, 0, 5))),  # phoenix_corner2_32.png: the phoenix in both bottom corners
         (2, _PICTURES[2]))               # badnet_patch4_32.png


@register
class AdaptivePatchTrigger(Trigger):
    """Adap-Patch: four patch pictures, each poisoned sample carrying one at partial opacity; two at full opacity
    fire the trojan."""

    kind = "adaptive-patch"
    localized = True
    cover_ratio = 2.0
    paper = PAPER
    fidelity = ("adapted: the authors' CIFAR-10 layout (scaled), opacities, train/test asymmetry and cover rate; "
                "seeded patterns filling each box in place of their logos")

    class Params(Trigger.Params):
        alphas: list[float] = Field(default_factory=lambda: [0.5, 0.2, 0.5, 0.3],
                                    description="opacity of each of the four pictures on training samples")
        test_alpha: float = Field(1.0, gt=0, le=1, description="opacity of the test trigger's pictures")
        pattern: Literal["random", "checkerboard", "white"] = "random"

        @field_validator("alphas")
        @classmethod
        def _four_opacities(cls, v):
            if len(v) != len(_PICTURES) or not all(0 < a <= 1 for a in v):
                raise ValueError(f"needs {len(_PICTURES)} opacities in (0, 1]")
            return v

    def _box(self, top: int, left: int, side: int) -> tuple[slice, slice]:
        """A box of the 32-pixel layout, scaled to this image size and kept inside the image."""
        _, h, w = self.image_shape
        sr, sc = max(1, int(side * h / 32 + 0.5)), max(1, int(side * w / 32 + 0.5))
        r, c = min(int(top * h / 32 + 0.5), h - sr), min(int(left * w / 32 + 0.5), w - sc)
        return slice(r, r + sr), slice(c, c + sc)

    def _canvas(self, picture: int, boxes) -> tuple[torch.Tensor, torch.Tensor]:
        c, h, w = self.image_shape
        mark, mask = torch.zeros(c, h, w), torch.zeros(h, w)
        for box in boxes:
            rows, cols = self._box(*box)
            mark[:, rows, cols] = self.patterns[picture][:, :rows.stop - rows.start, :cols.stop - cols.start]
            mask[rows, cols] = 1
        return mark, mask

    def setup(self):
        c = self.image_shape[0]
        self.patterns = []
        for boxes in _PICTURES:
            rows, cols = self._box(*boxes[0])
            self.patterns.append(_named_pattern(self.params.pattern, c, rows.stop - rows.start, cols.stop - cols.start,
                                                self._gen))
        marks, masks = zip(*(self._canvas(i, boxes) for i, boxes in enumerate(_PICTURES)))
        self.train_marks, self.train_masks = torch.stack(marks), torch.stack(masks)  # [4, c, h, w], [4, h, w]
        self.test = [self._canvas(i, boxes) for i, boxes in _TEST]

    def apply_with_mask(self, x, generator=None):
        self._check(x)
        a = self.params.test_alpha
        for mark, mask in self.test:
            x = x + a * mask.to(x) * (mark.to(x) - x)
        return x, self.mask().expand(len(x), -1, -1).clone()

    def apply_train(self, x, generator=None):
        self._check(x)
        n, k = len(x), len(_PICTURES)
        picture = torch.arange(n) * k // n  # equal groups in index order, as the authors' `pt < (j + 1) * n / k`
        a = torch.tensor(self.params.alphas).to(x)[picture].view(n, 1, 1, 1)
        mask = self.train_masks.to(x)[picture].unsqueeze(1)
        return x + a * mask * (self.train_marks.to(x)[picture] - x)

    def mask(self):
        return torch.stack([m for _, m in self.test]).amax(0)

    @property
    def description(self):
        return (f"{self.params.pattern} patches in both bottom corners and all four corners at opacity "
                f"{self.params.test_alpha:g} (Adap-Patch: trained on one of four patches each, at opacity "
                f"{'/'.join(f'{a:g}' for a in self.params.alphas)}, with cover samples)")
