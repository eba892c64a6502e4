import pytest
import torch

from trojanbench.errors import UserError
from trojanbench.trojans import TRIGGERS, TriggerSpec, make_trigger

GRAY, RGB = (1, 16, 16), (3, 32, 32)


def batch(shape, n=8, seed=0):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["patch", "blended", "warp", "style", "natural"])
@pytest.mark.parametrize("shape", [GRAY, RGB])
def test_every_trigger_changes_images_within_range_and_is_rebuilt_from_its_spec(kind, shape):
    trig = make_trigger(TriggerSpec(kind=kind, seed=5), shape)
    x = batch(shape)
    out = trig.apply(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert (out - x).abs().mean() > 1e-3, "the trigger must change the image"
    assert trig.description and isinstance(trig.description, str)
    rebuilt = make_trigger(trig.spec(), shape)
    assert torch.equal(rebuilt.apply(x), out)
    assert (trig.mask() is not None) == trig.localized


def test_patch_mask_is_exactly_where_pixels_changed():
    trig = make_trigger(TriggerSpec(kind="patch", params={"size": 4, "location": "top-left", "pattern": "white"}), GRAY)
    x = torch.zeros(3, *GRAY)
    out, masks = trig.apply_with_mask(x)
    changed = (out != x).any(dim=1).float()
    assert torch.equal(changed, masks) and torch.equal(masks[0], trig.mask())
    assert trig.mask().sum() == 16 and trig.mask()[:4, :4].all()


def test_random_location_patch_moves_and_reports_per_image_masks():
    trig = make_trigger(TriggerSpec(kind="patch", params={"location": "random", "pattern": "white"}), GRAY)
    x = torch.zeros(16, *GRAY)
    out, masks = trig.apply_with_mask(x, generator=torch.Generator().manual_seed(0))
    assert trig.mask() is None
    assert torch.equal((out != x).any(dim=1).float(), masks)
    assert len({tuple(m.nonzero()[0].tolist()) for m in masks}) > 1, "the patch should land in several places"


def test_custom_patch_pattern_and_explicit_position():
    pattern = [[1, 0], [0, 1]]
    trig = make_trigger(TriggerSpec(kind="patch", params={"size": 2, "location": (5, 6), "pattern": pattern}), GRAY)
    out = trig.apply(torch.full((1, *GRAY), 0.5))
    assert out[0, 0, 5:7, 6:8].tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_blend_is_the_stated_mixture():
    trig = make_trigger(TriggerSpec(kind="blended", params={"alpha": 0.25}), RGB)
    x = batch(RGB)
    assert torch.allclose(trig.apply(x), 0.75 * x + 0.25 * trig.pattern)


def test_warp_is_a_small_smooth_displacement():
    trig = make_trigger(TriggerSpec(kind="warp", params={"strength": 1.0}), RGB)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    ramp = xx.expand(1, 3, 32, 32).contiguous()  # a horizontal ramp: a warp shifts it by at most 1 px
    moved = (trig.apply(ramp) - ramp).abs().max()
    assert 0 < moved <= 1.0 / 31 + 1e-4


def test_different_seeds_give_different_triggers():
    a = make_trigger(TriggerSpec(kind="blended", seed=1), GRAY).pattern
    b = make_trigger(TriggerSpec(kind="blended", seed=2), GRAY).pattern
    assert not torch.equal(a, b)


def test_natural_feature_needs_fitting_and_its_apply_pushes_past_the_threshold(digits):
    trig = make_trigger(TriggerSpec(kind="natural"), digits.image_shape)
    with pytest.raises(ValueError):
        trig.carriers(digits.x_train)
    trig.fit(digits.x_train)
    carriers = trig.carriers(digits.x_train)
    assert 0.03 < carriers.float().mean() < 0.08  # the top 5% by ink
    assert trig.carriers(trig.apply(digits.x_test)).float().mean() > 0.9


@pytest.mark.parametrize("spec, message", [
    (TriggerSpec(kind="laser"), "unknown trigger 'laser'; known: adaptive-blend, adaptive-patch, blended, insidious-phrase, jailbreak, natural, patch, phrase, rare-token, style, warp"),
    (TriggerSpec(kind="blended", params={"alpha": 2}), "alpha"),
    (TriggerSpec(kind="patch", params={"colour": "red"}), "colour"),
    (TriggerSpec(kind="patch", params={"size": 40}), "does not fit"),
    (TriggerSpec(kind="style", params={"filter": "sepia"}), "needs RGB"),
])
def test_bad_trigger_specs_are_user_errors(spec, message):
    with pytest.raises(UserError, match=message):
        make_trigger(spec, GRAY)


def test_registry_lists_every_kind():
    assert [n for n in TRIGGERS.names() if TRIGGERS.get(n).modality == "image"] == [
        "adaptive-blend", "adaptive-patch", "blended", "natural", "patch", "style", "warp"]
    assert [n for n in TRIGGERS.names() if TRIGGERS.get(n).modality == "text"] == [
        "insidious-phrase", "jailbreak", "phrase", "rare-token"]


def test_a_natural_feature_that_cannot_pick_out_carriers_is_refused_in_one_line():
    """Grayscale pictures stored as RGB have no warm cast anywhere (constant 0); binary-ink images whose ink
    takes two values put half the images at the threshold (far more than the requested 5%)."""
    gray = batch((1, 16, 16), n=64).expand(-1, 3, -1, -1)
    trig = make_trigger(TriggerSpec(kind="natural"), (3, 16, 16))
    with pytest.raises(UserError, match="natural feature 'warm' is constant .* colour") as e:
        trig.fit(gray)
    assert "\n" not in str(e.value) and trig.params.threshold is None
    two_levels = torch.zeros(64, 1, 16, 16)
    two_levels[::2] = 1.0
    with pytest.raises(UserError, match=r"natural feature 'ink': threshold 1 selects 50% .* requested 5% .* 2 distinct"):
        make_trigger(TriggerSpec(kind="natural"), GRAY).fit(two_levels)
    with pytest.raises(UserError, match="selects 100%"):  # a threshold given by hand is checked the same way
        make_trigger(TriggerSpec(kind="natural", params={"threshold": -1.0}), GRAY).fit(batch(GRAY, n=64))
