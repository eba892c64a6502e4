"""A small Vision Transformer (Dosovitskiy et al. 2021): patch embedding, CLS token, pre-norm blocks."""

import torch
from torch import nn

from . import Normalize, image_hw, register


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(dim), nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    def __init__(self, in_channels, num_classes, image_size, mean, std, patch=4, dim=96, depth=4, heads=4, mlp_ratio=2):
        super().__init__()
        h, w = image_hw(image_size)
        if h % patch or w % patch:
            raise TypeError(f"patch size {patch} does not divide {h}x{w} images (it must divide both H and W; "
                            "pass --arch-param patch=N)")
        self.normalize = Normalize(mean, std)
        self.embed = nn.Conv2d(in_channels, dim, patch, patch)
        n_tokens = (h // patch) * (w // patch) + 1
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, n_tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        tokens = self.embed(self.normalize(x)).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1) + self.pos
        return self.head(self.ln(self.blocks(tokens))[:, 0])


@register("vit")
def vit(in_channels: int, num_classes: int, image_size, mean, std, patch: int = 4, dim: int = 96,
        depth: int = 4, heads: int = 4, mlp_ratio: int = 2) -> nn.Module:
    """`image_size`: H, or [H, W] for non-square images; `patch` must divide both."""
    return ViT(in_channels, num_classes, image_size, mean, std, patch, dim, depth, heads, mlp_ratio)
