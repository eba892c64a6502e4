"""Models handed to an auditor, in three layouts, loaded without ever unpickling:

- **our store format**: a folder with `model.safetensors` and `card.json` (verified as `zoo.store.load_model`);
- **a safetensors state dict** (a `.safetensors` file) with the architecture given by registered name
  (`--arch cnn`; the data-dependent arguments, in_channels, num_classes, image_size, mean and std, come from
  the audit's data and `--arch-param k=v` adds or overrides the rest) or by import path
  (`--arch package.module:Class`, built as `Class(**arch_params)` alone);
- **BackdoorBench's saved attack result** (`attack_result.pt`: a dict with `model` (the state dict),
  `model_name`, `num_classes`, `img_size`, ...; see BackdoorBench `utils/save_load_attack.py`), read with
  `torch.load(weights_only=True)`: tensors, numbers, strings, lists and dicts only. A file that needs more
  (numpy arrays, pickled objects: BackdoorBench v2 keeps some numpy index arrays) is refused in one line; re-save
  its `model` entry with `safetensors.torch.save_file` and audit that. The architecture is `--arch` or, when
  absent, `model_name` if that names one of ours.

Every architecture must take images with pixels in [0, 1] (ours normalise inside the model): a model that
expects normalised inputs needs a wrapper that normalises first.
"""

from __future__ import annotations

import importlib
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..models import MODELS, build_model, data_kwargs, expected_image_shape
from ..zoo.store import CARD, ModelCard, load_card, load_model, load_state, read_weights

FORMATS = ("store", "safetensors", "backdoorbench")


@dataclass
class LoadedModel:
    model: nn.Module
    format: str  # one of FORMATS
    arch: str  # a registered name or package.module:Class
    arch_kwargs: dict = field(default_factory=dict)
    card: ModelCard | None = None  # our store format only
    info: dict = field(default_factory=dict)  # what the file said about itself (BackdoorBench: model_name, ...)

    @property
    def name(self) -> str:
        return self.card.id if self.card else self.info.get("file", "model")


def detect_format(path: Path) -> str:
    if path.is_dir():
        if not (path / CARD).is_file():
            raise UserError(f"{path} is a folder without {CARD}: give a model folder of the store format, a "
                            ".safetensors state dict or a BackdoorBench attack_result.pt")
        return "store"
    if not path.is_file():
        raise UserError(f"model {path} does not exist")
    head = path.read_bytes()[:8]
    if path.suffix == ".safetensors":
        return "safetensors"
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "backdoorbench"
    raise UserError(f"{path}: unknown model file (expected a .safetensors state dict, a torch.save zip such as "
                    "BackdoorBench's attack_result.pt, or a model folder)")


def resolve_arch(arch: str, arch_params: dict, dataset) -> tuple[nn.Module, dict]:
    """An architecture by registered name (data arguments from `dataset`, overridden by `arch_params`) or by
    import path `package.module:Class` (built with `arch_params` alone). Returns the model and its kwargs."""
    if ":" in arch:
        module_name, _, attr = arch.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise UserError(f"--arch {arch}: cannot import {module_name!r} ({e})") from None
        factory = getattr(module, attr, None)
        if factory is None or not callable(factory):
            raise UserError(f"--arch {arch}: {module_name} has no class or function {attr!r}")
        try:
            model = factory(**arch_params)
        except TypeError as e:
            raise UserError(f"--arch {arch}: bad arguments {arch_params}: {e}") from None
        if not isinstance(model, nn.Module):
            raise UserError(f"--arch {arch} built a {type(model).__name__}, not a torch.nn.Module")
        return model, dict(arch_params)
    MODELS.get(arch)  # unknown name: one line listing the known ones
    kwargs = {**data_kwargs(dataset), **arch_params} if dataset is not None else dict(arch_params)
    return build_model(arch, **kwargs), kwargs


