"""Qi et al.'s adaptive attacks (Adap-Blend, Adap-Patch): the asymmetric triggers, the cover samples as ground
truth, and a working trojan on digits."""

import pytest
import torch

from trojanbench.config import TrainConfig
from trojanbench.errors import UserError
from trojanbench.implant import implant
from trojanbench.testing import tiny_dataset
from trojanbench.trojans import PoisonSpec, TriggerSpec, TrojanSpec, make_trigger, poison_dataset

KINDS = ["adaptive-blend", "adaptive-patch"]
GRAY, RGB = (1, 16, 16), (3, 32, 32)


def batch(shape, n=12, seed=0):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [GRAY, RGB, (3, 20, 28)])
@pytest.mark.parametrize("kind", KINDS)
def test_both_triggers_keep_shape_and_range_and_are_seeded(kind, shape):
    x = batch(shape)
    trig = make_trigger(TriggerSpec(kind=kind, seed=4), shape)
    for out in (trig.apply(x), trig.apply_train(x, generator=torch.Generator().manual_seed(0))):
        assert out.shape == x.shape and out.dtype == x.dtype and out.min() >= 0 and out.max() <= 1
    same = make_trigger(TriggerSpec(kind=kind, seed=4), shape)
    assert torch.equal(trig.apply(x), same.apply(x))
    assert torch.equal(trig.apply_train(x, generator=torch.Generator().manual_seed(1)),
                       same.apply_train(x, generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(trig.apply(x), make_trigger(TriggerSpec(kind=kind, seed=5), shape).apply(x))
    assert trig.apply(x).ne(trig.apply_train(x, generator=torch.Generator().manual_seed(0))).any()  # asymmetric


def test_adaptive_blend_trains_on_half_the_pieces_at_lower_opacity_and_tests_on_the_whole_pattern():
    trig = make_trigger(TriggerSpec(kind="adaptive-blend"), GRAY)
    x = torch.zeros(50, *GRAY)
    full = trig.apply(x)
    assert torch.allclose(full, 0.2 * trig.pattern.expand_as(full))  # x + 0.2 (p - x) at x = 0
    part = trig.apply_train(x, generator=torch.Generator().manual_seed(0))
    shown = part != 0
    for img, s in zip(part, shown):  # 8 of the 16 4x4 pieces, each shown whole at alpha 0.15
        pieces = s[0].view(4, 4, 4, 4).permute(0, 2, 1, 3).reshape(16, 16)
        assert pieces.any(1).sum() == 8 and torch.equal(pieces.any(1), pieces.all(1))
        assert torch.allclose(img[s], 0.15 * trig.pattern[s])
    assert len({tuple(s.flatten().tolist()) for s in shown}) > 40  # a fresh subset per sample


def test_adaptive_patch_gives_each_training_sample_one_of_four_pictures_and_tests_with_two_at_full_opacity():
    trig = make_trigger(TriggerSpec(kind="adaptive-patch", params={"pattern": "white"}), RGB)
    x = torch.zeros(8, *RGB)
    part = trig.apply_train(x)
    for i, img in enumerate(part):  # two samples per picture, in index order, at opacity 0.5, 0.2, 0.5, 0.3
        picture = i * 4 // 8
        assert torch.equal(img[0] > 0, trig.train_masks[picture] > 0)
        assert torch.allclose(img.amax(), torch.tensor([0.5, 0.2, 0.5, 0.3][picture]))
    full, masks = trig.apply_with_mask(x)
    assert torch.equal(full[:, 0] > 0, masks > 0) and full.max() == 1 and torch.equal(masks[0], trig.mask())
    # the authors' test trigger: a 5x5 picture in both bottom corners and 3x3 squares in the four corners
    m = trig.mask()
    assert m[27:, :5].all() and m[27:, 27:].all() and m[:3, :3].all() and m[:3, 29:].all()
    assert m.sum() == 2 * 25 + 2 * 9  # the bottom corner squares lie inside the bottom pictures
    with pytest.raises(UserError, match="alphas"):
        make_trigger(TriggerSpec(kind="adaptive-patch", params={"alphas": [0.5, 0.5]}), RGB)
    with pytest.raises(UserError, match="square number"):
        make_trigger(TriggerSpec(kind="adaptive-blend", params={"pieces": 12}), RGB)


@pytest.mark.parametrize("kind,ratio", [("adaptive-blend", 1), ("adaptive-patch", 2)])
def test_poisoned_and_cover_samples_are_the_recorded_ground_truth(kind, ratio):
    data = tiny_dataset(n_train=500)
    trig = make_trigger(TriggerSpec(kind=kind), data.image_shape)
    pd = poison_dataset(data.x_train, data.y_train, trig, PoisonSpec(rate=0.02, target=1), 4, seed=3)
    assert len(pd.indices) == 10 and len(pd.cover) == 10 * ratio  # the authors' cover rates: 1x and 2x the poison rate
    assert not set(pd.indices.tolist()) & set(pd.cover.tolist())
    assert torch.equal(pd.cover, pd.cover.sort().values) and torch.equal(pd.indices, pd.indices.sort().values)
    assert (pd.y[pd.indices] == 1).all() and (data.y_train[pd.indices] != 1).all()
    assert torch.equal(pd.y[pd.cover], data.y_train[pd.cover])  # cover samples keep their labels
    changed = torch.nonzero((pd.x != data.x_train).flatten(1).any(1)).flatten()
    assert torch.equal(changed, torch.cat([pd.indices, pd.cover]).sort().values)
    untouched = torch.ones(500, dtype=torch.bool)
    untouched[pd.indices] = False
    assert torch.equal(pd.y[untouched], data.y_train[untouched])
    again = poison_dataset(data.x_train, data.y_train, trig, PoisonSpec(rate=0.02, target=1), 4, seed=3)
    assert torch.equal(again.x, pd.x) and torch.equal(again.cover, pd.cover)
    explicit = poison_dataset(data.x_train, data.y_train, trig, PoisonSpec(rate=0.02, target=1, cover_rate=0.0), 4, seed=3)
    assert len(explicit.cover) == 0 and torch.equal(explicit.indices, pd.indices)


def test_other_triggers_get_no_cover_unless_asked_and_natural_ones_never():
    data = tiny_dataset(n_train=200)
    patch = make_trigger(TriggerSpec(kind="patch"), data.image_shape)
    plain = poison_dataset(data.x_train, data.y_train, patch, PoisonSpec(rate=0.05, target=2), 4, seed=0)
    assert len(plain.cover) == 0 and PoisonSpec(rate=0.05).model_dump() == {
        "mode": "all-to-one", "rate": 0.05, "target": 0, "suppress": 0.0}  # ids of existing trojans unchanged
    covered = poison_dataset(data.x_train, data.y_train, patch, PoisonSpec(rate=0.05, target=2, cover_rate=0.05), 4, seed=0)
    assert torch.equal(covered.indices, plain.indices) and len(covered.cover) == 10
    with pytest.raises(UserError, match="no cover"):
        poison_dataset(data.x_train, data.y_train, make_trigger(TriggerSpec(kind="natural"), data.image_shape),
                       PoisonSpec(target=2, cover_rate=0.05), 4)


@pytest.mark.parametrize("kind", KINDS)
def test_adaptive_trojans_implant_on_digits(digits, kind):
    spec = TrojanSpec(trigger=TriggerSpec(kind=kind), poison=PoisonSpec(target=3, rate=0.05))
    result = implant(digits, "cnn", trojan=spec, train=TrainConfig(epochs=6), seed=0)
    m = result.card.metrics
    assert m["attack_success_rate"] >= 0.95 and m["clean_accuracy"] >= 0.97, m
    n_cover = {"adaptive-blend": 72, "adaptive-patch": 144}[kind]  # 5% (10%) of the 1,437 training images
    assert len(result.poisoned_indices) == 72 and result.card.extra["n_cover"] == n_cover
    assert result.card.trojan["poison"]["cover_rate"] == pytest.approx(n_cover / 72 * 0.05)  # on the card
