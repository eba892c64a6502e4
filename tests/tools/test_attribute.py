"""Attributors on a patch-trojaned digits CNN: every registered method returns sane maps and leaves the model as
it found it; the trigger is found; the randomized-model sanity check tells model-dependent maps from edge maps;
every tool declares its paper and fidelity; the clean reference sample reaches every attributor; on a ResNet-18
DeepLIFT and guided backprop do not collapse onto plain gradients."""

import numpy as np
import pytest
import torch
from torch import nn

from trojanbench.config import TrainConfig
from trojanbench.errors import UserError
from trojanbench.implant import implant, prepare
from trojanbench.models import build_model, data_kwargs
from trojanbench.tasks.diagnose import footprints, rank_similarity, run_diagnose_track, score_maps
from trojanbench.tools.attribute import ATTRIBUTORS, attribution_copy, randomized_copy, reference_sample
from trojanbench.tools.attribute.baselines import STATISTICS
from trojanbench.trojans import PoisonSpec, TriggerSpec, TrojanSpec

SPEC = TrojanSpec(trigger=TriggerSpec(kind="patch"), poison=PoisonSpec(target=3, rate=0.1))  # 3x3 checkerboard, bottom right


@pytest.fixture(scope="module")
def patched(digits):
    """A small CNN with a crude patch trojan and 24 triggered test images (label != target)."""
    model = implant(digits, "cnn", {"width": 8}, SPEC, train=TrainConfig(epochs=6), seed=0).model.eval()
    trigger = prepare(digits, "cnn", {"width": 8}, SPEC, seed=0).trigger
    x = digits.x_test[digits.y_test != 3][:24]
    x_trig, mask = trigger.apply_with_mask(x)
    assert (model(x_trig).argmax(1) == 3).float().mean() > 0.9  # the trojan fires
    return model, x, x_trig, mask


def _state(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [p.requires_grad for p in model.parameters()],
            model.training)


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
               for m in model.modules())


def _tool(name, digits, **kwargs):
    """An attributor as the diagnose task sets it up: with the clean reference sample (clean training images)."""
    return ATTRIBUTORS.get(name)(**kwargs).fit_reference(reference_sample(digits.x_train))


def test_every_attributor_returns_nonnegative_finite_maps_and_leaves_the_model_alone(patched, digits):
    model, _, x_trig, _ = patched
    model.train()  # a model handed over in training mode stays in training mode
    before, grads, training = _state(model)
    x = x_trig[:6]
    for name in (n for n in ATTRIBUTORS.names() if "image" in ATTRIBUTORS.get(n).modalities):  # text: test_text_zoo
        tool = _tool(name, digits)
        maps = tool.attribute(model, x, 3)
        assert maps.shape == (6, 16, 16), name
        assert torch.isfinite(maps).all() and (maps >= 0).all(), name
        per_image = tool.attribute(model, x, torch.full((6,), 3))
        assert per_image.shape == (6, 16, 16), name
    after, grads_after, training_after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert grads == grads_after and training == training_after and _hooks(model) == 0
    model.eval()
    assert len(ATTRIBUTORS.names()) >= 18
    assert {"sobel", "random", "centre", "pixel-anomaly"} <= {n for n in ATTRIBUTORS.names() if ATTRIBUTORS.get(n).is_baseline}
    assert not any(ATTRIBUTORS.get(n).uses_model for n in ("sobel", "random", "centre", "pixel-anomaly"))


def test_every_attributor_declares_its_paper_and_fidelity():
    for name in ATTRIBUTORS.names():
        cls = ATTRIBUTORS.get(name)
        if cls.is_baseline:
            assert cls.fidelity.startswith("baseline: ") and cls.paper == "", name
        else:
            assert cls.fidelity == "faithful" or cls.fidelity.startswith("adapted: "), name
            assert cls.paper and "(20" in cls.paper, name  # authors (year). title. venue


def test_methods_that_need_the_clean_reference_say_so_and_read_it(patched, digits):
    model, x, x_trig, mask = patched
    for name in ("pixel-anomaly", "gradient-shap"):
        with pytest.raises(UserError, match="needs a clean reference sample"):
            ATTRIBUTORS.get(name)().attribute(model, x_trig[:2], 3)
    with pytest.raises(UserError, match="reference images are"):
        _tool("pixel-anomaly", digits).attribute(model, torch.rand(2, 3, 16, 16), 3)
    with pytest.raises(UserError, match="statistic must be one of"):
        ATTRIBUTORS.get("pixel-anomaly")(statistic="mode")
    soft, binary = footprints(x, x_trig, mask)
    for statistic in STATISTICS:  # the patch sits where clean digits are blank: a model-free map finds it
        maps = _tool("pixel-anomaly", digits, statistic=statistic).attribute(model, x_trig, 3)
        assert float(np.nanmean(score_maps(maps, soft, binary)["pointing_game"])) >= 0.9, statistic
    shap = _tool("gradient-shap", digits)  # references from the clean sample: another sample, other maps
    other = ATTRIBUTORS.get("gradient-shap")().fit_reference(digits.x_train[200:400])
    assert not torch.allclose(shap.attribute(model, x_trig[:4], 3), other.attribute(model, x_trig[:4], 3))


