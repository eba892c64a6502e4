"""Turning a detector's raw score into P(trojaned), and measuring how well calibrated that probability is.

- **Platt scaling** (Platt 1999, "Probabilistic outputs for support vector machines"): a logistic curve
  p = 1 / (1 + exp(a s + b)) fitted to the reference zoo's held-out scores by maximum likelihood, with Platt's
  smoothed targets (t+ = (N+ + 1) / (N+ + 2), t- = 1 / (N- + 2)), so a perfectly separated reference set
  still gives finite slopes and probabilities strictly inside (0, 1). Fitted with scikit-learn's unpenalised
  logistic regression on the weighted targets.
- **Out-of-fold probabilities**: every reference model's probability comes from a curve fitted without its
  unit (a trojan and its clean twin are one unit, as in the zoo's split), so the calibration metrics below are
  not measured on the data the curve was fitted to.
- **Metrics** (lower is better), each with a bootstrap interval over models stratified by label
  (`results.stats.bootstrap`):
  - cross-entropy: mean of -[y ln p + (1 - y) ln(1 - p)], p clipped to [1e-7, 1 - 1e-7]. A constant 0.5 scores
    ln 2 = 0.693; the TrojAI leaderboards asked for at most 0.3465 (half of it) at a 50/50 prior;
  - Brier score: mean (p - y)^2 (0.25 for a constant 0.5);
  - expected calibration error (Guo et al. 2017): ten equal-width bins of p, sum over bins of
    (bin size / n) * |mean(y) - mean(p)|.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..results.stats import Estimate, bootstrap

EPS = 1e-7
TROJAI_CE_BAR = 0.3465  # cross-entropy the TrojAI rounds asked for, at a 50/50 prior


@dataclass(frozen=True)
class Platt:
    a: float
    b: float
    n: int  # reference models it was fitted on

    def __call__(self, scores) -> np.ndarray:
        s = np.asarray(scores, dtype=float)
        return 1.0 / (1.0 + np.exp(np.clip(self.a * s + self.b, -500, 500)))


def fit_platt(scores, labels) -> Platt:
    """Platt's sigmoid fitted on (score, label) pairs with his smoothed targets. Needs both labels."""
    from sklearn.linear_model import LogisticRegression

    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=int)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("Platt scaling needs clean and trojaned reference models")
    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    scale = float(np.std(s)) or 1.0  # the optimiser works on standardised scores; a, b are mapped back below
    centre = float(np.mean(s))
    z = ((s - centre) / scale)[:, None]
    # each model twice: as a positive with weight t and as a negative with weight 1 - t (cross-entropy with soft targets)
    X = np.concatenate([z, z])
    Y = np.concatenate([np.ones(len(s)), np.zeros(len(s))])
    W = np.concatenate([t, 1 - t])
    lr = LogisticRegression(C=np.inf, solver="lbfgs", max_iter=1000).fit(X, Y, sample_weight=W)
    w, c = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    # p = sigmoid(w z + c) = 1 / (1 + exp(-(w (s - centre) / scale + c)))
    return Platt(a=-w / scale, b=w * centre / scale - c, n=len(s))


def out_of_fold(scores, labels, units) -> np.ndarray:
    """Each model's probability from a Platt curve fitted without its unit (NaN where the rest lacks a label)."""
    s, y, u = np.asarray(scores, dtype=float), np.asarray(labels, dtype=int), np.asarray(units)
    out = np.full(len(s), np.nan)
    for unit in np.unique(u):
        rest = u != unit
        if len(set(y[rest])) < 2:
            continue
        out[~rest] = fit_platt(s[rest], y[rest])(s[~rest])
    return out


def cross_entropy(p, y) -> float:
    p = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    y = np.asarray(y, dtype=float)
    return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))


def brier(p, y) -> float:
    return float(np.mean((np.asarray(p, dtype=float) - np.asarray(y, dtype=float)) ** 2))


def ece(p, y, bins: int = 10) -> float:
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.mean() * abs(y[sel].mean() - p[sel].mean())
    return float(total)


METRICS = {"cross_entropy": cross_entropy, "brier": brier, "ece": ece}


def calibration_metrics(p, y, n_boot: int = 2000, seed: int = 0) -> dict[str, Estimate]:
    """Cross-entropy, Brier and ECE of probabilities `p` against labels `y`, with bootstrap intervals
    (stratified by label; n is the smaller label's count, and below 5 there is no interval)."""
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=int)
    keep = ~np.isnan(p)
    p, y = p[keep], y[keep]
    return {name: bootstrap(fn, p, y, n_boot=n_boot, seed=seed, stratify=y) for name, fn in METRICS.items()}
