import numpy as np
import pytest

from trojanbench.results.stats import (
    Estimate,
    auroc,
    bootstrap,
    bootstrap_auroc,
    bootstrap_mean,
    cluster_bootstrap_mean,
    fpr_at_tpr,
    holm,
    paired_test,
    proportion,
    tpr_at_fpr,
    wilson,
)


def test_metrics_on_known_cases():
    labels, perfect = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])
    assert auroc(labels, perfect) == 1.0 and auroc(labels, -perfect) == 0.0
    assert fpr_at_tpr(labels, perfect) == 0.0 and tpr_at_fpr(labels, perfect) == 1.0
    assert np.isnan(auroc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_fast_auroc_equals_sklearn_with_and_without_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for n in (5, 40, 500):
        labels = rng.integers(0, 2, n)
        labels[:2] = [0, 1]
        for scores in (rng.normal(size=n), rng.integers(0, 4, n).astype(float)):  # continuous, heavily tied
            assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert np.isnan(auroc([1, 1, 1], [0.1, 0.2, 0.3]))


def test_wilson_interval_of_zero_of_five_and_a_proportion():
    e = wilson(0, 5)
    assert e.value == 0 and e.low == pytest.approx(0.0, abs=1e-9) and e.high == pytest.approx(0.4345, abs=2e-3)
    assert e.method == "wilson" and "[0.000, 0.43" in str(e)
    p = proportion([1, 1, 0, 1, 0, 1, 1, 1])
    assert p.value == 0.75 and p.low < 0.75 < p.high and p.n == 8
    with pytest.raises(ValueError):
        proportion([0.5, 1.0])


def test_a_cell_with_fewer_than_five_units_prints_no_interval():
    e = bootstrap_mean([0.539])
    assert str(e) == "0.539 (n=1)" and not e.has_interval
    assert str(bootstrap_mean([0.1, 0.2, 0.3])) == "0.200 (n=3)"
    assert str(wilson(0, 4)) == "0.000 (n=4)"
    big = bootstrap_mean(np.linspace(0, 1, 20))
    assert big.has_interval and "[" in str(big)
    # AUROC: n is the smaller class, so 2 trojans against 20 clean models get no interval
    few = bootstrap_auroc([1, 1] + [0] * 20, np.r_[[0.9, 0.8], np.linspace(0, 0.5, 20)])
    assert few.n == 2 and few.value == 1.0 and not few.has_interval


def test_bootstrap_intervals_bracket_the_value_and_narrow_with_data():
    rng = np.random.default_rng(0)
    small = bootstrap_mean(rng.normal(1, 1, 20))
    large = bootstrap_mean(rng.normal(1, 1, 2000))
    assert small.low <= small.value <= small.high
    assert large.high - large.low < small.high - small.low
    assert large.low < 1 < large.high
    generic = bootstrap(np.median, rng.normal(0, 1, 50))
    assert generic.low <= generic.value <= generic.high


def test_vectorised_stratified_auroc_bootstrap_matches_a_loop():
    from trojanbench.results.stats import _auroc_resampled, bootstrap_indices

    rng = np.random.default_rng(1)
    labels = np.r_[np.ones(12, bool), np.zeros(15, bool)]
    scores = np.round(rng.normal(size=27) + labels, 1)  # with ties
    idx = bootstrap_indices(len(labels), 50, 3, strata=labels)
    fast = _auroc_resampled(labels, scores, idx)
    slow = [auroc(labels[i], scores[i]) for i in idx]
    assert np.allclose(fast, slow)
    assert all(labels[i].sum() == 12 for i in idx)  # stratified: every resample keeps both classes' sizes
    est = bootstrap_auroc(labels, scores)
    assert est.low <= est.value <= est.high and est.n == 12


def test_a_tool_equal_to_the_baseline_plus_noise_ties():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 40)
    tool = base + rng.normal(0, 0.05, 40)
    c = holm([paired_test(tool, base)])[0]
    assert c.verdict == "ties" and c.diff.low < 0 < c.diff.high
    better = holm([paired_test(base + 0.2 + rng.normal(0, 0.05, 40), base)])[0]
    assert better.verdict == "beats" and better.p_holm < 0.05
    worse = holm([paired_test(base - 0.2, base)], higher_is_better=True)[0]
    assert worse.verdict == "worse"
    lower_better = holm([paired_test(base - 0.2, base)], higher_is_better=False)[0]
    assert lower_better.verdict == "beats"


def test_paired_auroc_test_resamples_the_same_models_for_both_tools():
    rng = np.random.default_rng(2)
    labels = np.r_[np.ones(20), np.zeros(20)]
    good = labels + rng.normal(0, 0.3, 40)
    same = holm([paired_test(good, good.copy(), "auroc", labels)])[0]
    assert same.diff.value == 0 and same.verdict == "ties" and same.p == 1.0
    noise = rng.normal(size=40)
    c = holm([paired_test(good, noise, "auroc", labels)])[0]
    assert c.verdict == "beats" and c.diff.value > 0.3