def test_attribution_points_at_the_patch_where_the_edge_detector_points_beside_it(patched):
    model, x, x_trig, mask = patched
    soft, binary = footprints(x, x_trig, mask)
    s = {n: {k: float(np.nanmean(v)) for k, v in score_maps(ATTRIBUTORS.get(n)().attribute(model, x_trig, 3), soft,
                                                              binary).items()}
         for n in ("saliency", "guided-backprop", "occlusion", "sobel", "random", "centre")}
    best = max(s[n]["pointing_game_strict"] for n in ("saliency", "guided-backprop", "occlusion"))
    assert best >= 0.9 and s["sobel"]["pointing_game_strict"] <= 0.3, s  # Sobel peaks on the ring around the patch ...
    assert s["sobel"]["pointing_game"] >= 0.9, s  # ... which the 1-pixel tolerance forgives: a tie there
    assert s["random"]["pointing_game"] <= 0.3 and s["centre"]["pointing_game"] <= 0.1, s  # dilated footprint: 25/256
    assert s["occlusion"]["correlation"] > s["sobel"]["correlation"] + 0.3, s
    assert s["occlusion"]["mask_auroc"] > s["sobel"]["mask_auroc"] + 0.1, s


def test_randomized_model_sanity_check_separates_saliency_from_sobel(patched):
    model, _, x_trig, _ = patched
    rand = randomized_copy(model, seed=0)
    assert not torch.equal(next(iter(rand.parameters())), next(iter(model.parameters())))
    sim = {}
    for name in ("saliency", "input-x-gradient", "sobel", "random"):
        tool = ATTRIBUTORS.get(name)()
        sim[name] = float(np.mean(rank_similarity(tool.attribute(model, x_trig[:8], 3), tool.attribute(rand, x_trig[:8], 3))))
    assert sim["saliency"] < 0.3, sim  # passes (threshold 0.5) with a margin
    assert sim["input-x-gradient"] > sim["saliency"] + 0.3, sim  # x * gradient keeps the image's own structure
    assert sim["sobel"] == pytest.approx(1.0) and sim["random"] == pytest.approx(1.0), sim  # model-free: fail


def test_metrics_on_known_maps():
    mask = torch.zeros(2, 16, 16)
    mask[:, :3, :3] = 1
    perfect = score_maps(mask.clone(), mask, mask > 0)
    assert perfect["correlation"] == pytest.approx([1, 1]) and perfect["pointing_game"] == pytest.approx([1, 1])
    assert perfect["mask_auroc"] == pytest.approx([1, 1])
    flat = score_maps(torch.ones(2, 16, 16), mask, mask > 0)  # ties: chance level
    assert flat["correlation"] == pytest.approx([0, 0]) and flat["mask_auroc"] == pytest.approx([0.5, 0.5])
    assert flat["pointing_game"] == pytest.approx([16 / 256] * 2)  # the footprint dilated by one pixel: 4x4
    off = torch.zeros(2, 16, 16)
    off[:, 10, 10] = 1
    assert score_maps(off, mask, mask > 0)["pointing_game"] == pytest.approx([0, 0])
    near = torch.zeros(2, 16, 16)
    near[:, 3, 3] = 1  # one pixel off the patch: inside the 1-px dilation
    assert score_maps(near, mask, mask > 0)["pointing_game"] == pytest.approx([1, 1])
    wide = torch.ones(2, 16, 16)
    wide[:, :4] = 0  # footprint covers 75% of the image: pointing game and AUROC n/a, correlation defined
    s = score_maps(torch.rand(2, 16, 16), wide, wide > 0)
    assert np.isnan(s["pointing_game"]).all() and np.isnan(s["mask_auroc"]).all() and not np.isnan(s["correlation"]).any()
    a = torch.rand(3, 16, 16)
    assert rank_similarity(a, a * 2 + 1) == pytest.approx([1, 1, 1])
    assert rank_similarity(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4)) == pytest.approx([1.0])


def test_on_a_resnet_deeplift_and_guided_backprop_do_not_collapse_onto_plain_gradients(digits):
    """captum overrides the backward pass of ReLU *modules* only: with functional ReLUs DeepLIFT equals input x
    gradient and guided backprop equals saliency map for map. The ResNet has one nn.ReLU per call site."""
    torch.manual_seed(0)
    model = build_model("resnet18", **data_kwargs(digits), width=4).eval()
    x = digits.x_test[:2]
    maps = {n: ATTRIBUTORS.get(n)().attribute(model, x, 3)
            for n in ("deeplift", "input-x-gradient", "guided-backprop", "deconvolution", "saliency")}

    def differ(a, b):
        return float((maps[a] - maps[b]).abs().max() / maps[b].abs().max())

    assert differ("deeplift", "input-x-gradient") > 0.1
    assert differ("guided-backprop", "saliency") > 0.1 and differ("deconvolution", "saliency") > 0.1
    assert _hooks(model) == 0


def test_attribution_copy_handles_inplace_and_reused_relus(digits):
    relu = nn.ReLU(inplace=True)  # one in-place module used twice breaks DeepLIFT and guided backprop in captum
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), relu, nn.Conv2d(4, 4, 3, padding=1), relu,
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()
    copy_ = attribution_copy(model)
    relus = [m for m in copy_.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 2 and relus[0] is not relus[1] and not any(r.inplace for r in relus)
    assert model[1].inplace and model[1] is model[3]
    x = digits.x_test[:4]
    for name in ("deeplift", "guided-backprop", "guided-gradcam"):
        maps = ATTRIBUTORS.get(name)().attribute(model, x, 0)
        assert maps.shape == (4, 16, 16) and torch.isfinite(maps).all()
    assert _hooks(model) == 0


def test_unknown_attributor_is_a_user_error_listing_the_known_ones(tmp_path):
    with pytest.raises(UserError, match="unknown attributor 'telepathy'; known: .*saliency.*sobel"):
        run_diagnose_track(tmp_path, tmp_path / "r.sqlite", tools=["telepathy"])
    with pytest.raises(UserError, match="unknown attributor"):
        ATTRIBUTORS.get("telepathy")
