"""CIFAR-10 from the shared JPEG tarball, the CIFAR binary batches, or the CIFAR python batches.

The tarball is verified against `SHA256SUMS` beside it, extracted once into the cache folder, decoded once,
and kept there as one uint8 safetensors file; later loads read that file (a second or two).
The python batches are pickles: they are read with an unpickler that admits only numpy arrays,
so a hostile file cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import UserError
from ..utils import sha256_file
from . import ImageDataset, register
from .imagefolder import read_class_folders, shuffled, to_float

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TARBALL = "cifar10-images.tar.gz"
CIFAR_AUGMENT = {"translate": 2, "flip": True}


def default_data_root() -> Path:
    """$TROJANBENCH_DATA_ROOT, else the project's `../shared/data` (beside the checkout), else ./data."""
    if env := os.environ.get("TROJANBENCH_DATA_ROOT"):
        return Path(env)
    repo = Path(__file__).resolve().parents[3]
    for candidate in (repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data", Path.cwd() / "data"):
        if candidate.is_dir():
            return candidate
    return Path.cwd() / "data"


def cache_dir() -> Path:
    return Path(os.environ.get("TROJANBENCH_CACHE", Path.home() / ".cache" / "trojanbench"))


def expected_sha256(tarball: Path) -> str | None:
    sums = tarball.parent / "SHA256SUMS"
    if not sums.is_file():
        return None
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == tarball.name:
            return parts[0].lower()
    return None


def _extract_tarball(tarball: Path, cache: Path) -> Path:
    """Verify and extract once; returns the folder holding `cifar10/{train,test}`. Safe against a kill mid-way."""
    want = expected_sha256(tarball)
    if want is None:
        raise UserError(f"no checksum for {tarball.name} in {tarball.parent / 'SHA256SUMS'}; refusing to use it unverified")
    target = cache / f"cifar10-{want[:16]}"
    if (target / ".complete").is_file():
        return target
    got = sha256_file(tarball)
    if got != want:
        raise UserError(f"{tarball} is corrupt: sha256 {got[:16]}... does not match SHA256SUMS ({want[:16]}...)")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".extract-"))
    try:
        with tarfile.open(tarball) as tf:
            tf.extractall(tmp, filter="data")
        (tmp / ".complete").write_text(want)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _load_tarball(tarball: Path) -> dict[str, torch.Tensor]:
    folder = _extract_tarball(tarball, cache_dir())
    decoded = folder / "cifar10-uint8.safetensors"
    if decoded.is_file():
        return load_file(decoded)
    base = folder / "cifar10"
    x_train, y_train, _ = read_class_folders(base / "train", classes=CLASSES)
    x_test, y_test, _ = read_class_folders(base / "test", classes=CLASSES)
    tensors = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    tmp = decoded.with_suffix(".tmp")
    save_file(tensors, tmp)
    os.replace(tmp, decoded)
    return tensors


def read_binary_batches(folder: Path) -> dict[str, torch.Tensor]:
    """CIFAR-10 binary version: each record is 1 label byte + 3072 pixel bytes (R, G, B planes, 32x32)."""

    def read(names):
        raw = np.concatenate([np.fromfile(folder / n, dtype=np.uint8) for n in names])
        if raw.size % 3073:
            raise UserError(f"{folder}: binary batch size is not a multiple of 3073 bytes; the files are truncated")
        rec = raw.reshape(-1, 3073)
        return torch.from_numpy(rec[:, 1:].reshape(-1, 3, 32, 32).copy()), torch.from_numpy(rec[:, 0].astype(np.int64))

    train_names = sorted(p.name for p in folder.glob("data_batch_*.bin"))
    if not train_names or not (folder / "test_batch.bin").is_file():
        raise UserError(f"{folder} lacks data_batch_*.bin / test_batch.bin")
    x_train, y_train = read(train_names)
    x_test, y_test = read(["test_batch.bin"])
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Admits the globals a CIFAR python batch needs (numpy array reconstruction), nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise UserError(f"refusing to load a pickle that asks for {module}.{name}: not a CIFAR batch")


def _read_python_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        batch = _ArraysOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{path} is not a readable CIFAR python batch ({type(e).__name__})") from None
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = np.asarray(batch["data"], dtype=np.uint8), batch.get("labels", batch.get("fine_labels"))
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.tensor(labels, dtype=torch.long)


def read_python_batches(folder: Path) -> dict[str, torch.Tensor]:
    train = sorted(folder.glob("data_batch_*"))
    if not train or not (folder / "test_batch").is_file():
        raise UserError(f"{folder} lacks data_batch_* / test_batch")
    parts = [_read_python_batch(p) for p in train]
    x_test, y_test = _read_python_batch(folder / "test_batch")
    return {"x_train": torch.cat([p[0] for p in parts]), "y_train": torch.cat([p[1] for p in parts]),
            "x_test": x_test, "y_test": y_test}


def find_cifar10(root: Path) -> dict[str, torch.Tensor]:
    """Whatever form of CIFAR-10 `root` holds, as uint8 tensors."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"data root {root} does not exist")
    if root.is_file() and root.name.endswith(".tar.gz"):
        return _load_tarball(root)
    for sub in (root, root / "cifar-10-batches-bin"):
        if (sub / "data_batch_1.bin").is_file():
            return read_binary_batches(sub)
    for sub in (root, root / "cifar-10-batches-py"):
        if (sub / "data_batch_1").is_file():
            return read_python_batches(sub)
    if (root / TARBALL).is_file():
        return _load_tarball(root / TARBALL)
    for sub in (root, root / "cifar10"):
        if (sub / "train").is_dir() and (sub / "test").is_dir():
            x_train, y_train, _ = read_class_folders(sub / "train", classes=CLASSES)
            x_test, y_test, _ = read_class_folders(sub / "test", classes=CLASSES)
            return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    raise UserError(f"no CIFAR-10 under {root}: expected {TARBALL}, cifar-10-batches-bin/, cifar-10-batches-py/ "
                    "or cifar10/{train,test}/<class>/")


@register("cifar10")
def load_cifar10(data_root: str | None = None, split_seed: int = 0, n_train: int | None = None,
                 n_test: int | None = None, **_) -> ImageDataset:
    """CIFAR-10, each split shuffled by `split_seed`; `n_train` / `n_test`: keep only the first that many of each."""
    t = find_cifar10(Path(data_root) if data_root else default_data_root())
    x_train, y_train = shuffled(t["x_train"], t["y_train"], split_seed)
    x_test, y_test = shuffled(t["x_test"], t["y_test"], split_seed + 1)
    x_train, y_train, x_test, y_test = x_train[:n_train], y_train[:n_train], x_test[:n_test], y_test[:n_test]
    return ImageDataset("cifar10", to_float(x_train), y_train, to_float(x_test), y_test, list(CLASSES),
                        dict(CIFAR_AUGMENT))


load_cifar10.class_count = lambda **_: len(CLASSES)
