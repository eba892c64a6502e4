"""The issue-6 synthesizers on a patch-trojaned digits CNN and its clean twin: the regularised (TABOR-style)
inversion recovers a trigger that transfers, the feature-level adversary finds the trojan rather than any adversarial feature, the feature
visualisations raise the target logit, and every one returns a valid, seed-determined stamp and leaves the
model as it was."""

import pytest
import torch

from trojanbench.config import TrainConfig
from trojanbench.implant import implant
from trojanbench.tools.detect import DetectContext
from trojanbench.tools.synthesize import SYNTHESIZERS
from trojanbench.train.evaluate import predict
from trojanbench.trojans import PoisonSpec, TriggerSpec, TrojanSpec

TARGET = 3
# few steps: enough to exercise every code path, not to converge
QUICK = {"fourier-fv": {"steps": 20}, "cppn-fv": {"steps": 20}, "regularised-inversion": {"steps": 20},
         "feature-adversary": {"steps": 20, "ae_steps": 20},
         "natural-patch-search": {"patch_steps": 20, "starts": 1, "bank": 64}}


@pytest.fixture(scope="module")
def models(digits):
    torch.set_num_threads(1)
    train = TrainConfig(epochs=10, batch_size=64, lr=0.05)
    spec = TrojanSpec(trigger=TriggerSpec(kind="patch"), poison=PoisonSpec(target=TARGET, rate=0.1))
    trojaned = implant(digits, "cnn", {"width": 16, "depth": 3}, spec, train, seed=0).model
    clean = implant(digits, "cnn", {"width": 16, "depth": 3}, None, train, seed=0).model
    return trojaned, clean


@pytest.fixture(scope="module")
def ctx(digits):
    return DetectContext(digits.x_test[:200], digits.y_test[:200], 10)


def _transfer(model, stamp, digits):
    others = digits.x_test[200:][digits.y_test[200:] != TARGET]
    return float((predict(model, stamp.apply(others)) == TARGET).float().mean())


def _synth(name, model, ctx, **kwargs):
    return SYNTHESIZERS.get(name)(**kwargs).synthesize(model, TARGET, ctx)


@pytest.mark.parametrize("name", sorted(QUICK))
def test_returns_a_valid_seeded_stamp_and_leaves_the_model_alone(models, digits, name):
    trojaned, _ = models
    ctx = DetectContext(digits.x_test[:64], digits.y_test[:64], 10, seed=1)
    trojaned.train()
    before = {k: v.clone() for k, v in trojaned.state_dict().items()}
    grads = [p.requires_grad for p in trojaned.parameters()]
    stamp = _synth(name, trojaned, ctx, **QUICK[name])
    again = _synth(name, trojaned, ctx, **QUICK[name])
    other_seed = _synth(name, trojaned, DetectContext(ctx.x_clean, ctx.y_clean, 10, seed=2), **QUICK[name])
    assert stamp.pattern.shape == (1, 16, 16) and stamp.mask.shape == (16, 16)
    for t in (stamp.pattern, stamp.mask):
        assert torch.isfinite(t).all() and float(t.min()) >= 0 and float(t.max()) <= 1
    assert torch.equal(stamp.pattern, again.pattern) and torch.equal(stamp.mask, again.mask)
    assert not (torch.equal(stamp.pattern, other_seed.pattern) and torch.equal(stamp.mask, other_seed.mask))
    assert all(torch.equal(before[k], v) for k, v in trojaned.state_dict().items())
    assert [p.requires_grad for p in trojaned.parameters()] == grads and trojaned.training
    trojaned.eval()


def test_regularised_inversion_recovers_a_trigger_that_transfers(models, digits, ctx):
    trojaned, _ = models
    found = _transfer(trojaned, _synth("regularised-inversion", trojaned, ctx), digits)
    assert found >= 0.7, found


def test_feature_adversary_finds_the_trojan_not_just_an_adversarial_feature(models, digits, ctx):
    trojaned, clean = models
    on_trojan = _transfer(trojaned, _synth("feature-adversary", trojaned, ctx), digits)
    on_clean = _transfer(clean, _synth("feature-adversary", clean, ctx), digits)
    assert on_trojan >= 0.6 and on_trojan > on_clean + 0.3, (on_trojan, on_clean)


@pytest.mark.parametrize("name", ["fourier-fv", "cppn-fv"])
def test_feature_visualisation_raises_the_target_logit(models, ctx, name):
    trojaned, _ = models

    def target_logit(stamp):
        with torch.no_grad():
            logits = trojaned.eval()(stamp.apply(ctx.x_clean))
        return float(logits[:, TARGET].mean()), float((logits.argmax(1) == TARGET).float().mean())

    fv_logit, fv_share = target_logit(_synth(name, trojaned, ctx))
    base_logit, base_share = target_logit(_synth("mean-image", trojaned, ctx))
    assert fv_logit > base_logit + 3 and fv_share > base_share + 0.5, (fv_logit, base_logit, fv_share, base_share)
