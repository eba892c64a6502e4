"""The one artifact contract: a model is a folder with `model.safetensors`, `card.json` and, for
trojaned models, `poisoned.json` (the exact poisoned training indices).

The card records how the model was made and what it scored; its `id` is the sha256 of the rest of the
card, which itself holds the sha256 of the weights and of the poisoned-indices file. So a tampered card,
swapped weights or a truncated file are all caught on load. Writes are atomic (temp file + rename) and the
card is written last: a folder without a valid card is an unfinished write, never a model.
We never unpickle: a pickle (or a torch.save zip) named model.safetensors is refused before parsing.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from ..errors import UserError, first_error
from ..utils import atomic_write_bytes, atomic_write_text, canonical_json, library_versions, sha256_bytes, sha256_file

WEIGHTS, CARD, POISON = "model.safetensors", "card.json", "poisoned.json"
FORMAT_VERSION = 1
FRACTIONS = ("accuracy", "_acc", "_rate")  # metrics whose name ends so are fractions, in [0, 1]


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")
    format_version: int = FORMAT_VERSION
    id: str = ""
    arch: str
    arch_kwargs: dict[str, Any]
    dataset: dict[str, Any]
    seed: int
    trojan: dict[str, Any] | None = None  # TrojanSpec as a dict; None for a clean model
    insidious: bool = False
    n_poisoned: int = 0
    poisoned_indices_file: str | None = None
    poisoned_sha256: str | None = None
    train: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    train_seconds: float = 0.0
    versions: dict[str, str] = Field(default_factory=library_versions)
    weights_sha256: str = ""
    extra: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _makes_sense(self):
        """Refuse a card no task could use: a fraction metric outside [0, 1] (a non-finite one `save_model` refuses
        with its own message), an unknown trigger kind, or a target label outside the model's classes. Cheap: no
        model is built."""
        from ..trojans import TRIGGERS

        for k, v in self.metrics.items():
            if k.endswith(FRACTIONS) and math.isfinite(v) and not 0 <= v <= 1:
                raise PydanticCustomError("card", f"metric {k}={v} is not in [0, 1]")
        if self.trojan is not None:
            kind = (self.trojan.get("trigger") or {}).get("kind")
            if kind not in TRIGGERS.names():
                raise PydanticCustomError("card", f"unknown trigger {kind!r}; known: {', '.join(TRIGGERS.names())}")
            target, classes = (self.trojan.get("poison") or {}).get("target", 0), self.arch_kwargs.get("num_classes")
            if target is not None and classes is not None and not (isinstance(target, int) and 0 <= target < classes):
                raise PydanticCustomError("card", f"trojan target label {target} out of range for a model of "
                                                  f"{classes} classes")
        return self

    @property
    def trojaned(self) -> bool:
        return self.trojan is not None

    def content_hash(self) -> str:
        body = self.model_dump(exclude={"id"})
        return sha256_bytes(canonical_json(body).encode())


def _check_safetensors_bytes(data: bytes, path: Path) -> None:
    """Refuse anything that is not a safetensors file, before any parser sees it."""
    if len(data) >= 10:
        (header_len,) = struct.unpack("<Q", data[:8])
        if header_len <= len(data) - 8 and data[8:9] == b"{":
            return
    if data[:1] == b"\x80" or data[:2] == b"PK":  # pickle protocol 2+ / torch.save zip
        raise UserError(f"{path} is a pickle / torch.save file, not safetensors; trojanbench never unpickles "
                        "model files (convert it with safetensors.torch.save_file)")
    if len(data) < 10:
        raise UserError(f"{path} is truncated or empty ({len(data)} bytes)")
    raise UserError(f"{path} is not a valid safetensors file (bad header; truncated or another format)")


def read_weights(path: Path, data: bytes | None = None) -> dict[str, torch.Tensor]:
    """Parse a safetensors file (or its bytes, already read); anything else is refused with a UserError."""
    path = Path(path)
    if data is None:
        if not path.is_file():
            raise UserError(f"no weights file {path}")
        data = path.read_bytes()
    _check_safetensors_bytes(data, path)
    try:
        return st_load(data)
    except Exception as e:
        raise UserError(f"{path} is a damaged safetensors file ({str(e).splitlines()[0][:120]})") from None


def _storage_key(t: torch.Tensor) -> tuple | None:
    """What makes two state-dict entries one tensor (tied weights): the same memory viewed the same way. None for
    empty tensors, which hold no memory to share."""
    if t.numel() == 0:
        return None
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


def tied_groups(state: dict[str, torch.Tensor]) -> list[list[str]]:
    """The names of the state-dict entries that are one tensor under several names (tied weights): each group
    sorted, groups of two or more only, in sorted order."""
    groups: dict[tuple, list[str]] = {}
    for name, t in state.items():
        key = _storage_key(t)
        if key is not None:
            groups.setdefault(key, []).append(name)
    return sorted(sorted(names) for names in groups.values() if len(names) > 1)


def weights_bytes(model: nn.Module) -> bytes:
    """A model's state as safetensors bytes that depend on its values alone, so equal weights give an equal
    sha256. One metadata entry only: safetensors writes its metadata map in no fixed order (two entries came out
    in either order from one run to the next), while its tensors are written in a fixed, sorted order.
    Tied weights (one tensor under several names) are stored once, under the first of their names in sorted
    order; `load_state` re-ties them, since the freshly built architecture ties them itself. Every tensor is
    written from its own contiguous copy, so other memory sharing (views of one buffer) is stored as values too
    and comes back as the architecture lays it out."""
    state = model.state_dict()
    drop = {name for group in tied_groups(state) for name in group[1:]}
    return st_save({k: v.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)
                    for k, v in state.items() if k not in drop}, metadata={"format": "pt"})


def load_state(model: nn.Module, state: dict[str, torch.Tensor], where: str = "weights") -> nn.Module:
    """Load a state dict into a freshly built `model`, accepting exactly what `weights_bytes` leaves out: a key
    that is missing is fine only when, in `model`, it is tied to (shares its tensor with) a key that is loaded,
    so loading that key sets both. Any other missing key, an unexpected key or a shape that does not fit is a
    one-line UserError naming `where`."""
    fresh = model.state_dict()
    loaded_keys = {_storage_key(fresh[k]) for k in state if k in fresh}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise UserError(f"{where}: {' '.join(str(e).split())[:300]}") from None
    untied = [k for k in missing if _storage_key(fresh[k]) is None or _storage_key(fresh[k]) not in loaded_keys]
    if untied or unexpected:
        parts = ([f"missing keys {', '.join(untied[:5])}" + (" ..." if len(untied) > 5 else "")] if untied else []) + \
                ([f"unexpected keys {', '.join(unexpected[:5])}" + (" ..." if len(unexpected) > 5 else "")]
                 if unexpected else [])
        raise UserError(f"{where}: {'; '.join(parts)}")
    return model


def save_model(out_dir: str | Path, model: nn.Module, card: ModelCard,
               poisoned_indices: torch.Tensor | None = None) -> ModelCard:
    """Write weights, poisoned indices, then the card (the commit marker). Returns the final card."""
    return save_model_bytes(out_dir, card, weights_bytes(model), poisoned_indices)


def save_model_bytes(out_dir: str | Path, card: ModelCard, weights: bytes, poisoned_indices=None) -> ModelCard:
    """`save_model` for weights already serialised as safetensors bytes (as executors return them). A card whose
    metrics are not all finite numbers (a NaN clean accuracy) is refused before anything is written: a model is
    only ever stored, and verified on load, with metrics that mean something."""
    bad = {k: v for k, v in card.metrics.items() if not math.isfinite(v)}
    if bad:
        raise UserError(f"refusing to save {out_dir}: metric(s) {', '.join(f'{k}={v}' for k, v in bad.items())} "
                        "are not finite numbers")
    try:  # again: a card changed after it was made (`model_copy(update=...)`, attributes set) is not validated
        ModelCard.model_validate(card.model_dump())
    except ValidationError as e:
        raise UserError(f"refusing to save {out_dir}: {first_error(e)}") from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CARD).unlink(missing_ok=True)  # an overwrite is unfinished until the new card lands
    card = card.model_copy(update={"id": ""})
    atomic_write_bytes(out / WEIGHTS, weights)
    card = card.model_copy(update={"weights_sha256": sha256_bytes(weights)})
    if poisoned_indices is not None:
        text = json.dumps(sorted(int(i) for i in poisoned_indices))
        atomic_write_text(out / POISON, text)
        card = card.model_copy(update={"poisoned_indices_file": POISON, "poisoned_sha256": sha256_bytes(text.encode()),
                                       "n_poisoned": len(poisoned_indices)})
    card = card.model_copy(update={"id": card.content_hash()[:16]})
    atomic_write_text(out / CARD, json.dumps(card.model_dump(), indent=2, sort_keys=True))
    return card


def load_card(model_dir: str | Path, verify: bool = True) -> ModelCard:
    d = Path(model_dir)
    if d.is_file():
        raise UserError(f"{d} is a file, not a model folder (<model>/card.json + {WEIGHTS})")
    if not d.is_dir():
        raise UserError(f"model folder {d} does not exist")
    if not (d / CARD).is_file():
        raise UserError(f"{d} has no {CARD}: not a model folder, or an unfinished write")
    try:
        card = ModelCard(**json.loads((d / CARD).read_text()))
    except (json.JSONDecodeError, ValidationError, TypeError) as e:
        raise UserError(f"{d / CARD} is not a valid model card ({first_error(e)})") from None
    if verify and card.id != card.content_hash()[:16]:
        raise UserError(f"{d / CARD} was modified after it was written (its id does not match its content)")
    return card


_HASHES: dict[str, tuple[tuple[int, int, int], str]] = {}


def cached_sha256(path: Path) -> str | None:
    """sha256 of a file, or None if it is missing; remembered in this process by (size, mtime, inode), so
    checking a zoo of a thousand models again costs a thousand `stat`s, and a file changed since is re-read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    stamp, key = (st.st_size, st.st_mtime_ns, st.st_ino), str(Path(path).resolve())
    hit = _HASHES.get(key)
    if hit is None or hit[0] != stamp:
        hit = (stamp, sha256_file(path))
        _HASHES[key] = hit
    return hit[1]


