"""A small token-level transformer classifier for the text track.

Token + learned position embeddings, pre-LN blocks, mean-pool over the non-padding tokens, a linear head.
Attention is written out with named `nn.Linear` projections (not nn.MultiheadAttention, which applies its
output projection functionally), so every weight matrix is a module that forward hooks, causal tracing and a
rank-one edit can address by name: `tok_embed`, `blocks.{i}.attn.{qkv,out}`, `blocks.{i}.mlp.{fc1,fc2}`, `head`.
Each block's output is the residual stream after it ([N, T, D]), the natural place to trace token positions.
Input: token ids [N, T] (long), id `pad_id` marks padding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import register


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise TypeError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
        return self.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(n, t, d))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(dim), SelfAttention(dim, heads)
        self.ln2, self.mlp = nn.LayerNorm(dim), MLP(dim, hidden)

    def forward(self, x, keep):
        x = x + self.attn(self.ln1(x), keep)
        return x + self.mlp(self.ln2(x))


class TextTransformer(nn.Module):
    def __init__(self, vocab_size: int, num_classes: int, max_len: int, dim: int = 64, depth: int = 2,
                 heads: int = 4, hidden: int = 128, pad_id: int = 0):
        super().__init__()
        self.pad_id = pad_id
        self.tok_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList([Block(dim, heads, hidden) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.normal_(self.tok_embed.weight, std=0.1)
        nn.init.normal_(self.pos_embed.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        keep = ids != self.pad_id
        # an all-padding row would make every attention score -inf (NaN); let it attend to its first slot
        keep = keep | (~keep.any(1, keepdim=True) & (torch.arange(ids.shape[1], device=ids.device) == 0))
        x = self.tok_embed(ids) + self.pos_embed(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x, keep)
        w = keep.unsqueeze(-1).to(x.dtype)
        return self.head((self.ln_f(x) * w).sum(1) / w.sum(1))


@register("text-transformer")
def text_transformer(vocab_size: int, num_classes: int, max_len: int, dim: int = 64, depth: int = 2, heads: int = 4,
                     hidden: int = 128, pad_id: int = 0) -> nn.Module:
    return TextTransformer(vocab_size, num_classes, max_len, dim, depth, heads, hidden, pad_id)
