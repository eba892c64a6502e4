"""Shadow models: copies of the audited architecture that a detector trains itself, from a fresh initialisation,
on the auditor's own clean sample. Two recipes live on this machinery:

- `jumbo.py`: MNTD's benign and jumbo shadow models as the paper trains them (used by `mntd`, `mntd-oc`);
- `shadow_zoo` below: the recipe of the `output-stats-meta` detector (half clean, half trojaned with a random
  trigger from `trojans.random_trigger` that replaces a random share of the sample; all trained at once with the
  batched trainer).

Both are cached on disk under $TROJANBENCH_CACHE/shadows as safetensors files keyed by a hash of everything that
determines them, written atomically, so a benchmark run pays for them once and a damaged file is rebuilt.
"""

from __future__ import annotations

import copy
import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ...config import TrainConfig
from ...trojans import random_trigger
from ...utils import canonical_json, one_thread, private_rng, sha256_bytes

FORMAT = "shadow-zoo/1"  # bump when the trigger distribution or the training recipe changes


def cache_root(cache: str | Path | None = None) -> Path:
    """Where shadow zoos are kept: `cache`, or $TROJANBENCH_CACHE/shadows."""
    if cache is not None:
        return Path(cache)
    from ...data.cifar10 import cache_dir

    return cache_dir() / "shadows"


def architecture_key(model: nn.Module) -> str:
    """What makes two models the same architecture for us: the module tree and every tensor's name and shape."""
    shapes = [(k, list(v.shape), str(v.dtype)) for k, v in model.state_dict().items()]
    return sha256_bytes(canonical_json({"repr": repr(model), "tensors": shapes}).encode())[:16]


def data_key(x: torch.Tensor, y: torch.Tensor) -> str:
    return sha256_bytes(x.detach().cpu().contiguous().numpy().tobytes() + y.detach().cpu().contiguous().numpy().tobytes())


def shadow_key(template: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: ShadowConfig) -> str:
    from ...train import TRAINER_VERSION

    return sha256_bytes(canonical_json({"format": FORMAT, "trainer_version": TRAINER_VERSION,
                                        "arch": architecture_key(template), "data": data_key(x, y),
                                        "classes": num_classes, "cfg": asdict(cfg)}).encode())[:20]


def fresh_copy(template: nn.Module, seed: int) -> nn.Module:
    """The template's architecture with freshly initialised parameters, so nothing of the template's weights is
    left: every module that knows how to reset itself does; parameters held directly by a module that does not
    (a ViT's class token and position table) are redrawn from N(0, 0.02^2). Fixed buffers (input normalisation)
    are kept: they are part of the architecture, not learned."""
    model = copy.deepcopy(template).cpu()
    with private_rng():
        torch.manual_seed(seed)
        with torch.no_grad():
            for m in model.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
                else:
                    for p in m.parameters(recurse=False):
                        p.normal_(0.0, 0.02)
    for p in model.parameters():
        p.requires_grad_(True)
    return model.train()


def fixed_buffers_key(template: nn.Module) -> str:
    """A hash of what a fresh copy keeps from the template (its fixed buffers, e.g. input normalisation)."""
    state = fresh_copy(template, 0).state_dict()
    params = {name for name, _ in template.named_parameters()}
    blob = b"".join(v.detach().cpu().contiguous().numpy().tobytes() for k, v in sorted(state.items()) if k not in params)
    return sha256_bytes(blob)[:16]


