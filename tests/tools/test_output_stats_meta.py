"""output-stats-meta (the detector registered as "mntd" before): target-invariant features, clean vs trojaned
models told apart on held-out models, its shadow zoo trained once and then read from the cache, the cache key
tied to the architecture, the audited models left untouched."""

import copy

import numpy as np
import pytest
import torch

from trojanbench.implant import implant
from trojanbench.results.stats import auroc
from trojanbench.testing import fast_train_config, tiny_dataset
from trojanbench.tools.detect import DetectContext, shadow
from trojanbench.tools.detect.output_stats import OutputStatsMeta, summary_features
from trojanbench.tools.detect.shadow import ShadowConfig, shadow_key
from trojanbench.trojans import PoisonSpec, TriggerSpec, TrojanSpec

ARCH = {"width": 8, "depth": 2}
TINY_SHADOWS = ShadowConfig(models=24, epochs=8, batch_size=32)


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    ds = tiny_dataset(n_train=256, n_test=160, classes=4, seed=0)
    models, labels = [], []
    for i in range(16):  # audited zoo: alternately clean and a crude patch trojan (random place, size, target)
        spec = None if i % 2 == 0 else TrojanSpec(
            trigger=TriggerSpec(kind="patch", params={"size": 3 + i % 3, "location": ["top-left", "bottom-right",
                                                                                      "top-right"][i % 3]}),
            poison=PoisonSpec(target=i % 4, rate=0.1))
        models.append(implant(ds, "cnn", ARCH, spec, fast_train_config(4), seed=i).model)
        labels.append(int(spec is not None))
    return ds, DetectContext(ds.x_test, ds.y_test, 4, seed=0), models, labels


def test_features_do_not_depend_on_which_label_is_which(tiny):
    ds, _, models, _ = tiny
    model = models[0].eval()
    permuted = copy.deepcopy(model)
    head = [m for m in permuted.modules() if isinstance(m, torch.nn.Linear)][-1]
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        head.weight.copy_(head.weight[perm])
        head.bias.copy_(head.bias[perm])
        q = ds.x_test[:6]
        assert torch.allclose(summary_features(model(q)), summary_features(permuted(q)), atol=1e-5)


def test_output_stats_meta_tells_held_out_trojans_from_clean_models_and_reuses_its_cache(tiny, tmp_path, monkeypatch):
    _, ctx, models, labels = tiny
    trainings = []
    real = shadow.train_shadow_zoo
    monkeypatch.setattr(shadow, "train_shadow_zoo", lambda *a, **k: trainings.append(1) or real(*a, **k))
    train, test = models[:8], models[8:]
    before = {k: v.clone() for k, v in train[0].state_dict().items()}
    grads = [p.requires_grad for p in train[0].parameters()]

    det = OutputStatsMeta(shadow=TINY_SHADOWS, cache=tmp_path)
    det.fit(train, labels[:8], ctx)
    assert det.shadow_cached == [False] and len(trainings) == 1
    scores = np.array([det.detect(m, ctx).score for m in test])
    assert auroc(np.array(labels[8:]), scores) >= 0.8  # chance is 0.5; the real margin is usually 1.0
    no_shadows = OutputStatsMeta(shadow=None)
    no_shadows.fit(train, labels[:8], ctx)  # the zoo's 8 training models alone still fit, without a cache
    assert 0.0 <= no_shadows.detect(test[0], ctx).score <= 1.0

    again = OutputStatsMeta(shadow=TINY_SHADOWS, cache=tmp_path)
    again.fit(train, labels[:8], ctx)
    assert again.shadow_cached == [True] and len(trainings) == 1  # read back, not retrained
    assert np.allclose([again.detect(m, ctx).score for m in test], scores, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in train[0].state_dict().items())
    assert [p.requires_grad for p in train[0].parameters()] == grads


def test_shadow_cache_key_follows_the_architecture_not_the_weights(tiny):
    ds, ctx, models, _ = tiny
    wider = implant(ds, "cnn", {"width": 12, "depth": 2}, None, fast_train_config(1), seed=0).model
    key = shadow_key(models[0], ctx.x_clean, ctx.y_clean, 4, TINY_SHADOWS)
    assert shadow_key(models[1], ctx.x_clean, ctx.y_clean, 4, TINY_SHADOWS) == key  # other weights, same architecture
    assert shadow_key(wider, ctx.x_clean, ctx.y_clean, 4, TINY_SHADOWS) != key
    assert shadow_key(models[0], ctx.x_clean[1:], ctx.y_clean[1:], 4, TINY_SHADOWS) != key
    assert shadow_key(models[0], ctx.x_clean, ctx.y_clean, 4, ShadowConfig(models=26, epochs=8)) != key


def test_shadow_models_are_fresh_copies_half_of_them_trojaned(tiny):
    _, ctx, models, _ = tiny
    made, labels = shadow.train_shadow_zoo(models[0], ctx.x_clean[:80], ctx.y_clean[:80], 4,
                                           ShadowConfig(models=4, epochs=3))
    assert labels == [0, 1, 0, 1]
    for m in made:  # trained from a fresh initialisation: nothing of the template's weights is left
        assert all(not torch.equal(a, b) for a, b in zip(m.parameters(), models[0].parameters()))
        assert type(m) is type(models[0]) and not m.training
