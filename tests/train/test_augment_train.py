import torch

from trojanbench.models import build_model, data_kwargs
from trojanbench.testing import fast_train_config, tiny_dataset
from trojanbench.train import clean_accuracy, predict, train_model
from trojanbench.train.augment import augment_batch, random_translate


def test_translate_shifts_whole_images_by_at_most_pad():
    x = torch.zeros(32, 1, 8, 8)
    x[:, :, 3, 3] = 1
    out = random_translate(x, 2, torch.Generator().manual_seed(0))
    pos = out[:, 0].flatten(1).argmax(1)
    rows, cols = pos // 8, pos % 8
    assert out.sum() == 32  # nothing lost: one lit pixel per image
    assert ((rows - 3).abs() <= 2).all() and ((cols - 3).abs() <= 2).all()
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 5


def test_augmentation_is_seeded_and_flip_flips():
    x = torch.rand(16, 3, 8, 8)
    a = augment_batch(x, 1, True, torch.Generator().manual_seed(1))
    b = augment_batch(x, 1, True, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    flipped = augment_batch(x, 0, True, torch.Generator().manual_seed(0))
    assert all(torch.equal(f, o) or torch.equal(f, o.flip(-1)) for f, o in zip(flipped, x))


def test_training_learns_and_restores_eval_mode():
    ds = tiny_dataset()
    torch.manual_seed(0)  # the initialisation draws from the global generator: fix it, whatever ran before
    model = build_model("cnn", **data_kwargs(ds), width=8, depth=2)
    train_model(model, ds.x_train, ds.y_train, fast_train_config(), seed=0)
    assert not model.training
    assert clean_accuracy(model, ds.x_test, ds.y_test) > 0.95
    model.train()
    predict(model, ds.x_test)
    assert model.training, "predict must restore the model's mode"
