"""MNTD (Xu et al. 2021), the query-tuning variant: learn a few query inputs and a linear meta-classifier
on the models' outputs for those queries, jointly, on the zoo's training split; a model's trojan score is
the meta-classifier's probability. The models themselves stay frozen."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import DetectContext, Detection, Detector, register


@register("mntd")
class MNTD(Detector):
    def __init__(self, queries: int = 10, epochs: int = 200, lr: float = 0.05, weight_decay: float = 1e-3):
        self.n_queries, self.epochs, self.lr, self.weight_decay = queries, epochs, lr, weight_decay

    def _features(self, model: nn.Module, queries: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(queries.clamp(0, 1)), dim=1).flatten()

    def fit(self, models, labels, ctx: DetectContext):
        g = torch.Generator().manual_seed(ctx.seed)
        idx = torch.randperm(len(ctx.x_clean), generator=g)[: self.n_queries]
        self.queries = ctx.x_clean[idx].clone().to(ctx.device).requires_grad_(True)  # start from real images
        with torch.random.fork_rng(devices=[]):  # the head's init depends on ctx.seed only, not on earlier tools
            torch.manual_seed(ctx.seed)
            self.head = nn.Linear(self.n_queries * ctx.num_classes, 1).to(ctx.device)
        opt = torch.optim.Adam([self.queries, *self.head.parameters()], lr=self.lr, weight_decay=self.weight_decay)
        y = torch.tensor(labels, dtype=torch.float32, device=ctx.device)
        saved = []
        for m in models:
            saved.append((m.training, [p.requires_grad for p in m.parameters()]))
            m.eval().to(ctx.device)
            for p in m.parameters():
                p.requires_grad_(False)
        try:
            for _ in range(self.epochs):
                feats = torch.stack([self._features(m, self.queries) for m in models])
                loss = F.binary_cross_entropy_with_logits(self.head(feats).squeeze(1), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        finally:
            for m, (mode, grads) in zip(models, saved):
                m.train(mode)
                for p, r in zip(m.parameters(), grads):
                    p.requires_grad_(r)
        self.queries = self.queries.detach()

    def detect(self, model, ctx):
        with torch.no_grad():
            logit = self.head(self._features(model.eval(), self.queries)[None])[0, 0]
        return Detection(score=float(torch.sigmoid(logit)))
