"""Feature synthesis on a patch-trojaned CNN: the adversarial patch transfers to other classes far more on the
trojaned model than on a clean one (it finds the trojan, not just any adversarial feature); every synthesizer
returns a valid stamp and leaves the model as it was; the random-prior baseline draws whole triggers from the
zoo's prior; every synthesizer says which paper it follows and how faithfully."""

import pytest
import torch

from trojanbench.errors import UserError
from trojanbench.implant import implant
from trojanbench.tools.detect import DetectContext
from trojanbench.tools.synthesize import SYNTHESIZERS, TriggerStamp
from trojanbench.tools.synthesize.random_prior import trigger_prior
from trojanbench.train.evaluate import predict
from trojanbench.trojans import PoisonSpec, TriggerSpec, TrojanSpec, make_trigger
from trojanbench.zoo.plan import load_zoo_config


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
    assert on_trojan >= 0.6 and on_trojan > on_clean + 0.3, (on_trojan, on_clean)


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


def test_random_prior_draws_whole_triggers_from_the_zoo_prior(models, digits):
    trojaned, clean = models
    prior = trigger_prior(load_zoo_config("digits-bench"))
    assert {p.kind for p in prior} == {"patch", "blended", "warp", "style", "natural"} and len(prior) == 9
    ctx = DetectContext(digits.x_test[:64], digits.y_test[:64], 10, prior=prior)
    before = {k: v.clone() for k, v in trojaned.state_dict().items()}
    draw = SYNTHESIZERS.get("random-prior")().synthesize(trojaned, 3, ctx)
    again = SYNTHESIZERS.get("random-prior")().synthesize(trojaned, 3, ctx)
    assert isinstance(draw, TriggerStamp) and torch.equal(draw.apply(digits.x_test[:8]), again.apply(digits.x_test[:8]))
    assert all(torch.equal(before[k], v) for k, v in trojaned.state_dict().items())
    kinds = {SYNTHESIZERS.get("random-prior")().synthesize(m, t, DetectContext(ctx.x_clean, ctx.y_clean, 10, seed=s,
                                                                                prior=prior)).trigger.kind
             for s in range(6) for t in range(5) for m in (trojaned, clean)}
    assert kinds == {"patch", "blended", "warp", "style", "natural"}  # every kind of the prior comes up
    with pytest.raises(UserError, match="prior"):
        SYNTHESIZERS.get("random-prior")().synthesize(trojaned, 3, DetectContext(ctx.x_clean, ctx.y_clean, 10))


def test_a_trigger_stamp_applies_any_trigger_deterministically(digits):
    x = digits.x_test[:16]
    moving = make_trigger(TriggerSpec(kind="patch", params={"location": "random"}, seed=3), (1, 16, 16))
    stamp = TriggerStamp(moving, placement_seed=5)
    assert torch.equal(stamp.apply(x), stamp.apply(x)) and stamp.mask is None
    assert not torch.equal(stamp.apply(x), TriggerStamp(moving, placement_seed=6).apply(x))
    corner = make_trigger(TriggerSpec(kind="patch"), (1, 16, 16))
    assert torch.equal(TriggerStamp(corner).mask, corner.mask())
    warp = make_trigger(TriggerSpec(kind="warp", seed=1), (1, 16, 16))
    assert torch.equal(TriggerStamp(warp).apply(x), warp.apply(x)) and TriggerStamp(warp).mask is None


@pytest.mark.parametrize("name", SYNTHESIZERS.names())
def test_every_synthesizer_says_what_it_follows(name):
    cls = SYNTHESIZERS.get(name)
    if cls.is_baseline:
        assert cls.fidelity.startswith("baseline: ") and cls.paper == ""
    else:
        assert cls.paper and (cls.fidelity == "faithful" or cls.fidelity.startswith("adapted: ")), (cls.paper, cls.fidelity)


@pytest.mark.parametrize("target", [10, -1, 2.0, True, "3"])
def test_every_synthesizer_refuses_a_target_that_is_not_a_class_label(target):
    """A direct call with a target outside the model's labels is a one-line error naming the tool, before any work
    (it was an IndexError deep inside some methods); so is DBS's inversion toward such a label."""
    from trojanbench.tools.detect.dbs import DBS

    ctx = DetectContext(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), num_classes=10)
    for name in SYNTHESIZERS.names():
        with pytest.raises(UserError, match="is not a class label of this model .0 to 9."):
            SYNTHESIZERS.get(name)().synthesize(torch.nn.Identity(), target, ctx)
    text = DetectContext(torch.ones(4, 6, dtype=torch.long) * 5, torch.zeros(4, dtype=torch.long), num_classes=10)
    with pytest.raises(UserError, match="dbs: target"):
        DBS().invert(torch.nn.Identity(), text, targets=[target])


def test_a_stamp_outside_the_image_range_or_shape_is_refused_naming_the_tool():
    """A plug-in's stamp with a pattern of 5 under a mask of 3 was scored as a working trigger (pixels of 13 to 15)
    while people were shown it clamped; every returned stamp is now checked (`Stamp.check`)."""
    from trojanbench.tools.synthesize import Stamp, Synthesizer

    class Loud(Synthesizer):
        def __init__(self, pattern, mask):
            self.pattern, self.mask = pattern, mask

        def synthesize(self, model, target, ctx):
            return Stamp(self.pattern, self.mask)

    ctx = DetectContext(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), num_classes=10)
    ones = torch.ones(1, 8, 8)
    assert Loud(ones * 0.5, ones[0]).synthesize(torch.nn.Identity(), 3, ctx).pattern.max() == 0.5  # a valid one
    for pattern, mask, message in ((ones * 5, ones[0], r"Loud returned a stamp whose pattern has values in \[5, 5\]"),
                                   (ones, ones[0] * 3, r"mask has values in \[3, 3\]"),
                                   (ones * float("nan"), ones[0], "pattern has values"),
                                   (torch.ones(3, 8, 8), ones[0], r"pattern is \(3, 8, 8\), not \(1, 8, 8\)"),
                                   (ones, ones, r"mask is \(1, 8, 8\), not \(8, 8\)")):
        with pytest.raises(UserError, match=message):
            Loud(pattern, mask).synthesize(torch.nn.Identity(), 3, ctx)
