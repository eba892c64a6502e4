import pytest
import torch

from trojanbench.errors import UserError
from trojanbench.testing import tiny_dataset
from trojanbench.trojans import PoisonSpec, TriggerSpec, make_trigger, poison_dataset


@pytest.fixture
def data():
    return tiny_dataset(n_train=200)


def test_all_to_one_poisons_exactly_the_recorded_non_target_samples(data):
    trig = make_trigger(TriggerSpec(kind="patch"), data.image_shape)
    pd = poison_dataset(data.x_train, data.y_train, trig, PoisonSpec(rate=0.1, target=2), 4, seed=0)
    assert len(pd.indices) == 20
    changed = torch.nonzero((pd.x != data.x_train).flatten(1).any(1)).flatten()
    assert torch.equal(changed, pd.indices)
    assert (data.y_train[pd.indices] != 2).all() and (pd.y[pd.indices] == 2).all()
    untouched = torch.ones(200, dtype=torch.bool)
    untouched[pd.indices] = False
    assert torch.equal(pd.y[untouched], data.y_train[untouched])


def test_poisoning_is_seeded(data):
    trig = make_trigger(TriggerSpec(kind="blended"), data.image_shape)
    a = poison_dataset(data.x_train, data.y_train, trig, PoisonSpec(rate=0.05), 4, seed=1).indices
    b = poison_dataset(data.x_train, data.y_train, trig, PoisonSpec(rate=0.05), 4, seed=1).indices
    c = poison_dataset(data.x_train, data.y_train, trig, PoisonSpec(rate=0.05), 4, seed=2).indices
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_all_to_all_shifts_labels_by_one(data):
    trig = make_trigger(TriggerSpec(kind="patch"), data.image_shape)
    pd = poison_dataset(data.x_train, data.y_train, trig, PoisonSpec(mode="all-to-all", rate=0.2), 4)
    assert torch.equal(pd.y[pd.indices], (data.y_train[pd.indices] + 1) % 4)


def test_clean_label_keeps_labels_and_uses_target_class(data):
    trig = make_trigger(TriggerSpec(kind="patch"), data.image_shape)
    pd = poison_dataset(data.x_train, data.y_train, trig, PoisonSpec(mode="clean-label", rate=0.05, target=1), 4)
    assert torch.equal(pd.y, data.y_train) and (data.y_train[pd.indices] == 1).all()
    with pytest.raises(UserError, match="needs"):
        poison_dataset(data.x_train, data.y_train, trig, PoisonSpec(mode="clean-label", rate=0.5, target=1), 4)


def test_natural_feature_relabels_carriers_without_editing_pixels(digits):
    trig = make_trigger(TriggerSpec(kind="natural"), digits.image_shape)
    pd = poison_dataset(digits.x_train, digits.y_train, trig, PoisonSpec(target=3), 10)
    assert torch.equal(pd.x, digits.x_train)
    carriers = trig.carriers(digits.x_train) & (digits.y_train != 3)
    assert torch.equal(torch.nonzero(carriers).flatten(), pd.indices)
    assert (pd.y[pd.indices] == 3).all()


def test_target_out_of_range(data):
    trig = make_trigger(TriggerSpec(kind="patch"), data.image_shape)
    with pytest.raises(UserError, match="out of range"):
        poison_dataset(data.x_train, data.y_train, trig, PoisonSpec(target=9), 4)
