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
