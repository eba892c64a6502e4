"""Cheap detectors every real one must beat: random; a data-free look at the last layer's weights; and, as
in the 2022 Trojan Detection Challenge starter kit, logistic regressions on weight or output statistics that
are fitted on the zoo's labelled training split."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from ...errors import UserError
from ...utils import evaluating, sha256_bytes
from . import DetectContext, Detection, Detector, register


@register("random")
class RandomDetector(Detector):
    """Score and target label drawn at random: chance level, AUROC about 0.5."""

    modalities = ("image", "text")
    is_baseline = True
    fidelity = "baseline: a seeded random score and target label (chance level)"
    version = "2"  # v2: drawn from the seed and the model alone (v1 from one stream over the models scored before)

    def detect(self, model, ctx):
        from ...zoo.store import weights_bytes

        # a model's draw depends on nothing else, so it is the same whichever job, process or order scores it
        rng = np.random.default_rng([ctx.seed, int(sha256_bytes(weights_bytes(model))[:15], 16)])
        return Detection(score=float(rng.random()), target_label=int(rng.integers(ctx.num_classes)))


def anomaly_index(values: torch.Tensor) -> torch.Tensor:
    """How far each value lies from the median, in units of the median absolute deviation scaled by 1.4826
    (the consistency constant that makes it estimate a normal distribution's standard deviation), as in
    Neural Cleanse's anomaly index."""
    median = values.median()
    return (values - median) / (1.4826 * (values - median).abs().median()).clamp_min(1e-12)


def last_linear(model: nn.Module) -> nn.Linear:
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise UserError(f"{type(model).__name__} has no nn.Linear layer, so it has no final-layer rows to compare")
    return heads[-1]


@register("final-layer-outlier")
class FinalLayerOutlier(Detector):
    """Reads nothing but the last linear layer's weights: no data, no labels, no fit. Poisoning teaches the
    model a shortcut into one class, and the shortcut lands in that class's row of the head; so the class
    whose row stands out from the others (the anomaly index of its statistic, above) is the suspected
    target, and how far it stands out is the score.

    `statistic`: what is compared across rows. "positive", the sum of the row's positive weights (what can
    raise that class's logit; the features a CNN's head reads are non-negative after ReLU and pooling), was
    chosen on the dev zoo over the row's L2 norm and its bias (docs/detect.md, benchmarks/detect_dev.py)."""

    modalities = ("image", "text")
    is_baseline = True
    fidelity = ("baseline: MAD anomaly index of each class's summed positive weights in the last linear layer; "
                "reads no data and no labels, fits nothing")

    def __init__(self, statistic: str = "positive"):
        if statistic not in ("norm", "bias", "positive"):
            raise UserError(f"final-layer-outlier: statistic must be norm, bias or positive, got {statistic!r}")
        self.statistic = statistic

    def detect(self, model, ctx):
        head = last_linear(model)
        w = head.weight.detach().double()
        if self.statistic == "bias":
            if head.bias is None:
                raise UserError("final-layer-outlier: statistic 'bias' needs a last linear layer with a bias")
            stat = head.bias.detach().double()
        elif self.statistic == "positive":
            stat = w.clamp_min(0).sum(1)
        else:
            stat = w.norm(dim=1)
        anomaly = anomaly_index(stat.cpu())
        target = int(anomaly.argmax())
        return Detection(score=float(anomaly[target]), target_label=target)


class _FittedFeatures(Detector):
    """A few numbers per model, then a logistic regression fitted on the zoo's labelled training split."""

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
    """A learned detector, not a data-free one: per weight tensor its mean, std, max |w| and kurtosis, and a
    logistic regression on them fitted on the zoo's labelled training split (so it reads the labels of other
    zoo models, and can only learn what that split's trojans have in common). Needs no data. The data-free,
    fit-free weight baseline is `final-layer-outlier`."""

    modalities = ("image", "text")
    is_baseline = True
    fidelity = ("baseline: logistic regression on per-tensor weight statistics (mean, std, max |w|, kurtosis), "
                "fitted on the zoo's labelled training split")

    def features(self, model, ctx):
        out = []
        for name, p in model.named_parameters():
            if p.dim() < 2 or p.numel() < 2:
                continue
            w = p.detach().float().flatten()
            z = (w - w.mean()) / (w.std() + 1e-8)
            out += [w.mean(), w.std(), w.abs().max(), (z**4).mean()]
        return torch.stack(out).detach().cpu().numpy()


def _softmax_on_clean(model: nn.Module, ctx: DetectContext) -> torch.Tensor:
    with evaluating(model), torch.no_grad():
        return torch.softmax(model(ctx.x_clean.to(ctx.device)), dim=1).cpu()


@register("accuracy")
class AccuracyBaseline(_FittedFeatures):
    """Clean accuracy on the auditor's sample (poisoning may cost a little of it); logistic regression fitted
    on the zoo's labelled training split."""

    modalities = ("image", "text")
    is_baseline = True
    fidelity = ("baseline: accuracy on the auditor's clean sample, logistic regression fitted on the zoo's "
                "training split (TDC 2022 starter kit)")

    def features(self, model, ctx):
        probs = _softmax_on_clean(model, ctx)
        return np.array([float((probs.argmax(1) == ctx.y_clean).float().mean())])


@register("entropy")
class EntropyBaseline(_FittedFeatures):
    """Mean posterior entropy on clean inputs (trojaned models may be more or less sure of themselves);
    logistic regression fitted on the zoo's labelled training split."""

    modalities = ("image", "text")
    is_baseline = True
    fidelity = ("baseline: mean posterior entropy on the auditor's clean sample, logistic regression fitted on "
                "the zoo's training split (TDC 2022 starter kit)")

    def features(self, model, ctx):
        probs = _softmax_on_clean(model, ctx)
        return np.array([float(-(probs * probs.clamp_min(1e-12).log()).sum(1).mean())])