def test_holm_correction_changes_a_verdict_in_a_constructed_case():
    from trojanbench.results.stats import Comparison

    # two tools with raw p = 0.03 and 0.04: each alone beats the baseline at 0.05, but corrected for testing two
    # tools Holm multiplies the smaller by 2 (0.06) and neither does
    def comp(p):
        return Comparison(Estimate(0.1, 0.01, 0.2, 30), p)

    alone = holm([comp(0.03)])
    assert alone[0].verdict == "beats"
    both = holm([comp(0.03), comp(0.04)])
    assert [c.verdict for c in both] == ["ties", "ties"] and both[0].p_holm == pytest.approx(0.06)


def test_cluster_bootstrap_is_wider_than_treating_answers_as_independent():
    rng = np.random.default_rng(0)
    people, trojans = np.repeat(np.arange(8), 10), np.tile(np.arange(10), 8)
    skill = rng.uniform(0, 1, 8)  # people differ a lot: answers of one person are correlated
    correct = (rng.uniform(size=80) < skill[people]).astype(float)
    clustered = cluster_bootstrap_mean(correct, people, trojans)
    naive = bootstrap_mean(correct)
    assert clustered.value == pytest.approx(naive.value)
    assert clustered.high - clustered.low > naive.high - naive.low
    assert cluster_bootstrap_mean(correct[:20], people[:20], trojans[:20]).n == 2  # two people: no interval


def test_paired_mean_p_value_is_the_exact_sign_flip_test():
    """With 8 models a paired comparison of means can be no surer than 2 of the 2^8 sign patterns (p = 2/256): the
    p-value is scipy's exact paired permutation test, not a bootstrap share that reaches 0.001 on 8 models."""
    from scipy.stats import permutation_test

    rng = np.random.default_rng(3)
    base = rng.uniform(0, 1, 8)
    always_better = paired_test(base - 0.1 - rng.uniform(0, 0.05, 8), base)
    assert always_better.p == pytest.approx(2 / 256)
    for n in (5, 8, 12):
        a, b = rng.normal(size=n), rng.normal(size=n) + 0.3
        ref = permutation_test((a, b), lambda x, y, axis: np.mean(x - y, axis=axis), permutation_type="samples",
                               n_resamples=np.inf).pvalue
        assert paired_test(a, b).p == pytest.approx(ref)
    assert paired_test(base, base.copy()).p == 1.0  # all differences zero
    big = paired_test(base.repeat(5) + rng.normal(0, 0.01, 40), base.repeat(5))  # 40 units: random sign patterns
    assert 0 < big.p <= 1


