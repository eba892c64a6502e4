"""Cheap detection baselines for text models, the reference a text detector must beat (issue 18).

- `token-scan` (model level): inserts every word of the model's vocabulary, one at a time, at a random position
  into each of the auditor's first 32 clean sentences, and scores the model by the largest share of sentences any
  one word sends to one class they were not predicted as before (its target label: that class). It is the brute
  force a token-space trigger inversion (DBS, Shen et al. 2022; PICCOLO, Liu et al. 2022) relaxes into a gradient
  search, affordable for a vocabulary of a few thousand words. It sees what every detector sees: the model and
  the auditor's clean sample. One-word triggers are found outright; a phrase only through what its words do alone.
- `token-label` (sample level): no model at all. Each token's label counts over the training set give a z-score
  per class (how much more often than the class prior it comes with that label); a sentence's suspicion is the
  largest z-score, toward its own label, of the words it holds. A trigger word that always carries the target
  label stands out, as do strongly polar words.
"""

from __future__ import annotations

import numpy as np
import torch

from ...trojans.text import insert_tokens
from ...utils import evaluating
from . import Detection, Detector, SampleDetector, register, register_sample
from .dbs import check_token_ids, token_embedding


@register("token-scan")
class TokenScan(Detector):
    modalities = ("text",)
    is_baseline = True
    fidelity = ("baseline: every vocabulary word inserted at a random position into 32 clean sentences; score = "
                "the largest share of sentences one word sends to a class they were not predicted as")

    def __init__(self, sentences: int = 32, batch_size: int = 4096):
        self.sentences, self.batch_size = sentences, batch_size

    def scan(self, model, ctx) -> tuple[torch.Tensor, torch.Tensor]:
        """(words [V'], rates [V', K]): `flip_rates` on the auditor's first sentences, each word at a random place."""
        check_token_ids(ctx.x_clean, "token-scan")
        x = ctx.x_clean[:self.sentences].cpu()
        at = (torch.rand(len(x), generator=torch.Generator().manual_seed(ctx.seed)) * ((x != 0).sum(1) + 1)).long()
        return flip_rates(model, x, at, ctx, self.batch_size, "token-scan")

    def detect(self, model, ctx):
        _, rates = self.scan(model, ctx)
        best = int(rates.flatten().argmax())
        return Detection(score=float(rates.flatten()[best]), target_label=best % ctx.num_classes)


def flip_rates(model, x: torch.Tensor, at: torch.Tensor, ctx, batch_size: int = 4096,
               who: str = "token-scan") -> tuple[torch.Tensor, torch.Tensor]:
    """Every vocabulary word but padding and <unk> (`words` [V']) inserted at `at` [N] into each sentence of `x`
    [N, T]: per word and class, the share of the sentences not predicted as that class that it sends there
    (`rates` [V', K]). The model runs in eval mode and is left in its own."""
    x = x[:, :min(x.shape[1], int((x != 0).sum(1).max()) + 1)]  # padding no sentence reaches: not run
    n = len(x)
    words = torch.arange(2, token_embedding(model, who).num_embeddings)  # not padding, not <unk>
    with evaluating(model):
        with torch.no_grad():
            base = model(x.to(ctx.device)).argmax(1).cpu()
            others = torch.stack([(base != c).sum() for c in range(ctx.num_classes)]).clamp(min=1)  # [K]
            per_chunk = max(1, batch_size // n)
            rates = []
            for i in range(0, len(words), per_chunk):
                chunk = words[i:i + per_chunk]
                out, _ = insert_tokens(x.repeat(len(chunk), 1), chunk.repeat_interleave(n).view(-1, 1),
                                       at.repeat(len(chunk)))  # each sentence once per word of the chunk
                pred = model(out.to(ctx.device)).argmax(1).cpu().view(len(chunk), n)
                flips = torch.stack([((pred == c) & (base != c)).sum(1) for c in range(ctx.num_classes)], 1)
                rates.append(flips / others)  # [words, K]
    return words, torch.cat(rates)


@register_sample("token-label")
class TokenLabel(SampleDetector):
    modalities = ("text",)
    is_baseline = True
    fidelity = ("baseline: per sentence, the largest z-score, toward its own label, of its words' label counts over "
                "the training set against the class prior; reads no model")

    def suspicion(self, model, x, y, ctx):
        x, y = x.cpu(), y.cpu()
        n, k = len(x), ctx.num_classes
        v = int(x.max()) + 1
        present = torch.zeros(n, v, dtype=torch.bool)
        present[torch.arange(n).unsqueeze(1).expand_as(x), x] = True
        present[:, 0] = False  # padding
        onehot = torch.nn.functional.one_hot(y, k).double()  # [N, K]
        counts = present.double().T @ onehot  # [V, K]: sentences holding the word, per label
        total = counts.sum(1, keepdim=True)
        prior = onehot.mean(0, keepdim=True)
        z = (counts - total * prior) / (total * prior * (1 - prior)).clamp(min=1e-12).sqrt()  # [V, K]
        z_own = z[:, y].T  # [N, V]: each word's z toward the sentence's label
        z_own = torch.where(present, z_own, torch.full_like(z_own, -np.inf))
        return z_own.max(1).values.float()
