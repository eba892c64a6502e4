"""Trivial detectors every real one must beat: random, weight statistics, and two output statistics on
clean inputs (accuracy; posterior entropy), as in the 2022 Trojan Detection Challenge starter kit."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from . import DetectContext, Detection, Detector, register


@register("random")
class RandomDetector(Detector):
    """Score and target label drawn at random: chance level, AUROC about 0.5."""

    is_baseline = True

    def __init__(self):
        self._rng = np.random.default_rng(0)

    def detect(self, model, ctx):
        return Detection(score=float(self._rng.random()), target_label=int(self._rng.integers(ctx.num_classes)))


class _FittedFeatures(Detector):
    """A few numbers per model, then a logistic regression fitted on the zoo's training split."""

    def features(self, model: nn.Module, ctx: DetectContext) -> np.ndarray:
        raise NotImplementedError

    def fit(self, models, labels, ctx):
        x = np.stack([self.features(m, ctx) for m in models])
        self.clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
        self.clf.fit(x, np.asarray(labels))

    def detect(self, model, ctx):
        f = self.features(model, ctx)[None]
        score = float(self.clf.predict_proba(f)[0, 1]) if hasattr(self, "clf") else float(f[0, 0])
        return Detection(score=score)


@register("weight-stats")
class WeightStats(_FittedFeatures):
    """Per weight tensor: mean, std, max |w|, and kurtosis; logistic regression on top."""

    is_baseline = True

    def features(self, model, ctx):
        out = []
        for name, p in model.named_parameters():
            if p.dim() < 2 or p.numel() < 2:
                continue
            w = p.detach().float().flatten()
            z = (w - w.mean()) / (w.std() + 1e-8)
            out += [w.mean(), w.std(), w.abs().max(), (z**4).mean()]
        return torch.stack(out).numpy()


def _softmax_on_clean(model: nn.Module, ctx: DetectContext) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(model(ctx.x_clean.to(ctx.device)), dim=1).cpu()


@register("accuracy")
class AccuracyBaseline(_FittedFeatures):
    """Clean accuracy on the auditor's sample (poisoning may cost a little of it)."""

    is_baseline = True

    def features(self, model, ctx):
        probs = _softmax_on_clean(model, ctx)
        return np.array([float((probs.argmax(1) == ctx.y_clean).float().mean())])


@register("entropy")
class EntropyBaseline(_FittedFeatures):
    """Mean posterior entropy on clean inputs (trojaned models may be more or less sure of themselves)."""

    is_baseline = True

    def features(self, model, ctx):
        probs = _softmax_on_clean(model, ctx)
        return np.array([float(-(probs * probs.clamp_min(1e-12).log()).sum(1).mean())])
