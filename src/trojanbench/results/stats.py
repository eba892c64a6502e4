"""Scores with bootstrap confidence intervals (scikit-learn metrics, resampled with numpy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_curve


@dataclass
class Estimate:
    value: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        if np.isnan(self.value):
            return "n/a"
        if np.isnan(self.low):
            return f"{self.value:.3f}"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap(stat: Callable[..., float], *arrays, n_boot: int = 1000, seed: int = 0, stratify=None) -> Estimate:
    """Statistic on the data plus a percentile 95% CI over resamples (stratified by `stratify` labels if
    given, so every resample of a detection task keeps both classes)."""
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    value = float(stat(*arrays))
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(stratify == g) for g in np.unique(stratify)] if stratify is not None else [np.arange(n)]
    samples = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(g, len(g)) for g in groups])
        try:
            samples.append(stat(*(a[idx] for a in arrays)))
        except ValueError:
            continue
    samples = np.asarray([s for s in samples if not np.isnan(s)])
    if len(samples) == 0:
        return Estimate(value, float("nan"), float("nan"), n)
    low, high = np.percentile(samples, [2.5, 97.5])
    return Estimate(value, float(low), float(high), n)


def auroc(labels, scores) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic (average ranks for ties): the same number as
    sklearn's roc_auc_score (tested), about 30x faster on small arrays, which matters inside a bootstrap."""
    labels = np.asarray(labels) > 0
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def aupr(labels, scores) -> float:
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return float("nan")
    return float(average_precision_score(labels, scores))


def fpr_at_tpr(labels, scores, tpr_level: float = 0.95) -> float:
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return float("nan")
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(fpr[np.searchsorted(tpr, tpr_level, side="left")])


def tpr_at_fpr(labels, scores, fpr_level: float = 0.05) -> float:
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return float("nan")
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(tpr[np.searchsorted(fpr, fpr_level, side="right") - 1])


def mean(values) -> float:
    return float(np.mean(values))
