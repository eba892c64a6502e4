"""`output-stats-meta`: a supervised classifier on output statistics, inspired by MNTD (Xu et al. 2021) but not
MNTD (`mntd.py` is the paper's method). It was registered as "mntd" (version 2) before.

A set of fixed clean query images and a linear classifier (logistic regression) on summary statistics of the
models' answers to them, fitted on the zoo's *labelled training models* (a learned detector: the detect track
calls `fit` with the training split) together with *shadow models* (copies of the audited architecture trained
from scratch on part of the auditor's clean sample, half clean and half trojaned with random triggers;
`shadow.shadow_zoo`). A model's trojan score is the classifier's probability. The audited models stay frozen.

How it differs from MNTD, each choice measured on the digits zoos (docs/detect.md):
- *Labelled zoo models.* MNTD trains on shadow models only; this detector also fits on the zoo's training split.
- *Queries the shadows never saw.* The clean sample is split: shadows train on one part, queries come from the
  other (real images, not tuned by default: `tune_epochs=0`). Queried on their own training images, shadows
  answer with a confidence no audited model shows on the auditor's images.
- *Target-invariant, low-dimensional features instead of raw outputs.* Each query's log-softmax is sorted
  (largest first) and the classifier sees its mean and spread over the queries, and the mean and spread of the
  entropy: 2K + 2 numbers per model, not k x K.
- *Each population standardised on its own.* Shadows train on far less data than zoo models and are less
  confident overall; standardising the features of shadows by shadow statistics, and those of zoo models
  (training split, then audited ones) by the training split's, aligns the two before one classifier is fitted.

The shadow zoo is cached under $TROJANBENCH_CACHE/shadows (trained once per architecture, clean sample and
settings), so a warm fit takes seconds.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...utils import evaluating, private_rng
from . import DetectContext, Detection, Detector, register
from .shadow import ShadowConfig, architecture_key, shadow_zoo


def summary_features(logits: torch.Tensor) -> torch.Tensor:
    """[Q, K] logits -> [2K + 2]: mean and std over queries of the sorted log-softmax, and of the entropy."""
    logp = torch.log_softmax(logits, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1, keepdim=True)
    f = torch.cat([logp.sort(dim=-1, descending=True).values, entropy], dim=-1)
    return torch.cat([f.mean(0), f.std(0)])


def _answers(models: list[nn.Module], queries: torch.Tensor) -> torch.Tensor:
    """Features of every model for the queries; models are run in eval mode and left in the mode they were in.
    (A plain loop: vmap over stacked parameters was 10x slower here, its BatchNorm path falls back to slow code.)"""
    out = []
    for m in models:
        with evaluating(m):
            out.append(summary_features(m(queries)))
    return torch.stack(out)


class _Standardise:
    def __init__(self, feats: torch.Tensor):
        self.mean, self.std = feats.mean(0), feats.std(0).clamp_min(1e-6)

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.mean) / self.std


DEFAULT_SHADOWS = ShadowConfig()


@register("output-stats-meta")
class OutputStatsMeta(Detector):
    version = "2"  # the detector registered as "mntd" v2 before, unchanged
    paper = ""
    fidelity = ("adapted: inspired by MNTD (Xu et al. 2021), not MNTD: logistic regression on sorted-softmax and "
                "entropy statistics of fixed clean queries, fitted on the zoo's labelled training models plus "
                "from-scratch shadow models")

    def __init__(self, queries: int = 100, query_share: float = 0.5, tune_epochs: int = 0, epochs: int = 300,
                 lr: float = 0.05, query_lr: float = 0.01, weight_decay: float = 1e-2,
                 shadow: ShadowConfig | None = DEFAULT_SHADOWS, cache: str | Path | None = None):
        self.n_queries, self.query_share, self.tune_epochs, self.epochs = queries, query_share, tune_epochs, epochs
        self.lr, self.query_lr, self.weight_decay = lr, query_lr, weight_decay
        self.shadow, self.cache = shadow, cache
        self.shadow_cached: list[bool] = []  # per architecture: whether its shadow zoo came from the cache

    def _split(self, ctx: DetectContext):
        """Shadow-training part and query part of the clean sample (a fixed split: the cache key sees the former)."""
        n_query = max(1, round(self.query_share * len(ctx.x_clean))) if self.shadow is not None else 0
        cut = len(ctx.x_clean) - n_query
        return (ctx.x_clean[:cut], ctx.y_clean[:cut]), ctx.x_clean[cut:] if n_query else ctx.x_clean

    def fit(self, models, labels, ctx: DetectContext):
        models, labels = list(models), list(labels)
        shadows, shadow_labels = [], []
        self.shadow_cached = []
        if self.shadow is not None and self.shadow.models > 0:
            (x_shadow, y_shadow), _ = self._split(ctx)
            groups: dict[str, list[int]] = {}
            for i, m in enumerate(models):
                groups.setdefault(architecture_key(m), []).append(i)
            for idx in groups.values():  # one shadow zoo per architecture under audit, the budget split among them
                cfg = replace(self.shadow, models=max(2, self.shadow.models // len(groups)))
                extra, extra_labels, cached = shadow_zoo(models[idx[0]], x_shadow, y_shadow, ctx.num_classes, cfg,
                                                         self.cache, ctx.device)
                shadows += extra
                shadow_labels += extra_labels
                self.shadow_cached.append(cached)
        self.fit_with_shadows(models, labels, shadows, shadow_labels, ctx)

    def fit_with_shadows(self, models, labels, shadows, shadow_labels, ctx: DetectContext):
        """`fit` once the shadow models exist (benchmarks pass subsets of one shadow zoo here)."""
        _, pool = self._split(ctx)
        zoo_models, zoo_y = [m.to(ctx.device) for m in models], list(labels)
        shadow_models, shadow_y = list(shadows), list(shadow_labels)
        y = torch.tensor(zoo_y + shadow_y, dtype=torch.float32, device=ctx.device)
        g = torch.Generator().manual_seed(ctx.seed)
        pick = torch.randperm(len(pool), generator=g)[: self.n_queries]
        queries = pool[pick].clone().to(ctx.device).requires_grad_(True)  # start from real images
        with private_rng():  # the head's init depends on ctx.seed only, not on earlier tools
            torch.manual_seed(ctx.seed)
            self.head = nn.Linear(2 * ctx.num_classes + 2, 1).to(ctx.device)
        pos = float(y.mean())
        weight = torch.where(y > 0, 0.5 / pos, 0.5 / (1 - pos)) if 0 < pos < 1 else torch.ones_like(y)

        def features(q):
            zoo = _answers(zoo_models, q)
            self.norm = _Standardise(zoo.detach())  # audited models are standardised like the training split
            parts = [self.norm(zoo)]
            if shadow_models:
                shadow = _answers(shadow_models, q)
                parts.append(_Standardise(shadow.detach())(shadow))
            return torch.cat(parts)

        def step(opt, feats):
            loss = F.binary_cross_entropy_with_logits(self.head(feats).squeeze(1), y, weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        # the head first, on fixed queries (cheap: features once); then, with tune_epochs, queries and head together
        with torch.no_grad():
            fixed = features(queries.clamp(0, 1))
        opt = torch.optim.Adam(self.head.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        for _ in range(self.epochs):
            step(opt, fixed)
        opt = torch.optim.Adam([{"params": [queries], "weight_decay": 0.0},
                                {"params": self.head.parameters(), "weight_decay": self.weight_decay}], lr=self.query_lr)
        frozen = [(p, p.requires_grad) for m in zoo_models + shadow_models for p in m.parameters()]
        try:  # gradients reach the queries only; the models' own flags are put back
            for p, _ in frozen:
                p.requires_grad_(False)
            for _ in range(self.tune_epochs):
                step(opt, features(queries.clamp(0, 1)))
        finally:
            for p, flag in frozen:
                p.requires_grad_(flag)
        self.queries = queries.detach().clamp(0, 1)
        if self.tune_epochs:
            with torch.no_grad():
                features(self.queries)  # the standardisation that goes with the final queries
        self.head.requires_grad_(False)

    def detect(self, model, ctx):
        with evaluating(model), torch.no_grad():
            logit = self.head(self.norm(summary_features(model(self.queries)))[None])[0, 0]
        return Detection(score=float(torch.sigmoid(logit)))
