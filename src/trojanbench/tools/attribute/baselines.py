"""Baselines that look at no model: a map an attribution method has to beat to show it learned anything
from the model. Each is a deterministic function of the image, so the randomized-model sanity check
sees identical maps (similarity 1.0): they fail it by construction.
"""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F

from . import Attributor, register

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


class Baseline(Attributor):
    is_baseline = True
    uses_model = False


@register("sobel")
class SobelEdges(Baseline):
    """Edge magnitude: sqrt(gx^2 + gy^2) of 3x3 Sobel filters per channel (replicate padding), summed over
    channels. The edge-detector baseline of Casper et al.'s benchmark of attribution tools on trojans."""

    def attribute(self, model, x, target):
        c = x.shape[1]
        kx = _SOBEL_X.to(x).view(1, 1, 3, 3).repeat(c, 1, 1, 1)
        ky = kx.transpose(-1, -2)
        xp = F.pad(x.float(), (1, 1, 1, 1), mode="replicate")
        gx, gy = F.conv2d(xp, kx, groups=c), F.conv2d(xp, ky, groups=c)
        return (gx.square() + gy.square()).sqrt().sum(1).detach().cpu()


@register("random")
class RandomMap(Baseline):
    """Uniform noise per pixel, seeded by the attributor's seed and the image's bytes (the same image gets the
    same map; different images get independent maps)."""

    def attribute(self, model, x, target):
        out = []
        for img in x.detach().cpu().float():
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(img.numpy().tobytes()))
            out.append(torch.rand(*img.shape[-2:], generator=g))
        return torch.stack(out) if out else torch.zeros(0, *x.shape[-2:])


@register("centre")
class CentrePrior(Baseline):
    """An isotropic Gaussian at the image centre (std a quarter of the side): 'the object is in the middle'."""

    def attribute(self, model, x, target):
        h, w = x.shape[-2:]
        yy = (torch.arange(h, dtype=torch.float32) - (h - 1) / 2) / (h / 4)
        xx = (torch.arange(w, dtype=torch.float32) - (w - 1) / 2) / (w / 4)
        prior = torch.exp(-0.5 * (yy.view(h, 1) ** 2 + xx.view(1, w) ** 2))
        return prior.expand(len(x), h, w).clone()
