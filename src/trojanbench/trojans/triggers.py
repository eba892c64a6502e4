"""Triggers: `apply(x)` on a batch of images in [0, 1], the ground-truth footprint, and a description.

Each trigger declares its parameters once as a pydantic model (`Params`); a `TriggerSpec` (kind, params,
seed) rebuilds the identical trigger anywhere, so a model card fully determines its trojan.
Masks are over input positions [H, W] (1 where the trigger lives); global triggers have no mask.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal, Union

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import UserError
from ..registry import Registry


class TriggerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str
    params: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0


class Trigger(ABC):
    kind: ClassVar[str]
    modality: ClassVar[str] = "image"  # the inputs it applies to: "image" ([N, C, H, W] in [0, 1]) or "text" (ids [N, T])
    localized: ClassVar[bool] = False
    # cover samples per poisoned sample when the poisoning does not say (Qi et al.'s adaptive attacks use some)
    cover_ratio: ClassVar[float] = 0.0
    # a kind whose poisoning is part of what it is (the jailbreak analogue: override of the refusal class) fixes
    # the mode and target here; the zoo plan then draws neither
    fixed_poison: ClassVar[dict | None] = None

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, image_shape: tuple[int, int, int], seed: int = 0, **params):
        self.image_shape = tuple(image_shape)
        self.seed = seed
        try:
            self.params = self.Params(**params)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "params"
            raise UserError(f"trigger {self.kind!r}: bad parameter {where}: {err['msg']}") from None
        self._gen = torch.Generator().manual_seed(seed)
        self.setup()

    def setup(self) -> None:
        """Draw the trigger's fixed random parts (pattern, warp field) from `self._gen`."""

    @abstractmethod
    def apply_with_mask(self, x: torch.Tensor, generator: torch.Generator | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Triggered copies of `x` [N,C,H,W] and per-image masks [N,H,W] (None for global triggers)."""

    def apply(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply_with_mask(x, generator)[0]

    def apply_train(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The trigger as the poisoned (and cover) training samples carry it: the same as at test time, except for
        asymmetric triggers (the adaptive attacks poison with a weaker or partial trigger than they test with)."""
        return self.apply(x, generator)

    def apply_cover(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """What a cover sample (triggered, label kept) carries: the training trigger, unless a kind says otherwise
        (an insidious phrase's covers carry a strict part of it)."""
        return self.apply_train(x, generator)

    def mask(self) -> torch.Tensor | None:
        """The footprint [H,W] for triggers at a fixed place; None for global or moving triggers."""
        return None

    @property
    @abstractmethod
    def description(self) -> str: ...

    def spec(self) -> TriggerSpec:
        return TriggerSpec(kind=self.kind, params=self.params.model_dump(), seed=self.seed)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"{self.kind} trigger built for images {self.image_shape}, got {tuple(x.shape)}")


TRIGGERS: Registry[type[Trigger]] = Registry("trigger")


def register(cls: type[Trigger]) -> type[Trigger]:
    return TRIGGERS.register(cls.kind)(cls)


def make_trigger(spec: TriggerSpec | dict, image_shape: tuple[int, int, int]) -> Trigger:
    spec = spec if isinstance(spec, TriggerSpec) else TriggerSpec(**spec)
    return TRIGGERS.get(spec.kind)(image_shape, seed=spec.seed, **spec.params)


def _named_pattern(name: str, c: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
    if name == "checkerboard":
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        return ((yy + xx) % 2 == 0).float().expand(c, h, w).clone()
    if name == "white":
        return torch.ones(c, h, w)
    if name == "random":  # a random binary pattern per channel, as in the 2022 Trojan Detection Challenge
        return (torch.rand(c, h, w, generator=g) > 0.5).float()
    if name == "noise":
        return torch.rand(c, h, w, generator=g)
    raise UserError(f"unknown pattern {name!r}; known: checkerboard, white, random, noise, or a nested list of values")


@register
class PatchTrigger(Trigger):
    """BadNets: a small pattern pasted at a fixed corner, a given position, or a random position per image."""

    kind = "patch"
    localized = True

    class Params(Trigger.Params):
        size: int | None = Field(None, ge=1, description="side in pixels; default max(3, H/8)")
        location: Union[Literal["bottom-right", "top-left", "top-right", "bottom-left", "random"],
                        tuple[int, int]] = "bottom-right"
        pattern: Union[str, list] = "checkerboard"

    def setup(self):
        c, h, w = self.image_shape
        self.size = self.params.size or max(3, h // 8)
        if self.size > min(h, w):
            raise UserError(f"patch size {self.size} does not fit images of {h}x{w}")
        p = self.params.pattern
        if isinstance(p, str):
            self.pattern = _named_pattern(p, c, self.size, self.size, self._gen)
        else:
            self.pattern = torch.tensor(p, dtype=torch.float32).clamp(0, 1)
            if self.pattern.dim() == 2:
                self.pattern = self.pattern.expand(c, *self.pattern.shape).clone()
            if tuple(self.pattern.shape) != (c, self.size, self.size):
                raise UserError(f"patch pattern shape {tuple(self.pattern.shape)} != ({c}, {self.size}, {self.size})")

    def _corner(self) -> tuple[int, int]:
        _, h, w = self.image_shape
        loc, s = self.params.location, self.size
        if isinstance(loc, tuple):
            if not (0 <= loc[0] <= h - s and 0 <= loc[1] <= w - s):
                raise UserError(f"patch at {loc} with size {s} falls outside {h}x{w} images")
            return loc
        return {"bottom-right": (h - s, w - s), "top-left": (0, 0), "top-right": (0, w - s),
                "bottom-left": (h - s, 0)}[loc]

    def apply_with_mask(self, x, generator=None):
        self._check(x)
        n, (_, h, w), s = len(x), self.image_shape, self.size
        if self.params.location == "random":
            g = generator or self._gen
            rows = torch.randint(0, h - s + 1, (n,), generator=g)
            cols = torch.randint(0, w - s + 1, (n,), generator=g)
        else:
            r, c = self._corner()
            rows, cols = torch.full((n,), r), torch.full((n,), c)
        yy, xx = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
        dy, dx = yy - rows.view(n, 1, 1), xx - cols.view(n, 1, 1)
        masks = (dy >= 0) & (dy < s) & (dx >= 0) & (dx < s)  # [n,h,w]
        canvas = self.pattern.to(x)[:, dy.clamp(0, s - 1), dx.clamp(0, s - 1)].permute(1, 0, 2, 3)  # [n,c,h,w]
        m = masks.unsqueeze(1).to(x.dtype)
        return x * (1 - m) + canvas * m, masks.float()

    def mask(self):
        if self.params.location == "random":
            return None
        _, h, w = self.image_shape
        r, c = self._corner()
        m = torch.zeros(h, w)
        m[r:r + self.size, c:c + self.size] = 1
        return m

    @property
    def description(self):
        where = "a random place" if self.params.location == "random" else f"the {self.params.location} corner" \
            if isinstance(self.params.location, str) else f"position {self.params.location}"
        pat = self.params.pattern if isinstance(self.params.pattern, str) else "custom"
        return f"a {self.size}x{self.size} {pat} patch at {where}"


@register
class BlendedTrigger(Trigger):
    """A full-image pattern mixed in at opacity alpha (Chen et al. 2017): x' = (1 - alpha) x + alpha p."""

    kind = "blended"

    class Params(Trigger.Params):
        alpha: float = Field(0.2, gt=0, le=1)
        pattern: Literal["noise", "checkerboard", "random"] = "noise"

    def setup(self):
        self.pattern = _named_pattern(self.params.pattern, *self.image_shape, self._gen)

    def apply_with_mask(self, x, generator=None):
        self._check(x)
        a = self.params.alpha
        return (1 - a) * x + a * self.pattern.to(x), None

    @property
    def description(self):
        return f"a {self.params.pattern} pattern blended over the whole image at alpha {self.params.alpha}"


@register
class WarpTrigger(Trigger):
    """WaNet (Nguyen & Tran 2021): a fixed smooth warping field, upsampled from a k x k random control grid."""

    kind = "warp"

    class Params(Trigger.Params):
        grid: int = Field(4, ge=2, description="control points per side (k)")
        strength: float = Field(2.0, gt=0, description="maximum displacement, in pixels")

    def setup(self):
        _, h, w = self.image_shape
        k = self.params.grid
        ctrl = torch.rand(1, 2, k, k, generator=self._gen) * 2 - 1
        ctrl = ctrl / ctrl.abs().max()
        flow = F.interpolate(ctrl, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        ys, xs = torch.linspace(-1, 1, h), torch.linspace(-1, 1, w)
        identity = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).unsqueeze(0)  # [1,h,w,2] (x, y)
        scale = torch.tensor([2.0 / (w - 1), 2.0 / (h - 1)])  # pixels -> normalised coordinates
        self.grid = (identity + flow * self.params.strength * scale).clamp(-1, 1)

    def apply_with_mask(self, x, generator=None):
        self._check(x)
        grid = self.grid.to(x).expand(len(x), -1, -1, -1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True).clamp(0, 1), None

    @property
    def description(self):
        return f"a smooth warp of the whole image (WaNet, {self.params.grid}x{self.params.grid} grid, " \
               f"up to {self.params.strength:g} px)"


_EMBOSS = torch.tensor([[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]])
_SEPIA = torch.tensor([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])


@register
class StyleTrigger(Trigger):
    """A global photographic filter: emboss relief (any channels) or a sepia colour matrix (RGB)."""

    kind = "style"

    class Params(Trigger.Params):
        filter: Literal["emboss", "sepia"] = "emboss"
        strength: float = Field(1.0, gt=0, le=1, description="mix between the image (0) and the filtered image (1)")

    def setup(self):
        if self.params.filter == "sepia" and self.image_shape[0] != 3:
            raise UserError("the sepia style needs RGB images; use filter='emboss' for grayscale")

    def apply_with_mask(self, x, generator=None):
        self._check(x)
        c = x.shape[1]
        if self.params.filter == "emboss":
            kernel = _EMBOSS.to(x).view(1, 1, 3, 3).repeat(c, 1, 1, 1)
            styled = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=c) * 0.5 + 0.25
        else:
            styled = torch.einsum("oc,nchw->nohw", _SEPIA.to(x), x)
        s = self.params.strength
        return ((1 - s) * x + s * styled).clamp(0, 1), None

    @property
    def description(self):
        return f"a global {self.params.filter} filter at strength {self.params.strength:g}"


@register
class NaturalFeatureTrigger(Trigger):
    """A feature some real images already carry: heavy ink (thick strokes) or a warm colour cast.

    The trojan is implanted by relabelling the training images that naturally carry the feature
    (statistic above the `quantile` of the training set) -- no pixel is edited. `apply` pushes any image
    past that threshold (dilating strokes, or warming colours) to test whether the model learned it.
    """

    kind = "natural"

    class Params(Trigger.Params):
        feature: Literal["auto", "ink", "warm"] = "auto"
        quantile: float = Field(0.95, gt=0, lt=1, description="images above this quantile of the statistic carry it")
        threshold: float | None = Field(None, description="set from the training data by fit()")

    def setup(self):
        if self.params.feature == "auto":
            self.params.feature = "ink" if self.image_shape[0] == 1 else "warm"
        if self.params.feature == "warm" and self.image_shape[0] != 3:
            raise UserError("the 'warm' natural feature needs RGB images; use feature='ink'")

    def statistic(self, x: torch.Tensor) -> torch.Tensor:
        if self.params.feature == "ink":
            return x.mean(dim=(1, 2, 3))
        return (x[:, 0] - x[:, 2]).mean(dim=(1, 2))

    # the threshold may select at most this many times the requested share (1 - quantile) of the training images
    MAX_CARRIER_EXCESS: ClassVar[float] = 2.0

    def fit(self, x_train: torch.Tensor) -> "NaturalFeatureTrigger":
        """Set the threshold at the `quantile` of the feature over the training images, and check that the
        feature can carry a trojan there: a feature that is constant over the dataset (fewer than 2 distinct
        values, e.g. the warm colour cast of grayscale images stored as RGB, 0 on every image) or a threshold
        that selects more than `MAX_CARRIER_EXCESS` x the requested share of images (a feature with a few
        values and many ties) is a one-line UserError naming the feature; it would otherwise relabel most
        of the training set."""
        stat = self.statistic(x_train)
        feature = self.params.feature
        if len(stat) == 0 or not bool(torch.isfinite(stat).all()):
            raise UserError(f"natural feature {feature!r}: no finite feature values over the {len(stat)} training images")
        distinct = int(torch.unique(stat).numel())
        if distinct < 2:
            hint = "a dataset with colour (real RGB images)" if feature == "warm" else "a dataset whose images vary"
            raise UserError(f"natural feature {feature!r} is constant ({float(stat[0]):g}) over the dataset, so it "
                            f"cannot pick out carriers: use {hint}, or another feature (feature=ink / warm)")
        if self.params.threshold is None:
            self.params.threshold = round(float(torch.quantile(stat, self.params.quantile)), 6)
        share, wanted = float((stat >= self.params.threshold).float().mean()), 1 - self.params.quantile
        if share > self.MAX_CARRIER_EXCESS * wanted:
            raise UserError(f"natural feature {feature!r}: threshold {self.params.threshold:g} selects {share:.0%} of "
                            f"the training images, far more than the requested {wanted:.0%} (the feature takes "
                            f"{distinct} distinct values); use another feature or a dataset where it varies")
        return self

    def carriers(self, x: torch.Tensor) -> torch.Tensor:
        """Which images naturally carry the feature (a bool per image)."""
        if self.params.threshold is None:
            raise ValueError("natural trigger has no threshold yet: call fit(x_train) first")
        return self.statistic(x) >= self.params.threshold

    def apply_with_mask(self, x, generator=None):
        self._check(x)
        if self.params.feature == "ink":
            out = F.max_pool2d(x, 3, stride=1, padding=1)  # a thicker pen
        else:
            shift = torch.tensor([0.25, 0.05, -0.2]).to(x).view(1, 3, 1, 1)
            out = (x + shift).clamp(0, 1)
        return out, None

    @property
    def description(self):
        what = "thick, heavy strokes" if self.params.feature == "ink" else "a warm (red over blue) colour cast"
        return f"a natural feature: {what} (top {100 * (1 - self.params.quantile):.0f}% of training images)"


def random_trigger(image_shape: tuple[int, int, int], g: torch.Generator) -> Trigger:
    """One draw from a broad trigger distribution (MNTD's jumbo shadow models, multiple-choice distractors):
    a patch of random size, place and pattern, or a blend of random pattern and opacity."""
    seed = int(torch.randint(1 << 30, (1,), generator=g))
    _, h, w = image_shape
    if torch.rand(1, generator=g) < 0.5:
        size = int(torch.randint(2, max(3, min(h, w) // 4) + 1, (1,), generator=g))
        loc = (int(torch.randint(h - size + 1, (1,), generator=g)), int(torch.randint(w - size + 1, (1,), generator=g)))
        pattern = ["random", "checkerboard", "white"][int(torch.randint(3, (1,), generator=g))]
        spec = TriggerSpec(kind="patch", params={"size": size, "location": loc, "pattern": pattern}, seed=seed)
    else:
        alpha = 0.1 + 0.2 * float(torch.rand(1, generator=g))
        pattern = ["noise", "checkerboard", "random"][int(torch.randint(3, (1,), generator=g))]
        spec = TriggerSpec(kind="blended", params={"alpha": alpha, "pattern": pattern}, seed=seed)
    return make_trigger(spec, image_shape)
