"""Statistics every board uses, in one place (scipy/statsmodels where they have the method).

- `wilson(k, n)`: Wilson score interval for a proportion (scipy's `binomtest(...).proportion_ci`).
- `bootstrap_mean(values)`: expanded percentile 95% CI (Hesterberg 2015) of a mean over resampled units (models);
  every resample is valid.
- `auroc_estimate(labels, scores)`: AUROC with a score-type interval (Newcombe's 2006 variance), what boards
  print: near nominal coverage in simulation at 5 to 32 models per class and AUROC 0.5 to 0.99, where the
  percentile bootstrap falls far short near 1 (benchmarks/interval_coverage.py; docs/leaderboards.md).
- `bootstrap_auroc(labels, scores)`: AUROC with a percentile CI over resamples stratified by label, so every
  resample holds both classes (nothing is dropped); the dev benchmarks' older interval, kept for them.
- `paired_test(a, b, stat)`: stat(a) − stat(b) with a paired-bootstrap CI over the same resampled units and a
  two-sided p-value: for a mean, a sign-flip permutation test of the per-unit differences (exact up to 16 units;
  a bootstrap p-value is far too small at the 5 to 10 models a board often has); for AUROC, the paired bootstrap;
  `holm` corrects a board's p-values for the number of tools compared (statsmodels' `multipletests`).
- `cluster_bootstrap_mean`: two-way cluster bootstrap (e.g. participants × trojans) for human-study accuracy.

A cell with fewer than `MIN_N_FOR_INTERVAL` units prints no interval, only "n=3": an interval from one or two
models says nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.stats import binomtest, rankdata
from sklearn.metrics import average_precision_score, roc_curve

MIN_N_FOR_INTERVAL = 5
LEVEL = 0.95
N_BOOT = 2000


@dataclass
class Estimate:
    """A point estimate, its 95% interval (nan when there is none) and the number of units `n` behind it
    (models; for AUROC the smaller of the two classes, which is what limits it)."""

    value: float
    low: float = float("nan")
    high: float = float("nan")
    n: int = 0
    method: str = ""  # "wilson", EXPANDED_METHOD, SCORE_METHOD, MOVER_METHOD, "bootstrap", "stratified bootstrap", ""

    @property
    def has_interval(self) -> bool:
        return self.n >= MIN_N_FOR_INTERVAL and not (math.isnan(self.low) or math.isnan(self.high))

    def __str__(self) -> str:
        if math.isnan(self.value):
            return "n/a"
        if self.n < MIN_N_FOR_INTERVAL:
            return f"{self.value:.3f} (n={self.n})"
        if not self.has_interval:
            return f"{self.value:.3f}"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _nan(n: int = 0) -> Estimate:
    return Estimate(float("nan"), n=n)


def wilson(k: int, n: int) -> Estimate:
    """Proportion k/n with its Wilson score interval (0 of 5 gives about [0, 0.43])."""
    if n == 0:
        return _nan()
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=LEVEL, method="wilson")
    return Estimate(k / n, float(ci.low), float(ci.high), n, "wilson")


def percentile_interval(samples: np.ndarray, n: int | None = None) -> tuple[float, float]:
    """The 95% percentile interval of bootstrap `samples`. With `n` (the units each resample draws), Hesterberg's
    expanded percentiles (2015, Am Stat 69:371; R package `resample`, `ExpandProbs`): the levels Φ(t_{α/2, n−1} ·
    √(n/(n−1))) and their mirror instead of α/2, which undo the two reasons a percentile interval of a mean is too
    narrow on few units (the bootstrap's spread is √((n−1)/n) of the standard error; z instead of t). At 8 models
    the levels are about 0.6% and 99.4%."""
    from scipy.stats import norm, t

    alpha = (1 - LEVEL) / 2
    if n is not None and n > 1:
        alpha = float(norm.cdf(t.ppf(alpha, n - 1) * math.sqrt(n / (n - 1))))
    low, high = np.quantile(samples, [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_indices(n: int, n_boot: int, seed: int, strata: np.ndarray | None = None) -> np.ndarray:
    """[n_boot, n] resampled indices; with `strata`, each stratum is resampled within itself (its size kept)."""
    rng = np.random.default_rng(seed)
    if strata is None:
        return rng.integers(0, n, size=(n_boot, n))
    parts = []
    for g in np.unique(strata):
        members = np.flatnonzero(strata == g)
        parts.append(members[rng.integers(0, len(members), size=(n_boot, len(members)))])
    return np.concatenate(parts, axis=1)


EXPANDED_METHOD = "expanded bootstrap"


def bootstrap_mean(values, n_boot: int = N_BOOT, seed: int = 0) -> Estimate:
    """Mean over units (nan values are left out) with an expanded percentile bootstrap CI over resampled units
    (`percentile_interval` with n: a plain percentile interval falls short of 95% on few models;
    benchmarks/interval_coverage.py)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return _nan()
    value = float(v.mean())
    if len(v) < MIN_N_FOR_INTERVAL:
        return Estimate(value, n=len(v))
    boot = v[bootstrap_indices(len(v), n_boot, seed)].mean(1)
    return Estimate(value, *percentile_interval(boot, len(v)), len(v), EXPANDED_METHOD)


def proportion(values) -> Estimate:
    """A share of 0/1 outcomes (nan left out) with its Wilson interval."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if len(v) and not np.isin(v, (0.0, 1.0)).all():
        raise ValueError("proportion() needs 0/1 outcomes; use bootstrap_mean for continuous values")
    return wilson(int(v.sum()), len(v))


def auroc(labels, scores) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic (average ranks for ties): the same number as
    sklearn's roc_auc_score (tested), much faster on small arrays."""
    labels = np.asarray(labels) > 0
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _auroc_resampled(labels: np.ndarray, scores: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """AUROC of every resample in `idx` [B, n] at once (labels must be stratified so each row has both classes):
    with the pairwise win matrix W[p, q] = [s_p > s_q] + ½[s_p = s_q] over positives p and negatives q, a
    resample that takes positive p c_p times and negative q d_q times has AUROC c W dᵀ / (Σc Σd)."""
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    s = scores
    wins = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
    where_pos = np.full(len(labels), -1)
    where_pos[pos] = np.arange(len(pos))
    where_neg = np.full(len(labels), -1)
    where_neg[neg] = np.arange(len(neg))
    b = len(idx)
    counts_pos = np.zeros((b, len(pos)))
    counts_neg = np.zeros((b, len(neg)))
    rows = np.repeat(np.arange(b), idx.shape[1])
    flat = idx.ravel()
    is_pos = labels[flat]
    np.add.at(counts_pos, (rows[is_pos], where_pos[flat[is_pos]]), 1)
    np.add.at(counts_neg, (rows[~is_pos], where_neg[flat[~is_pos]]), 1)
    num = np.einsum("bp,pq,bq->b", counts_pos, wins, counts_neg)
    return num / (counts_pos.sum(1) * counts_neg.sum(1))


def bootstrap_auroc(labels, scores, n_boot: int = N_BOOT, seed: int = 0) -> Estimate:
    """AUROC with a percentile CI over resamples stratified by label; n = the smaller class."""
    labels = np.asarray(labels) > 0
    scores = np.asarray(scores, dtype=np.float64)
    n = int(min(labels.sum(), (~labels).sum()))
    value = auroc(labels, scores)
    if math.isnan(value) or n < MIN_N_FOR_INTERVAL:
        return Estimate(value, n=n)
    boot = _auroc_resampled(labels, scores, bootstrap_indices(len(labels), n_boot, seed, strata=labels))
    return Estimate(value, *percentile_interval(boot), n, "stratified bootstrap")


def newcombe_variance(theta, m: int, n: int):
    """Var(AUROC) at true value `theta` for m positives and n negatives: Hanley and McNeil's (1982) exponential
    model with m − 1 and n − 1 both replaced by N − 1, N = (m + n) / 2 (Newcombe 2006, Stat Med 25:559, Part 2):
    θ(1 − θ) / (mn) · [(2N − 1) − (3N − 3) / ((2 − θ)(1 + θ))]. Symmetric about ½ and zero at 0 and 1."""
    theta = np.asarray(theta, dtype=np.float64)
    big_n = (m + n) / 2
    return theta * (1 - theta) / (m * n) * ((2 * big_n - 1) - (3 * big_n - 3) / ((2 - theta) * (1 + theta)))


def score_auroc_interval(value: float, m: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """A score-type (Wilson-like) interval for an AUROC of m positives and n negatives: every θ with
    |value − θ| ≤ z·√V(θ), V Newcombe's variance (`newcombe_variance`). Unlike a percentile bootstrap it is not
    [1, 1] at perfect separation: 8 + 8 models at AUROC 1 give about [0.76, 1]."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    z = float(norm.ppf(1 - (1 - level) / 2))

    def lower(v: float) -> float:  # the root below v of (v − θ) − z√V(θ): positive at θ = 0, negative at v
        if v <= 0:
            return 0.0
        return float(brentq(lambda t: (v - t) - z * math.sqrt(newcombe_variance(t, m, n)), 0.0, min(v, 1 - 1e-12),
                            xtol=1e-10))

    return lower(value), 1 - lower(1 - value)  # V is symmetric about ½: the upper bound mirrors the lower


SCORE_METHOD = "score (Newcombe variance)"


def auroc_estimate(labels, scores, units=None) -> Estimate:
    """AUROC with the score interval of `score_auroc_interval`; n = the smaller class. `units` (one id per
    score) names the independent unit behind each score where one unit scores more than once (a clean model
    scored by a detector refitted once per left-out trigger kind): the interval then counts each unit once, not
    each score. The boards' AUROC cells: a percentile bootstrap collapses to [1, 1] at perfect separation and
    misses a true AUROC near 1 in most draws at 5 to 8 models per class (benchmarks/interval_coverage.py)."""
    labels = np.asarray(labels) > 0
    scores = np.asarray(scores, dtype=np.float64)
    value = auroc(labels, scores)
    if units is None:
        m, n = int(labels.sum()), int((~labels).sum())
    else:
        units = np.asarray(units)
        m, n = len(set(units[labels])), len(set(units[~labels]))
    if math.isnan(value) or min(m, n) < MIN_N_FOR_INTERVAL:
        return Estimate(value, n=min(m, n))
    return Estimate(value, *score_auroc_interval(value, m, n), min(m, n), SCORE_METHOD)


MOVER_METHOD = "MOVER"


def mover_difference(a: Estimate, b: Estimate) -> Estimate:
    """b − a for two independent estimates, its interval recovered from their own (MOVER: Zou & Donner 2008, Stat
    Med 27:1693; Newcombe 1998's method 10 for proportions): d − √((b − b.low)² + (a.high − a)²) to
    d + √((b.high − b)² + (a − a.low)²). For two score-interval AUROCs of separate model groups; a difference of
    their percentile bootstraps is [0, 0] when both separate perfectly. n is the smaller side's."""
    d, n = b.value - a.value, min(a.n, b.n)
    if not (a.has_interval and b.has_interval):
        return Estimate(d, n=n)
    low = d - math.sqrt((b.value - b.low) ** 2 + (a.high - a.value) ** 2)
    high = d + math.sqrt((b.high - b.value) ** 2 + (a.value - a.low) ** 2)
    return Estimate(d, low, high, n, MOVER_METHOD)


EXACT_SIGN_FLIPS = 16  # up to this many units, every one of the 2^n sign patterns is enumerated


def sign_flip_p(d, n_random: int = N_BOOT, seed: int = 0) -> float:
    """Two-sided p-value of mean(d) = 0 for paired differences `d`: the share of sign patterns (flipping the sign of
    each unit's difference, all equally likely under the null) whose |mean| reaches the observed |mean|; every
    pattern up to `EXACT_SIGN_FLIPS` units, else `n_random` random ones with the +1 correction. With 8 units it is
    never below 2/256 (a bootstrap p-value can be 0.001 there)."""
    d = np.asarray(d, dtype=np.float64)
    n = len(d)
    if n <= EXACT_SIGN_FLIPS:
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
    else:
        signs = 1 - 2 * np.random.default_rng(seed).integers(0, 2, size=(n_random, n))
    observed = abs(d.sum())
    hits = int((np.abs(signs @ d) >= observed - 1e-9 * max(1.0, observed)).sum())
    return hits / len(signs) if n <= EXACT_SIGN_FLIPS else min(1.0, (hits + 1) / (n_random + 1))


@dataclass
class Comparison:
    """stat(tool) − stat(reference) on the same units, its paired-bootstrap CI and two-sided p-value."""

    diff: Estimate
    p: float
    p_holm: float = float("nan")
    verdict: str = ""  # "beats", "ties", "worse" or "too few models (...)" (after Holm)
    p_floor: float = float("nan")  # the smallest p-value the test can give on these units, whatever the data


def p_floor(kind: str, n: int, n_boot: int = N_BOOT) -> float:
    """The smallest p-value `paired_test` can return on `n` units: 2 of the 2^n sign patterns for an exact
    sign-flip test (8 models: 0.0078), one in `n_random + 1` for a sampled one, 2 / (n_boot + 1) for the AUROC's
    bootstrap."""
    if kind == "mean":
        return 2 / 2**n if n <= EXACT_SIGN_FLIPS else 1 / (n_boot + 1)
    return 2 / (n_boot + 1)


def paired_test(a, b, kind: str = "mean", labels=None, n_boot: int = N_BOOT, seed: int = 0) -> Comparison:
    """stat(a) − stat(b) on the same units (models), with a paired-bootstrap CI (the same resampled units for both,
    stratified by `labels` for AUROC) and a two-sided p-value (`kind` "auroc": a and b are scores, labels the truth;
    "mean": a and b are per-unit values). For "mean" the p-value is a sign-flip permutation test of the per-unit
    differences (`sign_flip_p`); for "auroc" it is 2 × the smaller share of resampled differences on either side of
    zero, with the usual +1 correction so it is never 0."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if kind == "auroc":
        labels = (np.asarray(labels) > 0)[keep]
        n = int(min(labels.sum(), (~labels).sum()))
        if n == 0:
            return Comparison(_nan(), float("nan"))
        value = auroc(labels, a) - auroc(labels, b)
        idx = bootstrap_indices(len(a), n_boot, seed, strata=labels)
        diffs = _auroc_resampled(labels, a, idx) - _auroc_resampled(labels, b, idx)
    elif kind == "mean":
        n = len(a)
        if n == 0:
            return Comparison(_nan(), float("nan"))
        value = float((a - b).mean())
        idx = bootstrap_indices(n, n_boot, seed)
        diffs = (a - b)[idx].mean(1)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    if n < MIN_N_FOR_INTERVAL:  # a bootstrap over 2 or 3 models says nothing: no p-value, no verdict
        return Comparison(Estimate(float(value), n=n), float("nan"))
    if kind == "mean":
        p = sign_flip_p(a - b, n_boot, seed)
    else:
        below, above = (diffs <= 0).sum(), (diffs >= 0).sum()
        p = min(1.0, 2 * (min(below, above) + 1) / (n_boot + 1))
    low, high = percentile_interval(diffs, n if kind == "mean" else None)  # a mean's difference: expanded, as its cells
    return Comparison(Estimate(float(value), low, high, n, "paired bootstrap"), float(p), p_floor=p_floor(kind, n, n_boot))


def holm(comparisons: list[Comparison], higher_is_better: bool = True, alpha: float = 1 - LEVEL) -> list[Comparison]:
    """Holm-correct the p-values of one board's comparisons (in place) and set each verdict: "beats" or "worse"
    where the corrected p-value is below `alpha` (by the sign of the difference), "ties" otherwise; and "too few
    models" where no data could have given a corrected p below `alpha` (its test's `p_floor` times the number of
    comparisons: with 8 models and 12 tools, 12 × 2/256 = 0.094), so that "ties" is never a verdict the zoo could
    not have avoided."""
    from statsmodels.stats.multitest import multipletests

    valid = [c for c in comparisons if not math.isnan(c.p)]
    if valid:
        _, corrected, _, _ = multipletests([c.p for c in valid], alpha=alpha, method="holm")
        for c, p in zip(valid, corrected):
            c.p_holm = float(p)
            better = c.diff.value > 0 if higher_is_better else c.diff.value < 0
            c.verdict = ("beats" if better else "worse") if p < alpha and c.diff.value != 0 else "ties"
            if len(valid) * c.p_floor >= alpha:  # (a NaN floor, of a Comparison made elsewhere, is no floor)
                c.verdict = f"too few models (n={c.diff.n} for {len(valid)} comparisons)"
    for c in comparisons:
        if math.isnan(c.p):
            c.verdict = f"too few models (n={c.diff.n})" if c.diff.n else "n/a"
    return comparisons


def cluster_bootstrap_mean(values, clusters_a, clusters_b, n_boot: int = N_BOOT, seed: int = 0) -> Estimate:
    """Mean of per-response values with a two-way cluster bootstrap: resample the clusters of both factors
    (e.g. participants and trojans) with replacement and keep the responses in both drawn sets (each weighted
    by how often its two clusters were drawn). n = the smaller number of clusters."""
    v = np.asarray(values, dtype=np.float64)
    ca, cb = np.asarray(clusters_a), np.asarray(clusters_b)
    if len(v) == 0:
        return _nan()
    ua, ia = np.unique(ca, return_inverse=True)
    ub, ib = np.unique(cb, return_inverse=True)
    n = int(min(len(ua), len(ub)))
    value = float(v.mean())
    if n < MIN_N_FOR_INTERVAL:
        return Estimate(value, n=n)
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot):
        wa = np.bincount(rng.integers(0, len(ua), len(ua)), minlength=len(ua))
        wb = np.bincount(rng.integers(0, len(ub), len(ub)), minlength=len(ub))
        w = wa[ia] * wb[ib]
        if w.sum() > 0:
            boot.append(float((w * v).sum() / w.sum()))
    if len(boot) < n_boot * 0.99:  # resamples with no response at all: too sparse a design for an interval
        return Estimate(value, n=n)
    return Estimate(value, *percentile_interval(np.asarray(boot)), n, "two-way cluster bootstrap")


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


def bootstrap(stat: Callable[..., float], *arrays, n_boot: int = N_BOOT, seed: int = 0, stratify=None) -> Estimate:
    """Any statistic of paired arrays with a percentile CI over resampled units (stratified by `stratify`).
    Used by studies for statistics that are not a mean, a proportion or an AUROC. A resample on which the
    statistic fails (raises or gives nan) makes the interval unavailable rather than being dropped."""
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    if n == 0:
        return _nan()
    value = float(stat(*arrays))
    n_eff = n if stratify is None else int(min(np.unique(stratify, return_counts=True)[1]))
    if n_eff < MIN_N_FOR_INTERVAL:
        return Estimate(value, n=n_eff)
    idx = bootstrap_indices(n, n_boot, seed, None if stratify is None else np.asarray(stratify))
    samples = []
    for row in idx:
        try:
            s = float(stat(*(a[row] for a in arrays)))
        except ValueError:
            return Estimate(value, n=n_eff)
        if math.isnan(s):
            return Estimate(value, n=n_eff)
        samples.append(s)
    return Estimate(value, *percentile_interval(np.asarray(samples)), n_eff, "bootstrap")
