"""Shadow models for learned detectors (MNTD's jumbo learning, Xu et al. 2021): many copies of the audited
architecture trained from scratch on the auditor's clean sample, half of them clean and half trojaned with a
random trigger (a patch of random size, place and pattern, or a blended pattern at random opacity), a random
target and a random poison rate. All of them train at once with the batched trainer, and the result is cached
on disk (one safetensors file, keyed by a hash of the architecture, the data and the settings), so a benchmark
run pays for it once.
"""

from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ...config import TrainConfig
from ...trojans import random_trigger
from ...utils import canonical_json, sha256_bytes

FORMAT = "shadow-zoo/1"  # bump when the trigger distribution or the training recipe changes


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


def architecture_key(model: nn.Module) -> str:
    """What makes two models the same architecture for us: the module tree and every tensor's name and shape."""
    shapes = [(k, list(v.shape), str(v.dtype)) for k, v in model.state_dict().items()]
    return sha256_bytes(canonical_json({"repr": repr(model), "tensors": shapes}).encode())[:16]


def shadow_key(template: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: ShadowConfig) -> str:
    data = sha256_bytes(x.detach().cpu().contiguous().numpy().tobytes() + y.detach().cpu().numpy().tobytes())
    return sha256_bytes(canonical_json({"format": FORMAT, "arch": architecture_key(template), "data": data,
                                        "classes": num_classes, "cfg": asdict(cfg)}).encode())[:20]


def fresh_copy(template: nn.Module, seed: int) -> nn.Module:
    """The template's architecture with freshly initialised parameters (every module that knows how to reset
    itself; fixed buffers such as input normalisation are kept)."""
    model = copy.deepcopy(template).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in model.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    for p in model.parameters():
        p.requires_grad_(True)
    return model.train()


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
    train_models_batched(models, xs, ys, train, seeds=[cfg.seed * 1_000_003 + i for i in range(cfg.models)],
                         augment={"translate": cfg.translate, "flip": False}, device=device)
    return [m.cpu().eval() for m in models], labels


def shadow_zoo(template: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: ShadowConfig,
               cache: str | Path | None = None, device: torch.device | str = "cpu"
               ) -> tuple[list[nn.Module], list[int], bool]:
    """The shadow zoo for `template`'s architecture, trained once and cached under `cache` (default
    $TROJANBENCH_CACHE/shadows). Returns (models, labels, whether it came from the cache)."""
    if cache is None:
        from ...data.cifar10 import cache_dir

        cache = cache_dir() / "shadows"
    path = Path(cache) / f"{shadow_key(template, x, y, num_classes, cfg)}.safetensors"
    if path.is_file():
        try:
            state = load_file(str(path))
        except Exception:  # noqa: BLE001  a damaged file (e.g. a full disk) is rebuilt, never trusted
            state = None
        if state is not None:
            labels = state.pop("__labels__").tolist()
            models = []
            for i in range(len(labels)):
                m = copy.deepcopy(template).cpu()
                m.load_state_dict({k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(f"{i}/")})
                models.append(m.eval())
            return [m.to(device) for m in models], labels, True
    models, labels = train_shadow_zoo(template, x, y, num_classes, cfg, device)
    state = {f"{i}/{k}": v.detach().cpu().contiguous() for i, m in enumerate(models) for k, v in m.state_dict().items()}
    state["__labels__"] = torch.tensor(labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"format": FORMAT})
        os.replace(tmp, path)  # atomic: a concurrent or killed run never leaves half a file under the key
    finally:
        Path(tmp).unlink(missing_ok=True)
    return [m.to(device) for m in models], labels, False
