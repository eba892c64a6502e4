import pytest
import numpy as np

from trojanbench.results.stats import auroc, bootstrap, fpr_at_tpr, tpr_at_fpr


def test_metrics_on_known_cases():
    labels, perfect = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])
    assert auroc(labels, perfect) == 1.0 and auroc(labels, -perfect) == 0.0
    assert fpr_at_tpr(labels, perfect) == 0.0 and tpr_at_fpr(labels, perfect) == 1.0
    assert np.isnan(auroc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_bootstrap_ci_brackets_the_value_and_narrows_with_data():
    rng = np.random.default_rng(0)
    small = bootstrap(np.mean, rng.normal(1, 1, 20))
    large = bootstrap(np.mean, rng.normal(1, 1, 2000))
    assert small.low <= small.value <= small.high
    assert large.high - large.low < small.high - small.low
    assert large.low < 1 < large.high


def test_fast_auroc_equals_sklearn_with_and_without_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for n in (5, 40, 500):
        labels = rng.integers(0, 2, n)
        labels[:2] = [0, 1]
        for scores in (rng.normal(size=n), rng.integers(0, 4, n).astype(float)):  # continuous, heavily tied
            assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert np.isnan(auroc([1, 1, 1], [0.1, 0.2, 0.3]))
