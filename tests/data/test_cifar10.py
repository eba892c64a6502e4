"""CIFAR-10 loaders on fixtures generated here: the JPEG tarball (with checksum and cache), the binary
batches, the python batches (and a hostile pickle), and the real shared tarball where it is present."""

import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trojanbench.data import load_dataset
from trojanbench.data.cifar10 import CLASSES, default_data_root
from trojanbench.errors import UserError


def _jpeg(rng) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def make_tarball(root: Path, per_class: int = 2) -> Path:
    rng = np.random.default_rng(0)
    tar_path = root / "cifar10-images.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tf:
        for split in ("train", "test"):
            for c in CLASSES:
                for i in range(per_class):
                    data = _jpeg(rng)
                    info = tarfile.TarInfo(f"cifar10/{split}/{c}/{i}.jpg")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    digest = hashlib.sha256(tar_path.read_bytes()).hexdigest()
    (root / "SHA256SUMS").write_text(f"{digest}  cifar10-images.tar.gz\n")
    return tar_path


def test_tarball_is_verified_extracted_once_and_cached(tmp_path):
    make_tarball(tmp_path)
    ds = load_dataset("cifar10", data_root=str(tmp_path))
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (20, 3, 32, 32)
    assert sorted(torch.bincount(ds.y_train).tolist()) == [2] * 10
    cached = list((Path(os.environ["TROJANBENCH_CACHE"])).glob("cifar10-*/cifar10-uint8.safetensors"))
    assert len(cached) == 1
    # a second load reads the decoded cache: nothing is extracted or written again
    stamp = cached[0].stat().st_mtime_ns
    again = load_dataset("cifar10", data_root=str(tmp_path))
    assert torch.equal(again.x_train, ds.x_train)
    assert cached[0].stat().st_mtime_ns == stamp


def test_tarball_with_wrong_checksum_is_refused(tmp_path):
    make_tarball(tmp_path)
    (tmp_path / "SHA256SUMS").write_text("0" * 64 + "  cifar10-images.tar.gz\n")
    with pytest.raises(UserError, match="corrupt"):
        load_dataset("cifar10", data_root=str(tmp_path))


def test_missing_data_root_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("cifar10", data_root=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="no CIFAR-10"):
        load_dataset("cifar10", data_root=str(tmp_path))


def test_binary_batches(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    expected = {}
    for name, n in (("data_batch_1.bin", 7), ("data_batch_2.bin", 5), ("test_batch.bin", 4)):
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        pixels = rng.integers(0, 255, (n, 3072), dtype=np.uint8)
        np.concatenate([labels[:, None], pixels], axis=1).tofile(folder / name)
        expected[name] = (labels, pixels)
    from trojanbench.data.cifar10 import read_binary_batches

    t = read_binary_batches(folder)
    assert t["x_train"].shape == (12, 3, 32, 32) and t["x_test"].shape == (4, 3, 32, 32)
    labels, pixels = expected["test_batch.bin"]
    assert t["y_test"].tolist() == labels.tolist()
    assert torch.equal(t["x_test"][2, 1], torch.from_numpy(pixels[2, 1024:2048].reshape(32, 32)))
    ds = load_dataset("cifar10", data_root=str(tmp_path))
    assert len(ds.x_train) == 12
    # a truncated batch is refused
    with open(folder / "test_batch.bin", "ab") as f:
        f.write(b"\x00\x01")
    with pytest.raises(UserError, match="truncated"):
        read_binary_batches(folder)


def test_python_batches_load_without_running_code(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, n in (("data_batch_1", 6), ("test_batch", 3)):
        batch = {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), b"labels": list(range(n))}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    ds = load_dataset("cifar10", data_root=str(tmp_path))
    assert ds.x_train.shape == (6, 3, 32, 32) and sorted(ds.y_test.tolist()) == [0, 1, 2]


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_hostile_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "test_batch"):
        (folder / name).write_bytes(pickle.dumps({b"data": _Evil(), b"labels": [0]}))
    with pytest.raises(UserError, match="refusing"):
        load_dataset("cifar10", data_root=str(tmp_path))
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
def test_real_shared_tarball_when_present():
    root = default_data_root()
    if not (root / "cifar10-images.tar.gz").is_file():
        if os.environ.get("CI"):  # CI always has ../shared/data: a missing tarball there is a failure
            pytest.fail(f"the shared CIFAR-10 tarball is not at {root}")
        pytest.skip(f"the shared CIFAR-10 tarball is not at {root} on this machine")
    from trojanbench.data.cifar10 import expected_sha256

    assert expected_sha256(root / "cifar10-images.tar.gz") == \
        "3ee28caa27ea809e15bae957d63ac33c8f18cdfdaed904648591cd458bae91d5"
    ds = load_dataset("cifar10")  # decodes 60k JPEGs into this test's own cache (about 30 s)
    assert ds.x_train.shape == (50000, 3, 32, 32) and ds.x_test.shape == (10000, 3, 32, 32)
    assert torch.bincount(ds.y_train).tolist() == [5000] * 10 and torch.bincount(ds.y_test).tolist() == [1000] * 10
