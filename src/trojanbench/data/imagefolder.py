"""Any folder of images laid out as `<root>/<class>/<image>` (optionally under `train/` and `test/`)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from . import ImageDataset, register

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def _read(path: Path, size: int | tuple[int, int] | None, mode: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            wh = None if size is None else (size, size) if isinstance(size, int) else (size[1], size[0])  # H or (H, W)
            if wh is not None and im.size != wh:
                im = im.resize(wh, Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError) as e:  # not an image, or a damaged one (PIL's UnidentifiedImageError is an OSError)
        raise UserError(f"{path} is not a readable image ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None


def read_class_folders(root: Path, size: int | tuple[int, int] | None = None, mode: str = "RGB",
                       classes: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Read `<root>/<class>/*` into a uint8 tensor [N, C, H, W], int64 labels and the sorted class names."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist")
    classes = classes or sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise UserError(f"image folder {root} has no class sub-folders (<root>/<class>/<image>)")
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
            if (root / name).is_dir() else []
        files += found
        labels += [label] * len(found)
    if not files:
        raise UserError(f"image folder {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    with ThreadPoolExecutor(max_workers=4) as pool:
        arrays = list(pool.map(lambda p: _read(p, size, mode), files, chunksize=256))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise UserError(f"images in {root} differ in size ({sorted(shapes)[:3]}...); give the dataset a size to "
                        "resize them to (implant --data-param size=32; size = 32 in a zoo config's [data] options)")
    x = torch.from_numpy(np.stack(arrays))
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    return x.contiguous(), torch.tensor(labels, dtype=torch.long), classes


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0)


def shuffled(x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[perm], y[perm]


@register("imagefolder")
def load_image_folder(data_root: str | None = None, size: int | tuple[int, int] | None = None, grayscale: bool = False,
                      test_fraction: float = 0.2, split_seed: int = 0, name: str = "imagefolder",
                      augment: dict | None = None, **_) -> ImageDataset:
    if data_root is None:
        raise UserError("the imagefolder dataset needs --data-root pointing at <root>/<class>/<image>")
    root, mode = Path(data_root), ("L" if grayscale else "RGB")
    if (root / "train").is_dir() and (root / "test").is_dir():
        x_train, y_train, classes = read_class_folders(root / "train", size, mode)
        x_test, y_test, _ = read_class_folders(root / "test", size, mode, classes)
    else:
        x, y, classes = read_class_folders(root, size, mode)
        x, y = shuffled(x, y, split_seed)
        n_test = max(1, round(len(x) * test_fraction))
        x_train, y_train, x_test, y_test = x[n_test:], y[n_test:], x[:n_test], y[:n_test]
    x_train, y_train = shuffled(x_train, y_train, split_seed)
    x_test, y_test = shuffled(x_test, y_test, split_seed + 1)
    return ImageDataset(name, to_float(x_train), y_train, to_float(x_test), y_test, classes,
                        augment or {"translate": 2, "flip": True})


def _class_count(data_root: str | None = None, **_) -> int | None:
    """The class sub-folders `load_image_folder` would read (None without a readable root: the loader says why)."""
    if data_root is None:
        return None
    root = Path(data_root) / "train" if (Path(data_root) / "train").is_dir() and (Path(data_root) / "test").is_dir() \
        else Path(data_root)
    return sum(p.is_dir() for p in root.iterdir()) if root.is_dir() else None


load_image_folder.class_count = _class_count
