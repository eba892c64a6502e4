"""The zoo trainer: a model's weights depend on its own seed and data only, not on the chunk it is trained in."""

import pytest
import torch

from trojanbench.models import build_model, data_kwargs
from trojanbench.testing import fast_train_config, tiny_dataset
from trojanbench.train.augment import AugmentDraw, apply_augment, augment_batch, draw_augment
from trojanbench.train.batched import train_models_batched


@pytest.fixture(autouse=True)
def _one_thread():
    """As the zoo trains every chunk (and as fast: ATen's convolutions gain nothing from a second thread here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train(ds, arch, kwargs, seeds, cfg):
    models, xs, ys = [], [], []
    for s in seeds:
        torch.manual_seed(s)
        models.append(build_model(arch, **data_kwargs(ds), **kwargs))
        g = torch.Generator().manual_seed(s)  # each model its own (shuffled) copy of the data
        perm = torch.randperm(len(ds.x_train), generator=g)
        xs.append(ds.x_train[perm])
        ys.append(ds.y_train[perm])
    train_models_batched(models, xs, ys, cfg, seeds=list(seeds), augment={"translate": 1, "flip": True})
    return [m.state_dict() for m in models]


@pytest.mark.parametrize("arch,kwargs", [("cnn", {"width": 8, "depth": 2}), ("mlp", {"width": 32, "depth": 2})])
def test_a_model_gets_the_same_bits_alone_and_in_a_batch_of_four(arch, kwargs):
    ds = tiny_dataset(n_train=192)
    cfg = fast_train_config(2)
    together = _train(ds, arch, kwargs, [5, 6, 7, 8], cfg)
    for k in (0, 2):  # first and inner position
        alone = _train(ds, arch, kwargs, [5 + k], cfg)[0]
        assert all(torch.equal(alone[name], together[k][name]) for name in alone), (arch, k)
    pair = _train(ds, arch, kwargs, [8, 7], cfg)  # another chunk, another order
    assert all(torch.equal(pair[0][name], together[3][name]) for name in pair[0])


def test_per_model_draws_equal_the_one_model_draws():
    x = torch.rand(6, 3, 8, 8)
    one = augment_batch(x[:3], 1, True, torch.Generator().manual_seed(3))
    draws = [draw_augment(3, 1, True, torch.Generator().manual_seed(s)) for s in (3, 4)]
    both = apply_augment(x, AugmentDraw.cat(draws))
    assert torch.equal(both[:3], one)


def test_random_ops_inside_a_batched_model_are_refused():
    ds = tiny_dataset(n_train=64)
    model = torch.nn.Sequential(build_model("mlp", **data_kwargs(ds), width=8, depth=1), torch.nn.Dropout(0.5))
    with pytest.raises(RuntimeError, match="randomness"):
        train_models_batched([model], [ds.x_train], [ds.y_train], fast_train_config(1), seeds=[0])
