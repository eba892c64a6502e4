"""Feature synthesis on a patch-trojaned CNN: the adversarial patch transfers to other classes far more on the
trojaned model than on a clean one (it finds the trojan, not just any adversarial feature); every synthesizer
returns a valid stamp and leaves the model as it was."""

import pytest
import torch

from trojanbench.implant import implant
from trojanbench.tools.detect import DetectContext
from trojanbench.tools.synthesize import SYNTHESIZERS
from trojanbench.train.evaluate import predict
from trojanbench.trojans import PoisonSpec, TriggerSpec, TrojanSpec


@pytest.fixture(scope="module")
def models(digits):
    spec = TrojanSpec(trigger=TriggerSpec(kind="patch"), poison=PoisonSpec(target=3, rate=0.1))
    trojaned = implant(digits, "cnn", {"width": 16, "depth": 3}, spec, seed=0).model
    clean = implant(digits, "cnn", {"width": 16, "depth": 3}, None, seed=0).model
    return trojaned, clean


def _transfer(model, stamp, digits):
    others = digits.x_test[200:][digits.y_test[200:] != 3]
    return float((predict(model, stamp.apply(others)) == 3).float().mean())


def test_adversarial_patch_finds_the_trojan_not_just_an_adversarial_feature(models, digits):
    trojaned, clean = models
    ctx = DetectContext(digits.x_test[:200], digits.y_test[:200], 10)
    on_trojan = _transfer(trojaned, SYNTHESIZERS.get("adversarial-patch")().synthesize(trojaned, 3, ctx), digits)
    on_clean = _transfer(clean, SYNTHESIZERS.get("adversarial-patch")().synthesize(clean, 3, ctx), digits)
    noise = _transfer(trojaned, SYNTHESIZERS.get("noise-patch")().synthesize(trojaned, 3, ctx), digits)
    assert on_trojan >= 0.6 and on_trojan > on_clean + 0.3 and noise < 0.2, (on_trojan, on_clean, noise)


@pytest.mark.parametrize("name", ["trigger-inversion", "adversarial-patch", "exemplar", "noise-patch", "mean-image"])
def test_every_synthesizer_returns_a_valid_stamp_and_leaves_the_model_alone(models, digits, name):
    trojaned, _ = models
    ctx = DetectContext(digits.x_test[:64], digits.y_test[:64], 10)
    before = {k: v.clone() for k, v in trojaned.state_dict().items()}
    grads = [p.requires_grad for p in trojaned.parameters()]
    stamp = SYNTHESIZERS.get(name)().synthesize(trojaned, 3, ctx)
    assert stamp.pattern.shape == (1, 16, 16) and stamp.mask.shape == (16, 16)
    assert 0 <= float(stamp.mask.min()) and float(stamp.mask.max()) <= 1 and torch.isfinite(stamp.pattern).all()
    assert all(torch.equal(before[k], v) for k, v in trojaned.state_dict().items())
    assert [p.requires_grad for p in trojaned.parameters()] == grads