def _load_state(model: nn.Module, state: dict, where: str, arch: str) -> None:
    """Every key of the file into the model (tied weights stored once are re-tied: `zoo.store.load_state`)."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{where}: the weights are not a state dict of tensors")
    load_state(model, state, f"{where} does not fit architecture {arch}")


def read_backdoorbench(path: Path) -> dict:
    """BackdoorBench's attack result as a dict, through torch's weights-only unpickler and nothing else."""
    try:
        obj = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = next((ln for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln), "")
        raise UserError(f"{path} needs a full unpickle to load ({first.strip()[:120] or 'objects beyond tensors'}); "
                        "trojanbench never unpickles: save its 'model' state dict with safetensors.torch.save_file "
                        "and audit that file") from None
    except Exception as e:  # noqa: BLE001 - truncated zip, not a torch file: one line
        raise UserError(f"{path} is not a readable torch.save file ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} is a bare torch.save state dict: re-save it with safetensors.torch.save_file "
                        "and audit that .safetensors file with --arch")
    if not isinstance(obj, dict) or "model" not in obj:
        raise UserError(f"{path} is not a BackdoorBench attack result (a dict with a 'model' state dict); save the "
                        "model's state dict with safetensors.torch.save_file and audit that file with --arch")
    return obj


def declared_shape(path: str | Path, arch_params: dict | None = None) -> tuple[int, int, int] | None:
    """The image shape (C, H, W) the model says it takes before it is built, or None: its card's (store format),
    else `--arch-param` in_channels and image_size, else BackdoorBench's img_size (H, W, C)."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "store":
        return expected_image_shape(load_card(path).arch_kwargs)
    shape = expected_image_shape(arch_params or {})
    if shape is None and fmt == "backdoorbench":
        size = read_backdoorbench(path).get("img_size")
        if isinstance(size, (list, tuple)) and len(size) == 3 and all(isinstance(v, int) and v > 0 for v in size):
            shape = (size[2], size[0], size[1])
    return shape


def load_audited_model(path: str | Path, dataset=None, arch: str | None = None, arch_params: dict | None = None,
                       device: str | torch.device = "cpu") -> LoadedModel:
    """Load the model to audit from any of the three layouts (see the module docstring), in eval mode."""
    path = Path(path)
    fmt = detect_format(path)
    arch_params = dict(arch_params or {})
    if fmt == "store":
        if arch:
            raise UserError(f"{path} is a model folder with a card; its card names the architecture (drop --arch)")
        model, card = load_model(path, device)
        return LoadedModel(model, fmt, card.arch, card.arch_kwargs, card=card, info={"file": str(path)})
    info: dict = {"file": str(path)}
    if fmt == "safetensors":
        if not arch:
            raise UserError(f"{path} is a bare state dict: give its architecture with --arch NAME or "
                            "--arch package.module:Class")
        state = read_weights(path)
    else:
        obj = read_backdoorbench(path)
        info.update({k: obj[k] for k in ("model_name", "num_classes", "img_size", "clean_data") if k in obj})
        if not arch:
            name = obj.get("model_name")
            if not isinstance(name, str) or name not in MODELS:
                raise UserError(f"{path}: BackdoorBench model {name!r} is not one of our architectures "
                                f"({', '.join(MODELS.names())}); give --arch NAME or --arch package.module:Class")
            arch = name
        if "num_classes" in obj and ":" not in arch and "num_classes" not in arch_params:
            arch_params["num_classes"] = int(obj["num_classes"])
        state = obj["model"]
    model, kwargs = resolve_arch(arch, arch_params, dataset)
    _load_state(model, state, str(path), arch)
    return LoadedModel(model.to(device).eval(), fmt, arch, _plain(kwargs), info=info)


def _plain(kwargs: dict) -> dict:
    """Keyword arguments as JSON-able values (for the report)."""
    return {k: (v if isinstance(v, (int, float, str, bool, list, type(None))) else repr(v)) for k, v in kwargs.items()}


__all__ = ["FORMATS", "LoadedModel", "declared_shape", "load_audited_model", "read_backdoorbench", "resolve_arch"]
