import pytest
import torch

from trojanbench.errors import UserError
from trojanbench.models import MODELS, build_model, count_parameters


def kwargs(channels, size):
    return {"in_channels": channels, "num_classes": 10, "image_size": size, "mean": [0.5] * channels,
            "std": [0.25] * channels}


@pytest.mark.parametrize("arch", ["mlp", "cnn", "resnet18", "vit", "airnet"])
@pytest.mark.parametrize("channels, size", [(1, 16), (3, 32)])
def test_every_architecture_maps_images_to_logits_and_trains(arch, channels, size):
    model = build_model(arch, **kwargs(channels, size))
    x = torch.rand(4, channels, size, size)
    out = model(x)
    assert out.shape == (4, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_cnn_width_and_depth_knobs_change_capacity():
    small = count_parameters(build_model("cnn", **kwargs(1, 16), width=8, depth=2))
    wide = count_parameters(build_model("cnn", **kwargs(1, 16), width=32, depth=2))
    deep = count_parameters(build_model("cnn", **kwargs(1, 16), width=8, depth=5))
    assert small < wide and small < deep
    assert len([m for m in build_model("cnn", **kwargs(1, 16), depth=5) if isinstance(m, torch.nn.Conv2d)]) == 5


def test_resnet18_is_the_preactivation_resnet18():
    model = build_model("resnet18", **kwargs(3, 32))
    assert 11_000_000 < count_parameters(model) < 11_300_000


def test_resnet18_calls_each_relu_module_once_and_keeps_its_state_dict():
    """One nn.ReLU module per call site (captum's DeepLIFT and guided backprop only see modules); ReLU has no
    state, so the state dict is the one of the functional-ReLU version and stored models load unchanged."""
    model = build_model("resnet18", **kwargs(1, 16), width=8).eval()
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    calls = []
    handles = [r.register_forward_hook(lambda mod, inp, out: calls.append(mod)) for r in relus]
    model(torch.rand(2, 1, 16, 16))
    for h in handles:
        h.remove()
    assert len(relus) == 17 and len(calls) == 17 and {id(m) for m in calls} == {id(r) for r in relus}  # 8 blocks x 2 + head
    assert not any("relu" in k for k in model.state_dict())


def test_registry_errors():
    assert {"mlp", "cnn", "resnet18", "vit", "airnet"} <= set(MODELS.names())
    with pytest.raises(UserError, match="unknown architecture 'vgg'"):
        build_model("vgg", **kwargs(1, 16))
    with pytest.raises(UserError, match="bad arguments for architecture 'cnn'"):
        build_model("cnn", **kwargs(1, 16), widht=3)


def test_airnet_whitening_init_whitens_patches():
    model = build_model("airnet", **kwargs(3, 32), width=0.25)
    x = torch.rand(256, 3, 32, 32) * torch.linspace(0.2, 1, 3).view(1, 3, 1, 1)
    model.init_from_data(x)
    with torch.no_grad():
        h = model.whiten(model.normalize(x))[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)
    cov = torch.cov(h.T)
    assert torch.allclose(torch.diag(cov), torch.ones(12), atol=0.1)


@pytest.mark.parametrize("arch", ["mlp", "cnn", "resnet18", "vit", "airnet"])
@pytest.mark.parametrize("channels, h, w", [(1, 20, 12), (3, 12, 20)])
def test_every_image_architecture_takes_non_square_images(arch, channels, h, w):
    small = {"mlp": {"width": 16}, "cnn": {"width": 8}, "resnet18": {"width": 8}, "vit": {"dim": 16, "depth": 1},
             "airnet": {"width": 0.125}}[arch]
    model = build_model(arch, **kwargs(channels, [h, w]), **small)
    assert model(torch.rand(2, channels, h, w)).shape == (2, 10)


def test_data_kwargs_keep_square_cards_and_give_h_w_for_non_square():
    from trojanbench.models import data_kwargs
    from trojanbench.testing import tiny_dataset

    assert data_kwargs(tiny_dataset(n_train=8, n_test=4, size=16))["image_size"] == 16  # as every card so far
    ds = tiny_dataset(n_train=8, n_test=4, size=16)
    ds.x_train, ds.x_test = ds.x_train[..., :12], ds.x_test[..., :12]
    assert data_kwargs(ds)["image_size"] == [16, 12]


def test_shapes_an_architecture_cannot_take_are_one_line_errors_before_training():
    from trojanbench.implant import prepare
    from trojanbench.models import check_image_shape
    from trojanbench.testing import tiny_dataset

    with pytest.raises(UserError, match=r"architecture 'vit'.*patch size 8 does not divide 20x12 images"):
        build_model("vit", **kwargs(1, [20, 12]), patch=8)
    with pytest.raises(UserError, match=r"architecture 'airnet'.*at least 9x9 pixels, got 8x8"):
        build_model("airnet", **kwargs(3, 8))
    with pytest.raises(UserError, match="model expects 1x8x8 images, data has 3x32x32"):
        check_image_shape(kwargs(1, 8), (3, 32, 32))
    check_image_shape(kwargs(3, [12, 20]), (3, 12, 20))
    ds = tiny_dataset(n_train=8, n_test=4, size=8)
    with pytest.raises(UserError, match=r"expects 3x32x32 images, data has 1x8x8") as e:
        prepare(ds, "cnn", {"in_channels": 3, "image_size": 32, "width": 8})
    assert "\n" not in str(e.value)


def test_an_architecture_that_fails_on_the_data_shape_is_a_one_line_error_before_training():
    from torch import nn

    from trojanbench.implant import prepare
    from trojanbench.models import MODELS, Normalize
    from trojanbench.testing import tiny_dataset

    def fixed16(in_channels, num_classes, image_size, mean, std):  # ignores image_size: 16x16 images only
        return nn.Sequential(Normalize(mean, std), nn.Flatten(), nn.Linear(in_channels * 16 * 16, num_classes))

    if "fixed16-test" not in MODELS:
        MODELS.register("fixed16-test")(fixed16)
    model = prepare(tiny_dataset(n_train=8, n_test=4, size=16), "fixed16-test").model
    assert model.training  # the check ran it in eval mode and put its mode back
    with pytest.raises(UserError, match=r"architecture 'fixed16-test' cannot take 1x8x8 images \(mat1 and mat2") as e:
        prepare(tiny_dataset(n_train=8, n_test=4, size=8), "fixed16-test")
    assert "\n" not in str(e.value)