def test_a_verdict_no_data_could_make_significant_says_too_few_models():
    """8 models, 12 tools: the exact sign-flip test's smallest p (2/256) times 12 is 0.094, so even a tool better on
    every model could only "tie". That is the zoo's size, not a finding: the verdict says so; 3 tools can beat."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.7, 8)

    def board(n_tools):
        return holm([paired_test(base + 0.2 + rng.uniform(0, 0.05, 8), base) for _ in range(n_tools)])

    twelve = board(12)
    assert all(c.p_floor == 2 / 256 and c.p_holm == pytest.approx(12 * 2 / 256) for c in twelve)
    assert {c.verdict for c in twelve} == {"too few models (n=8 for 12 comparisons)"}
    assert {c.verdict for c in board(3)} == {"beats"}
    auroc_cmp = paired_test(rng.uniform(size=16), rng.uniform(size=16), "auroc", labels=np.repeat([0, 1], 8), n_boot=200)
    assert auroc_cmp.p_floor == 2 / 201


def test_score_auroc_interval_solves_its_defining_inequality():
    """Every θ on a fine grid with |θ̂ − θ| ≤ z√V(θ) (V Newcombe's variance, written out here from Newcombe 2006)
    lies inside the interval, and the grid's extremes are its bounds; the interval is the mirror image at 1 − θ̂."""
    from scipy.stats import norm

    from trojanbench.results.stats import score_auroc_interval

    def variance(t, m, n):  # θ(1 − θ)/(mn) · [(2N − 1) − (3N − 3)/((2 − θ)(1 + θ))], N = (m + n)/2
        big = (m + n) / 2
        return t * (1 - t) / (m * n) * ((2 * big - 1) - (3 * big - 3) / ((2 - t) * (1 + t)))

    grid = np.linspace(0, 1, 200001)
    z = norm.ppf(0.975)
    for value, m, n in ((1.0, 8, 8), (0.9, 7, 8), (0.5, 5, 5), (0.73, 16, 11), (0.0, 6, 9)):
        inside = grid[np.abs(value - grid) <= z * np.sqrt(variance(grid, m, n))]
        low, high = score_auroc_interval(value, m, n)
        assert low == pytest.approx(inside.min(), abs=1e-5) and high == pytest.approx(inside.max(), abs=1e-5)
        mirror = score_auroc_interval(1 - value, m, n)
        assert mirror == pytest.approx((1 - high, 1 - low), abs=1e-9)
    low, high = score_auroc_interval(1.0, 8, 8)
    assert high == 1.0 and 0.6 < low < 0.9  # perfect separation of 8 + 8 models is not certainty


def test_auroc_estimate_covers_a_true_auroc_near_one_where_the_bootstrap_does_not():
    """The reason boards use it: at 8 models per class and a true AUROC of 0.95 the percentile bootstrap misses
    far more often than 5% (it is [1, 1] whenever the draw separates perfectly)."""
    from scipy.stats import norm

    from trojanbench.results.stats import SCORE_METHOD, auroc_estimate

    rng = np.random.default_rng(0)
    delta = np.sqrt(2) * norm.ppf(0.95)
    labels = np.r_[np.ones(8), np.zeros(8)]
    hits = {"score": 0, "bootstrap": 0}
    for i in range(200):
        scores = np.r_[rng.normal(delta, 1, 8), rng.normal(0, 1, 8)]
        est, boot = auroc_estimate(labels, scores), bootstrap_auroc(labels, scores, n_boot=500, seed=i)
        assert est.method == SCORE_METHOD and est.value == boot.value and est.n == 8
        hits["score"] += est.low <= 0.95 <= est.high
        hits["bootstrap"] += boot.low <= 0.95 <= boot.high
    assert hits["score"] / 200 > 0.9 and hits["bootstrap"] / 200 < 0.85


def test_auroc_estimate_counts_a_unit_scored_twice_once():
    from trojanbench.results.stats import auroc_estimate

    labels = np.r_[np.ones(6), np.zeros(12)]
    scores = np.r_[np.linspace(0.5, 1, 6), np.linspace(0, 0.6, 12)]
    units = [f"t{i}" for i in range(6)] + [f"c{i % 6}" for i in range(12)]  # 6 clean models, each scored twice
    once, twice = auroc_estimate(labels, scores, units), auroc_estimate(labels, scores)
    assert once.value == twice.value and once.n == twice.n == 6
    assert once.high - once.low > twice.high - twice.low  # 6 clean models, not 12, stand behind it
    assert not auroc_estimate(labels[:10], scores[:10], units[:10]).has_interval  # 4 clean models: n=4


def test_mean_interval_is_the_expanded_percentile_interval():
    """Hesterberg's expanded percentiles: at n units the levels Φ(t_{0.025, n−1} √(n/(n−1))) and their mirror (the
    `resample` package's ExpandProbs), here recomputed; wider than the plain percentile interval on few models,
    the same as it on many."""
    from scipy.stats import norm, t

    from trojanbench.results.stats import EXPANDED_METHOD, bootstrap_indices

    v = np.array([0.0, 0.1, 0.05, 0.3, 0.0, 0.2, 0.15, 0.02])
    est = bootstrap_mean(v, n_boot=2000, seed=3)
    boot = v[bootstrap_indices(8, 2000, 3)].mean(1)
    level = norm.cdf(t.ppf(0.025, 7) * np.sqrt(8 / 7))
    assert 0.005 < level < 0.007
    assert (est.low, est.high) == pytest.approx(tuple(np.quantile(boot, [level, 1 - level])), abs=1e-12)
    assert est.method == EXPANDED_METHOD and est.high - est.low > np.diff(np.quantile(boot, [0.025, 0.975]))[0]
    comparison = paired_test(v + 0.1, v[::-1])
    diffs = (v + 0.1 - v[::-1])[bootstrap_indices(8, 2000, 0)].mean(1)
    assert (comparison.diff.low, comparison.diff.high) == pytest.approx(tuple(np.quantile(diffs, [level, 1 - level])), abs=1e-12)


def test_expanded_mean_interval_covers_better_on_eight_models():
    from trojanbench.results.stats import bootstrap_indices, percentile_interval

    rng = np.random.default_rng(0)
    idx = bootstrap_indices(8, 1000, 0)
    plain = expanded = 0
    for _ in range(400):
        v = rng.normal(0, 1, 8)
        boot = v[idx].mean(1)
        low, high = percentile_interval(boot)
        plain += low <= 0 <= high
        low, high = percentile_interval(boot, 8)
        expanded += low <= 0 <= high
    assert plain / 400 < expanded / 400 and expanded / 400 > 0.92


def test_mover_difference_reproduces_newcombes_worked_example():
    """Newcombe (1998, Stat Med 17:873), example (a), method 10: 56/70 − 48/80 = 0.2000, 95% CI 0.0524 to 0.3339
    from the two Wilson intervals. For two AUROCs of 8 + 8 models that both separate perfectly, a difference of
    percentile bootstraps is [0, 0]; MOVER on their score intervals is not."""
    from trojanbench.results.stats import MOVER_METHOD, auroc_estimate, mover_difference

    d = mover_difference(wilson(48, 80), wilson(56, 70))
    assert d.value == pytest.approx(0.2) and d.method == MOVER_METHOD and d.n == 70
    assert (round(d.low, 4), round(d.high, 4)) == (0.0524, 0.3339)
    perfect = auroc_estimate([0] * 8 + [1] * 8, np.arange(16))
    same = mover_difference(perfect, perfect)
    assert same.value == 0 and same.low < -0.2 and same.high > 0.2
    assert not mover_difference(perfect, Estimate(0.9, n=4)).has_interval  # a side without an interval: n=4
