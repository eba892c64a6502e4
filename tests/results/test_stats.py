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