def save_states(path: Path, states: list[dict[str, torch.Tensor]], extra: dict[str, torch.Tensor] | None = None,
                fmt: str = FORMAT) -> None:
    """Many state dicts in one safetensors file ("i/name" keys), written atomically: a concurrent or killed run
    never leaves half a file under the key."""
    flat = {f"{i}/{k}": v.detach().cpu().contiguous() for i, s in enumerate(states) for k, v in s.items()}
    flat.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(flat, tmp, metadata={"format": fmt})
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextmanager
def claim(path: Path, wait: bool = True) -> Iterator[bool]:
    """An exclusive flock on `<path>.lock` while the block runs, so that processes sharing a cache (a pool's workers
    on one machine) build each cached file once. Yields True once held; with `wait=False` and another process
    holding it, yields False at once (build something else and come back). The kernel drops the lock when its
    holder exits, kill -9 included, so a dead builder never blocks anyone; the holder re-checks the cache first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def load_states(path: Path) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None:
    """(state dicts, extra tensors) from `save_states`, or None if the file is missing or damaged (then the
    caller rebuilds it: a damaged file, e.g. from a full disk, is never trusted)."""
    if not path.is_file():
        return None
    try:
        flat = load_file(str(path))
    except Exception:  # noqa: BLE001
        return None
    states: dict[int, dict[str, torch.Tensor]] = {}
    extra = {}
    for key, v in flat.items():
        head, _, name = key.partition("/")
        if head.isdigit() and name:
            states.setdefault(int(head), {})[name] = v
        else:
            extra[key] = v
    return [states[i] for i in range(len(states))], extra


# --- the `output-stats-meta` recipe ------------------------------------------------------------------------


@dataclass(frozen=True)
class ShadowConfig:
    models: int = 128
    epochs: int = 30
    batch_size: int = 32
    lr: float = 0.05
    min_rate: float = 0.05
    max_rate: float = 0.3
    translate: int = 1  # pixels of random shift while training; 0 turns augmentation off
    seed: int = 0


def _jumbo_data(x, y, num_classes: int, cfg: ShadowConfig, g: torch.Generator):
    """The clean sample with a random trigger stamped on a random share of the non-target images, relabelled."""
    trigger, target = random_trigger(tuple(x.shape[1:]), g), int(torch.randint(num_classes, (1,), generator=g))
    rate = cfg.min_rate + (cfg.max_rate - cfg.min_rate) * float(torch.rand(1, generator=g))
    candidates = torch.nonzero(y != target).flatten()
    n = max(1, int(rate * len(x)))
    chosen = candidates[torch.randperm(len(candidates), generator=g)[:n]]
    x, y = x.clone(), y.clone()
    x[chosen] = trigger.apply(x[chosen])
    y[chosen] = target
    return x, y


def train_shadow_zoo(template: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: ShadowConfig,
                     device: torch.device | str = "cpu") -> tuple[list[nn.Module], list[int]]:
    """`cfg.models` shadow models of `template`'s architecture; even indices clean (label 0), odd trojaned (1)."""
    from ...train.batched import train_models_batched

    g = torch.Generator().manual_seed(cfg.seed)
    x, y = x.detach().cpu(), y.detach().cpu()
    models, xs, ys, labels = [], [], [], []
    for i in range(cfg.models):
        models.append(fresh_copy(template, cfg.seed * 1_000_003 + i))
        xi, yi = _jumbo_data(x, y, num_classes, cfg, g) if i % 2 else (x, y)
        xs.append(xi)
        ys.append(yi)
        labels.append(i % 2)
    train = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, augment=cfg.translate > 0)
    with one_thread():  # bit-identical shadows at any caller thread count, like the zoo's chunk trainer
        train_models_batched(models, xs, ys, train, seeds=[cfg.seed * 1_000_003 + i for i in range(cfg.models)],
                             augment={"translate": cfg.translate, "flip": False}, device=device)
    return [m.cpu().eval() for m in models], labels


def shadow_zoo(template: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: ShadowConfig,
               cache: str | Path | None = None, device: torch.device | str = "cpu"
               ) -> tuple[list[nn.Module], list[int], bool]:
    """The `output-stats-meta` shadow zoo for `template`'s architecture, trained once and cached under `cache`
    (default $TROJANBENCH_CACHE/shadows). Returns (models, labels, whether it came from the cache)."""
    path = cache_root(cache) / f"{shadow_key(template, x, y, num_classes, cfg)}.safetensors"
    with claim(path):  # another worker building the same zoo: wait for it and read its file
        stored = load_states(path)
        if stored is not None and "__labels__" in stored[1]:
            states, extra = stored
            models = []
            for state in states:
                m = copy.deepcopy(template).cpu()
                m.load_state_dict(state)
                models.append(m.eval())
            return [m.to(device) for m in models], extra["__labels__"].tolist(), True
        models, labels = train_shadow_zoo(template, x, y, num_classes, cfg, device)
        save_states(path, [m.state_dict() for m in models], {"__labels__": torch.tensor(labels)})
    return [m.to(device) for m in models], labels, False
