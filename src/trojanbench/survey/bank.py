"""The question bank on disk: the contract between the synthesize task (which writes it) and the survey app
(which shows it to people).

A bank is a folder holding `questions.json` and the PNG files it names, by paths relative to the folder:

    {"version": 1, "title": "...", "zoo": "digits-zoo",
     "questions": [{"id": "q0001", "tool": "adversarial-patch", "model_id": "<card id>", "trigger_kind": "patch",
                    "insidious": false, "images": ["q0001/tool-0.png"], "options": ["q0001/opt-0.png", ...],
                    "answer": 3, "judge_choice": 5}]}

`options` holds 2 to 8 candidate triggers (a zoo with fewer than 8 distinct triggers asks with fewer; chance is
1/len(options)), in the order the track showed them to that tool. `answer` is the index of the true trigger among
them, `judge_choice` the automatic judge's pick (or null). One question per (trojaned model, tool); the survey
shows each participant at most one tool's question per model (`survey.server.question_order`).
`questions.json` is written last and atomically, so a folder with one is a complete bank.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import UserError, first_error
from ..utils import atomic_write_bytes, atomic_write_text, canonical_json

N_OPTIONS = 8  # the most options a question has
MIN_OPTIONS = 2
MAX_IMAGES = 12  # the pooled all-methods condition shows one image per method
BANK_FILE = "questions.json"
ID_PATTERN = r"^[A-Za-z0-9_-]{1,40}$"
_SAFE_PART = re.compile(r"^[A-Za-z0-9_.-]+$")


def check_relative_path(path: str) -> str:
    """A bank image path: relative, forward slashes, plain file-name characters, no `..`, ending in .png.
    Anything else could name a file outside the bank once joined to its folder."""
    parts = path.split("/")
    if (not path or path.startswith("/") or "\\" in path or not path.lower().endswith(".png")
            or any(p in ("", ".", "..") or not _SAFE_PART.match(p) for p in parts)):
        raise ValueError(f"image path {path!r} must be a relative path inside the bank folder ending in .png "
                         "(letters, digits, '_', '-', '.' and '/' only, no '..')")
    return str(PurePosixPath(path))


class Question(BaseModel):
    """One multiple-choice question: a tool's images for one trojaned model, and 2 to 8 candidate triggers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=ID_PATTERN)
    tool: str = Field(min_length=1)
    model_id: str = Field(min_length=1)
    trigger_kind: str = Field(min_length=1)
    insidious: bool = False
    images: list[str] = Field(min_length=1, max_length=MAX_IMAGES)
    options: list[str] = Field(min_length=MIN_OPTIONS, max_length=N_OPTIONS)
    answer: int = Field(ge=0, lt=N_OPTIONS)
    judge_choice: int | None = Field(default=None, ge=0, lt=N_OPTIONS)

    @field_validator("images", "options")
    @classmethod
    def _paths(cls, v: list[str]) -> list[str]:
        return [check_relative_path(p) for p in v]

    @model_validator(mode="after")
    def _indices_name_an_option(self):
        for name in ("answer", "judge_choice"):
            value = getattr(self, name)
            if value is not None and value >= len(self.options):
                raise ValueError(f"{name} {value} names no option: the question has {len(self.options)}")
        if len(set(self.options)) != len(self.options):
            raise ValueError("options must be distinct images")
        return self

    @property
    def chance(self) -> float:
        """The accuracy of a blind guess: 1 / the number of options."""
        return 1.0 / len(self.options)

    @property
    def groups(self) -> list[str]:
        """The leaderboard groups this question counts in (as the tracks split their metrics)."""
        return [f"kind={self.trigger_kind}", "insidious" if self.insidious else "crude"]


class BankFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    title: str = "trojanbench survey"
    zoo: str | None = None  # the zoo's name: aggregate rows go under model_id `zoo:<zoo>` beside the track's
    questions: list[Question] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self):
        seen: set[str] = set()
        for q in self.questions:
            if q.id in seen:
                raise ValueError(f"question id {q.id!r} appears twice; ids must be unique")
            seen.add(q.id)
        return self


@dataclass(frozen=True)
class Bank:
    """A loaded, validated bank. `key` identifies its content (questions and image bytes, not the judge's
    picks), so answers given to one bank are never scored against another that reuses its question ids."""

    folder: Path
    title: str
    zoo: str | None
    questions: tuple[Question, ...]
    key: str

    def question(self, qid: str) -> Question | None:
        return self._by_id.get(qid)

    @cached_property
    def _by_id(self) -> dict[str, Question]:
        return {q.id: q for q in self.questions}

    @cached_property
    def image_paths(self) -> frozenset[str]:
        return frozenset(p for q in self.questions for p in (*q.images, *q.options))


