"""Small helpers: seeding, devices, hashing, atomic writes, library versions."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .errors import UserError


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator for explicit use."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def private_rng():
    """`torch.random.fork_rng` over the CPU generator and, where CUDA is available, every GPU's: code inside may
    reseed (`torch.manual_seed` seeds every device) without moving the caller's random streams on any device."""
    return torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if torch.cuda.is_available() else [])


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`auto` (or None): CUDA where torch sees a GPU, else the CPU. Anything else is checked here, so that a device
    this machine lacks is a one-line UserError before any work, not a traceback from deep inside a track."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"unknown device {str(device)!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"no CUDA device: --device {device} asked for one, but torch {torch.__version__} sees none "
                            "(torch.cuda.is_available() is False); use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"no CUDA device {dev.index}: torch sees {torch.cuda.device_count()}; use cuda:0 .. "
                            f"cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"no MPS device: --device {device} asked for one, but torch sees none; use --device cpu")
    elif dev.type != "cpu":
        raise UserError(f"device {str(device)!r} is not supported; use cpu, cuda, cuda:N or auto")
    return dev


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


_UMASK = os.umask(0o022)  # read once, at import (umask can only be read by setting it)
os.umask(_UMASK)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # as open() would create it (mkstemp makes it private, 0600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def library_versions() -> dict[str, str]:
    import sklearn

    from . import __version__

    return {
        "trojanbench": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "python": platform.python_version(),
    }


@contextmanager
def evaluating(model):
    """Run `model` in eval mode for the block (BatchNorm uses, and does not update, its running statistics;
    dropout is off), then give every submodule back the train/eval mode it had, whatever happens in the block.
    Yields the model. Every tool that runs a caller's model without training it does so inside this."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


@contextmanager
def frozen(model):
    """`evaluating(model)` with every parameter's `requires_grad` off for the block (gradients flow to the inputs,
    a mask or a trigger, never into the model's weights), each parameter's flag given back after. Yields the
    model. For tools that optimise something through a caller's model without training it."""
    grads = [(p, p.requires_grad) for p in model.parameters()]
    with evaluating(model):
        for p, _ in grads:
            p.requires_grad_(False)
        try:
            yield model
        finally:
            for p, flag in grads:
                p.requires_grad_(flag)


@contextmanager
def torch_threads(n: int | None):
    """Torch on `n` threads for the block (None: leave the setting alone), restored after."""
    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def one_thread():
    """Torch on one thread for the block, restored after: with models this small a second thread only adds
    synchronisation (on a busy machine 5x the CPU time for the same work)."""
    return torch_threads(1)
