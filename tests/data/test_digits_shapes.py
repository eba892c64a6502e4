import torch

from trojanbench.data import load_dataset


def test_digits_is_16x16_in_unit_range_with_stratified_fixed_split(digits):
    assert digits.x_train.shape[1:] == (1, 16, 16)
    assert len(digits.x_train) + len(digits.x_test) == 1797
    assert 0 <= digits.x_train.min() and digits.x_train.max() <= 1
    # every class is in the test set in proportion (stratified)
    counts = torch.bincount(digits.y_test, minlength=10)
    assert counts.min() >= 30
    again = load_dataset("digits")
    assert torch.equal(again.x_test, digits.x_test) and torch.equal(again.y_train, digits.y_train)


def test_digits_can_stay_8x8():
    assert load_dataset("digits", size=8).image_shape == (1, 8, 8)


def test_shapes_is_seeded_and_any_size():
    a = load_dataset("shapes", n_train=64, n_test=16, size=24, seed=3)
    b = load_dataset("shapes", n_train=64, n_test=16, size=24, seed=3)
    c = load_dataset("shapes", n_train=64, n_test=16, size=24, seed=4)
    assert a.image_shape == (3, 24, 24) and len(a.x_train) == 64 and len(a.x_test) == 16
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_train, c.x_train)
    assert set(a.y_train.tolist()) == set(range(len(a.classes)))


def test_unknown_dataset_names_the_known_ones():
    import pytest

    from trojanbench.errors import UserError

    with pytest.raises(UserError, match="known: cifar10, digits"):
        load_dataset("mnist")