def load_bank(folder: str | Path) -> Bank:
    """Read and validate a bank; every problem is a UserError that names the file and the fix."""
    folder = Path(folder)
    path = folder / BANK_FILE
    if not folder.is_dir():
        raise UserError(f"no question bank at {folder}: expected a folder holding {BANK_FILE} (run the synthesize "
                        "track with a bank folder to write one)")
    if not path.is_file():
        raise UserError(f"{folder} holds no {BANK_FILE}; point --bank at a folder written by the synthesize track")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); regenerate the bank") from None
    try:
        data = BankFile.model_validate(raw)
    except ValidationError as e:
        raise UserError(f"{path} is not a valid question bank: {first_error(e)}") from None
    root = folder.resolve()
    digests = {}
    for rel in sorted({p for q in data.questions for p in (*q.images, *q.options)}):
        file = (root / rel).resolve()
        if not file.is_relative_to(root):  # a symlink pointing out of the bank
            raise UserError(f"{path}: image {rel!r} resolves outside the bank folder {root}")
        if not file.is_file():
            raise UserError(f"{path}: image {rel!r} is missing from {folder}; regenerate the bank")
        digests[rel] = hashlib.sha256(file.read_bytes()).hexdigest()
    content = [q.model_dump(exclude={"judge_choice"}) for q in data.questions]
    key = hashlib.sha256(canonical_json({"questions": content, "images": digests}).encode()).hexdigest()[:16]
    return Bank(root, data.title, data.zoo, tuple(data.questions), key)


def to_png(image: Any, size: int = 96) -> bytes:
    """PNG bytes of an image given as a PIL image, or an array (H,W), (H,W,C) or (C,H,W) with C in {1,3},
    floats in [0,1] or uint8; scaled up by a whole factor with nearest-neighbour so an 8x8 digit stays crisp
    and visible (its longer side reaches about `size` pixels)."""
    import io

    from PIL import Image

    if isinstance(image, Image.Image):
        img = image.convert("RGB") if image.mode not in ("L", "RGB") else image
    else:
        arr = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
            arr = np.moveaxis(arr, 0, -1)  # CHW (torch layout) -> HWC
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
            raise UserError(f"an image must be (H,W), (H,W,C) or (C,H,W) with 1 or 3 channels; got shape {arr.shape}")
        if arr.dtype != np.uint8:
            arr = np.clip(np.nan_to_num(arr.astype(np.float64)), 0.0, 1.0)
            arr = np.round(arr * 255).astype(np.uint8)
        img = Image.fromarray(arr)
    factor = max(1, round(size / max(img.size)))
    if factor > 1:
        img = img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_bank(folder: str | Path, questions: list[Question], images: Mapping[str, Any],
               title: str = "trojanbench survey", zoo: str | None = None, size: int = 96) -> Path:
    """Write a bank: every image named by a question (from `images`, keyed by its relative path) as a PNG,
    then `questions.json` atomically. Validates everything before writing anything. Returns the json path."""
    try:
        data = BankFile(title=title, zoo=zoo, questions=list(questions))
    except ValidationError as e:
        raise UserError(f"cannot write the question bank: {first_error(e)}") from None
    needed = {p for q in data.questions for p in (*q.images, *q.options)}
    missing = sorted(needed - set(images))
    if missing:
        raise UserError(f"cannot write the question bank: no image given for {missing[0]!r} "
                        f"({len(missing)} missing in all)")
    folder = Path(folder)
    pngs = {rel: to_png(images[rel], size) for rel in sorted(needed)}
    for rel, data_bytes in pngs.items():
        atomic_write_bytes(folder / rel, data_bytes)
    path = folder / BANK_FILE
    atomic_write_text(path, json.dumps(data.model_dump(), indent=1) + "\n")
    return path


def write_bank_from_tensors(folder: str | Path, questions: list[dict], title: str = "trojanbench survey",
                            zoo: str | None = None, size: int = 96) -> Path:
    """The synthesize track's entry point: each question a dict with `tool`, `model_id`, `trigger_kind`,
    `insidious`, `answer`, `judge_choice`, and `images` / `options` as lists of images (tensors [C,H,W] or
    arrays); ids (q0001, ...) and file names are assigned here, in the given order."""
    built, images = [], {}
    for i, q in enumerate(questions, 1):
        qid = f"q{i:04d}"
        paths = {"images": [f"{qid}/tool-{k}.png" for k in range(len(q["images"]))],
                 "options": [f"{qid}/opt-{k}.png" for k in range(len(q["options"]))]}
        for field in ("images", "options"):
            images.update(zip(paths[field], q[field]))
        meta = {k: v for k, v in q.items() if k not in ("images", "options")}
        try:
            built.append(Question(id=qid, **meta, **paths))
        except ValidationError as e:
            raise UserError(f"cannot write the question bank: question {qid}: {first_error(e)}") from None
    return write_bank(folder, built, images, title=title, zoo=zoo, size=size)
