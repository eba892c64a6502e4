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
    assert load_dataset("imagefolder", data_root=str(tmp_path), size=(6, 9)).image_shape == (3, 6, 9)  # (H, W)


def test_bad_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="needs --data-root"):
        load_dataset("imagefolder")
    with pytest.raises(UserError, match="no class sub-folders"):
        load_dataset("imagefolder", data_root=str(tmp_path))
    _write(tmp_path, ["a"], 2, size=(8, 8))
    _write(tmp_path, ["b"], 2, size=(9, 9))
    with pytest.raises(UserError, match=r"differ in size .*\(implant --data-param size=32; size = 32 in a zoo"):
        load_dataset("imagefolder", data_root=str(tmp_path))


@pytest.mark.parametrize("content", [b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_a_file_that_is_no_image_or_a_damaged_one_is_a_user_error_naming_it(tmp_path, content):
    """A stray or truncated file under an image suffix was an "internal error: UnidentifiedImageError" in `audit
    --data <folder>` and `implant --dataset imagefolder`."""
    _write(tmp_path, ["a", "b"], 2, size=(8, 8))
    (tmp_path / "b" / "broken.png").write_bytes(content)
    with pytest.raises(UserError, match=r"b/broken.png is not a readable image \("):
        load_dataset("imagefolder", data_root=str(tmp_path))


def test_pixel_values_are_checked_where_images_enter(tmp_path):
    """[0, 1] passes untouched; 8-bit values (uint8, or whole numbers 0-255 as floats) are rescaled with one
    warning; NaN, negative, above-255 and fractional out-of-range values are refused in one line."""
    import re
    import warnings

    import torch

    from trojanbench.data import ImageDataset
    from trojanbench.errors import DataWarning
    from trojanbench.testing import tiny_dataset

    ds = tiny_dataset(n_train=16, n_test=8)
    y_train, y_test = ds.y_train, ds.y_test
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say about images already in [0, 1]
        same = ImageDataset("ok", ds.x_train, y_train, ds.x_test, y_test, ds.classes)
    assert same.x_train is ds.x_train
    eight_bit = (ds.x_train * 255).round()
    for x_train, x_test in ((eight_bit.to(torch.uint8), (ds.x_test * 255).round().to(torch.uint8)),
                            (eight_bit, (ds.x_test * 255).round())):
        with pytest.warns(DataWarning) as caught:
            d = ImageDataset("raw", x_train, y_train, x_test, y_test, ds.classes)
        assert len(caught) == 1 and "divided by 255" in str(caught[0].message)
        assert "\n" not in str(caught[0].message)
        assert d.x_train.dtype == torch.float32 and torch.allclose(d.x_train, eight_bit / 255)
        assert 0 <= float(d.x_test.min()) and float(d.x_test.max()) <= 1
    bad = {"normalised": ds.x_train - 0.5, "above 255": ds.x_train * 1000, "NaN": ds.x_train.clone().fill_(float("nan")),
           "fractional": ds.x_train * 2.5}
    messages = {"normalised": "pixels must be in [0, 1]", "above 255": "pixels must be in [0, 1]", "NaN": "NaN",
                "fractional": "with fractions"}
    for what, x in bad.items():
        with pytest.raises(UserError, match=re.escape(messages[what])) as e:
            ImageDataset("bad", x, y_train, ds.x_test, y_test, ds.classes)
        assert "\n" not in str(e.value), what
    _write(tmp_path, ["a", "b"], 3, size=(8, 8))  # an image folder is read as 8-bit and lands in [0, 1]
    folder = load_dataset("imagefolder", data_root=str(tmp_path))
    assert folder.x_train.dtype == torch.float32 and float(folder.x_train.max()) <= 1 and float(folder.x_train.max()) > 0.5


def test_implant_resizes_a_folder_of_mixed_sizes_with_data_param_and_its_card_records_it(tmp_path):
    """The size error told users to "pass size=", which `implant` had no option for."""
    import json
    import subprocess
    import sys

    _write(tmp_path / "data", ["a"], 6, size=(8, 8))
    _write(tmp_path / "data", ["b"], 6, size=(9, 9))
    r = subprocess.run([sys.executable, "-m", "trojanbench.cli", "implant", "--dataset", "imagefolder", "--data-root",
                        str(tmp_path / "data"), "--data-param", "size=8", "--trigger", "none", "--epochs", "1",
                        "--out", str(tmp_path / "m")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["dataset"]["options"]["size"] == 8 and card["arch_kwargs"]["image_size"] == 8
