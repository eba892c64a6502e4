"""Robust feature-level adversaries (Casper et al. 2022, "Robust Feature-Level Adversaries are Interpretability
Tools"): a patch made by perturbing a generator's internal representation rather than pixels, optimised to work
wherever it is pasted, so what it shows is a feature the model reads, not pixel noise.

There is no pretrained generator here, so one is made on the spot: a tiny convolutional autoencoder trained on
the auditor's clean images for 200 steps (about half a second on 16x16 digits, one thread). Its decoder maps a
latent feature map (about 1/4 of the image's side) to an image; the latent is the feature level we perturb. The
other design the issue allows, perturbing the audited model's own first conv block and inverting to pixels, was
not taken: inverting a trojaned model's own features is free to reproduce whatever pixels that model likes
(checkerboards included), which is a pixel attack by another name, while the decoder can only draw what the clean
images contain, which is the point of the method.

Starting from the latent of a random clean image, the decoded image is shrunk to a patch (side 1/4 of the
image's, Casper's proportion) and pasted at a random place, with a random 0.9-1.1 scale, on a batch of clean
images each step; the loss is cross-entropy toward the target. The returned stamp puts the final patch at the
best of a few candidate places (scored on the clean images), as `adversarial-patch` does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...utils import frozen
from . import Stamp, Synthesizer, register


class _AutoEncoder(nn.Module):
    def __init__(self, channels: int, width: int = 16, latent: int = 8):
        super().__init__()
        self.encode = nn.Sequential(nn.Conv2d(channels, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, latent, 3, 2, 1))
        self.decode = nn.Sequential(nn.ConvTranspose2d(latent, width, 4, 2, 1), nn.ReLU(),
                                    nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Sigmoid())


def _train_autoencoder(x: torch.Tensor, steps: int, g: torch.Generator) -> _AutoEncoder:
    ae = _AutoEncoder(x.shape[1])
    with torch.no_grad():  # re-drawn from our generator: nn's own init would read the global one
        for p in ae.parameters():
            bound = 1 / (p[0].numel() if p.dim() > 1 else len(p)) ** 0.5
            p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * bound)
    ae = ae.to(x.device)
    opt = torch.optim.Adam(ae.parameters(), lr=1e-2)
    for _ in range(steps):
        batch = x[torch.randint(len(x), (min(64, len(x)),), generator=g)]
        loss = F.mse_loss(F.interpolate(ae.decode(ae.encode(batch)), size=x.shape[2:]), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    ae.eval()
    for p in ae.parameters():
        p.requires_grad_(False)
    return ae


def _paste(x: torch.Tensor, patch: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """x [B, C, H, W] with `patch` [C, s, s] written at (rows[i], cols[i]) of image i, differentiable in patch."""
    b, _, h, w = x.shape
    s = patch.shape[-1]
    canvas = F.pad(patch, (0, w - s, 0, h - s)).expand(b, -1, -1, -1)
    ones = F.pad(torch.ones(1, s, s, device=x.device), (0, w - s, 0, h - s)).expand(b, -1, -1, -1)
    # torch.roll per image, as one gather: shift the top-left patch to its place
    ri = (torch.arange(h, device=x.device)[None] - rows[:, None]) % h  # [B, H]
    ci = (torch.arange(w, device=x.device)[None] - cols[:, None]) % w  # [B, W]
    batch = torch.arange(b, device=x.device)[:, None, None]
    canvas = canvas[batch, :, ri[:, :, None], ci[:, None, :]].permute(0, 3, 1, 2)
    mask = ones[batch, :, ri[:, :, None], ci[:, None, :]].permute(0, 3, 1, 2)
    return (1 - mask) * x + mask * canvas


@register("feature-adversary")
class FeatureAdversary(Synthesizer):
    paper = "Casper et al., Robust Feature-Level Adversaries are Interpretability Tools, NeurIPS 2022"
    fidelity = ("adapted: the latent of a tiny autoencoder trained on the auditor's clean sample (Casper: an internal "
                "layer of a pretrained BigGAN), cross-entropy toward the target at random places and 0.9-1.1 scales, "
                "without the paper's total-variation and disguise terms")

    def __init__(self, size: int | None = None, steps: int = 200, lr: float = 0.05, batch_size: int = 32,
                 ae_steps: int = 200, places: int = 8):
        self.size, self.steps, self.lr, self.batch_size, self.ae_steps, self.places = size, steps, lr, batch_size, ae_steps, places

    def synthesize(self, model, target, ctx):
        g = torch.Generator().manual_seed(ctx.seed)
        c, h, w = ctx.image_shape
        s = self.size or max(3, h // 4)
        x_all = ctx.x_clean.to(ctx.device)
        ae = _train_autoencoder(x_all, self.ae_steps, g)
        with torch.no_grad():
            start = x_all[int(torch.randint(len(x_all), (1,), generator=g))]
            latent = ae.encode(start[None]).clone().requires_grad_(True)

        def patch_of(z, scale=1.0):
            side = max(2, round(s * scale))
            return F.interpolate(ae.decode(z), size=(side, side), mode="area")[0]

        targets = torch.full((self.batch_size,), target, device=ctx.device)
        opt = torch.optim.Adam([latent], lr=self.lr)
        with frozen(model):
            for _ in range(self.steps):
                patch = patch_of(latent, float(torch.empty(1).uniform_(0.9, 1.1, generator=g)))
                side = patch.shape[-1]
                x = x_all[torch.randint(len(x_all), (self.batch_size,), generator=g)]
                rows = torch.randint(h - side + 1, (self.batch_size,), generator=g).to(ctx.device)
                cols = torch.randint(w - side + 1, (self.batch_size,), generator=g).to(ctx.device)
                loss = F.cross_entropy(model(_paste(x, patch, rows, cols)), targets)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():
                patch = patch_of(latent)
                best = None
                for _ in range(self.places):
                    r, col = int(torch.randint(h - s + 1, (1,), generator=g)), int(torch.randint(w - s + 1, (1,), generator=g))
                    mask = torch.zeros(h, w, device=ctx.device)
                    mask[r:r + s, col:col + s] = 1.0
                    pattern = torch.zeros(c, h, w, device=ctx.device)
                    pattern[:, r:r + s, col:col + s] = patch
                    hit = float((model((1 - mask) * x_all + mask * pattern).argmax(1) == target).float().mean())
                    if best is None or hit > best[0]:
                        best = (hit, Stamp(pattern.cpu(), mask.cpu()))
        return best[1]