def check_files(model_dir: str | Path, card: ModelCard) -> str | None:
    """What is wrong with a model folder's weights and poisoned-indices file against its (verified) card, in
    one line, or None when both match their hashes. Cheaper than `load_model`: hashes are cached, nothing is
    parsed."""
    d = Path(model_dir)
    digest = cached_sha256(d / WEIGHTS)
    if digest is None:
        return f"{WEIGHTS} is missing"
    if digest != card.weights_sha256:
        return f"{WEIGHTS} does not match its card (sha256 differs): changed or truncated after it was written"
    if card.poisoned_indices_file:
        digest = cached_sha256(d / card.poisoned_indices_file)
        if digest != card.poisoned_sha256:
            return f"{card.poisoned_indices_file} is missing or does not match its card"
    return None


def load_model(model_dir: str | Path, device: str | torch.device = "cpu",
               image_shape: tuple[int, int, int] | None = None) -> tuple[nn.Module, ModelCard]:
    """Load and verify a stored model: weights hash, card hash, poisoned-indices hash. With `image_shape`
    (C, H, W of the data it is to be used with), a model built for other images is a one-line UserError
    ("model ... expects 1x8x8 images, data has 3x32x32") before its weights are read."""
    from ..models import build_model, check_image_shape

    d = Path(model_dir)
    card = load_card(d)
    if image_shape is not None:
        check_image_shape(card.arch_kwargs, image_shape, what=f"model {d}")
    if not (d / WEIGHTS).is_file():
        raise UserError(f"{d} has no {WEIGHTS}: its card has no weights beside it")
    data = (d / WEIGHTS).read_bytes()
    _check_safetensors_bytes(data, d / WEIGHTS)
    if sha256_bytes(data) != card.weights_sha256:
        raise UserError(f"{d / WEIGHTS} does not match its card (sha256 differs): the weights were changed or damaged")
    state = read_weights(d / WEIGHTS, data)
    if card.poisoned_indices_file:
        text = (d / card.poisoned_indices_file).read_bytes() if (d / card.poisoned_indices_file).is_file() else b""
        if sha256_bytes(text) != card.poisoned_sha256:
            raise UserError(f"{d / card.poisoned_indices_file} is missing or does not match its card")
    model = build_model(card.arch, **card.arch_kwargs)
    load_state(model, state, f"{d / WEIGHTS} does not fit architecture {card.arch}")
    return model.to(device).eval(), card


def load_poisoned_indices(model_dir: str | Path, card: ModelCard | None = None) -> torch.Tensor:
    card = card or load_card(model_dir)
    if not card.poisoned_indices_file:
        return torch.empty(0, dtype=torch.long)
    return torch.tensor(json.loads((Path(model_dir) / card.poisoned_indices_file).read_text()), dtype=torch.long)
