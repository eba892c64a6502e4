import numpy as np
import pytest
from PIL import Image

from trojanbench.data import load_dataset
from trojanbench.errors import UserError


def _write(folder, classes, per_class, size=(12, 12), mode="RGB"):
    rng = np.random.default_rng(0)
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (*size, 3) if mode == "RGB" else size
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(folder / c / f"{i}.png")


def test_flat_layout_is_split_and_labelled_by_sorted_folder(tmp_path):
    _write(tmp_path, ["zebra", "apple"], 5)
    ds = load_dataset("imagefolder", data_root=str(tmp_path), test_fraction=0.2)
    assert ds.classes == ["apple", "zebra"]
    assert len(ds.x_train) == 8 and len(ds.x_test) == 2 and ds.image_shape == (3, 12, 12)


def test_train_test_layout_grayscale_and_resize(tmp_path):
    _write(tmp_path / "train", ["a", "b"], 3, size=(10, 10), mode="L")
    _write(tmp_path / "test", ["a", "b"], 2, size=(10, 10), mode="L")
    ds = load_dataset("imagefolder", data_root=str(tmp_path), grayscale=True, size=8)
    assert ds.image_shape == (1, 8, 8) and len(ds.x_train) == 6 and len(ds.x_test) == 4


def test_bad_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="needs --data-root"):
        load_dataset("imagefolder")
    with pytest.raises(UserError, match="no class sub-folders"):
        load_dataset("imagefolder", data_root=str(tmp_path))
    _write(tmp_path, ["a"], 2, size=(8, 8))
    _write(tmp_path, ["b"], 2, size=(9, 9))
    with pytest.raises(UserError, match="differ in size"):
        load_dataset("imagefolder", data_root=str(tmp_path))
