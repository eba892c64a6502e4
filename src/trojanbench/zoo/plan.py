"""Expand a zoo config into a deterministic list of jobs, each with a stable id.

Models come in pairs: seed s gives a clean model and (for the trojaned share) a trojaned twin with the
same architecture and seed, so every trojan has a clean twin for the quality gate and for insidious
training. Trojan settings are drawn from the config with a generator seeded by the zoo's seed. The zoo's
train/test split keeps each twin pair on one side (`split_test`).

Difficulty axes (issue 16; Yan et al., EMNLP 2025: detectors must be reported over poison rate and training
intensity): each trojan draws its poison rate from `trojans.rates` and, when `trojans.mode` is a list, its mode;
each twin pair draws its training epochs and learning-rate multiplier from `intensity` (`Job.intensity`, on the
card as its `train`). These new draws come from a generator of their own, so adding an axis to a zoo leaves
the trojans it already drew as they were; a config that uses none of them plans exactly the jobs (and ids) it
planned before they existed.
"""

from __future__ import annotations

import random
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, ValidationError

from ..config import StableDump, TrainConfig, ZooConfig
from ..errors import UserError, first_error
from ..trojans import TRIGGERS, PoisonSpec, TriggerSpec, TrojanSpec
from ..utils import canonical_json, sha256_bytes


class Job(StableDump):
    model_config = ConfigDict(extra="forbid")
    added: ClassVar[tuple[str, ...]] = ("intensity",)
    id: str
    arch: str
    arch_kwargs: dict[str, Any]
    seed: int
    trojan: TrojanSpec | None = None
    split: Literal["train", "test"] = "train"
    twin: str | None = None  # the clean job with the same architecture and seed
    intensity: dict[str, Any] | None = None  # the TrainConfig fields this job's intensity draw sets (epochs, lr)

    @property
    def trojaned(self) -> bool:
        return self.trojan is not None

    @property
    def targeted(self) -> bool:
        """A trojan whose trigger sends inputs to one target label: not all-to-all, not an override of a refusal."""
        return self.trojaned and self.trojan.poison.target is not None and self.trojan.poison.mode != "override"

    def train_config(self, cfg: ZooConfig) -> TrainConfig:
        """The zoo's training setup with this job's intensity draw (insidious fine-tuning may shorten it further)."""
        return cfg.train.model_copy(update=self.intensity) if self.intensity else cfg.train


def builtin_configs() -> list[str]:
    return sorted(p.name.removesuffix(".toml") for p in resources.files("trojanbench.zoo.configs").iterdir()
                  if p.name.endswith(".toml"))


def load_zoo_config(path_or_name: str | Path) -> ZooConfig:
    """A TOML file, or the name of a built-in config (`digits-zoo`, `cifar10-zoo`, ...)."""
    path = Path(path_or_name)
    if not path.is_file():
        if str(path_or_name) in builtin_configs():
            text = resources.files("trojanbench.zoo.configs").joinpath(f"{path_or_name}.toml").read_text()
        else:
            raise UserError(f"zoo config {path_or_name} not found (a TOML file, or one of: {', '.join(builtin_configs())})")
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"zoo config {path_or_name} is not a text file (TOML is UTF-8)") from None
    try:
        body = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"zoo config {path_or_name} is not valid TOML: {e}") from None
    if not body:  # every field has a default: an empty file would silently build a whole default zoo
        raise UserError(f"zoo config {path_or_name} is empty; start from a built-in one (docs/zoo.md)")
    try:
        return ZooConfig(**body)
    except ValidationError as e:
        raise UserError(f"zoo config {path_or_name}: {first_error(e)}") from None


def _intensity(cfg: ZooConfig, rng: random.Random) -> dict[str, Any] | None:
    draw = {}
    if cfg.intensity.epochs:
        draw["epochs"] = rng.choice(cfg.intensity.epochs)
    if cfg.intensity.lr_scales:
        draw["lr"] = round(cfg.train.lr * rng.choice(cfg.intensity.lr_scales), 12)
    return draw or None


def _modes(cfg: ZooConfig, kind: str) -> list[str]:
    """The poisoning modes a trojan of `kind` may draw (its `by_kind` entry's, else the plan's): natural features
    are only implanted all-to-one (or by the label-only modes, graded and relabel); a kind that fixes its
    poisoning (the jailbreak analogue) has its own."""
    if (fixed := TRIGGERS.get(kind).fixed_poison) is not None:
        return [fixed["mode"]]
    own = cfg.trojans.by_kind.get(kind)
    mode = own.mode if own is not None and own.mode is not None else cfg.trojans.mode
    modes = mode if isinstance(mode, list) else [mode]
    if kind == "natural" and isinstance(mode, list):
        modes = [m for m in modes if m in ("all-to-one", "graded", "relabel")]
        if not modes:
            raise UserError("natural-feature trojans are implanted all-to-one: add all-to-one to trojans.mode or "
                            "drop natural from trojans.kinds")
    return modes


def _job_id(body: dict, cfg: ZooConfig) -> str:
    identity = {**body, "data": cfg.data.model_dump(), "train": cfg.train.model_dump(),
                "insidious": cfg.insidious.model_dump() if body.get("trojan", {}) and body["trojan"].get("insidious") else None}
    return sha256_bytes(canonical_json(identity).encode())[:12]


def _check_targets(cfg: ZooConfig) -> None:
    """`data.options` must be options its loader takes (a misspelt one was dropped without a word), and
    `trojans.targets` labels of the data (where its loader can count them without loading): a target outside them
    would fail every job drawn with it, one at a time, once the build has started."""
    from ..data import check_options, class_count

    check_options(cfg.data.name, cfg.data.options, "data.options")
    n = class_count(cfg.data.name, **({"data_root": cfg.data.data_root} if cfg.data.data_root else {}),
                    **cfg.data.options)
    if n is not None and (bad := [t for t in cfg.trojans.targets if not 0 <= t < n]):
        raise UserError(f"trojans.targets holds {', '.join(map(str, bad))}, not a label of {cfg.data.name} "
                        f"(labels 0 to {n - 1})")


def expand(cfg: ZooConfig) -> list[Job]:
    from ..models import MODELS

    for arch in cfg.archs:
        MODELS.get(arch.arch)  # one line now, not a failed job per model after the build has started
    for kind in cfg.trojans.kinds:
        TRIGGERS.get(kind)
    for kind, variants in cfg.trojans.variants.items():
        params = getattr(TRIGGERS.get(kind), "Params", None)
        for v in variants if params is not None else []:
            try:
                params(**v)
            except ValidationError as e:
                raise UserError(f"trojans.variants.{kind}: {first_error(e)}") from None
    if len({TRIGGERS.get(k).modality for k in cfg.trojans.kinds}) > 1:
        raise UserError(f"trojans.kinds mixes image and text triggers ({', '.join(cfg.trojans.kinds)}); a zoo has one "
                        "kind of data")
    for kind in cfg.trojans.kinds:
        if (TRIGGERS.get(kind).fixed_poison or {}).get("mode") == "override" and not (cfg.data.options or {}).get("refusal"):
            raise UserError(f"trigger kind {kind!r} overrides a refusal class, which the data has only with "
                            "refusal = true in data.options (see the sst2-jailbreak config)")
    _check_targets(cfg)
    if extra := sorted(set(cfg.trojans.by_kind) - set(cfg.trojans.kinds)):
        raise UserError(f"trojans.by_kind names {', '.join(extra)}, not in trojans.kinds ({', '.join(cfg.trojans.kinds)})")
    rng = random.Random(cfg.seed)
    n_trojaned = round(cfg.models_per_arch * (1 - cfg.clean_fraction))
    n_clean = cfg.models_per_arch - n_trojaned
    n_pairs = max(n_clean, n_trojaned)
    n_insidious = round(n_trojaned * cfg.trojans.insidious_fraction)
    axes_rng = random.Random(f"axes-{cfg.seed}")  # the difficulty axes' own draws (see the module's docstring)
    jobs: list[Job] = []
    for a, arch in enumerate(cfg.archs):
        seeds = [cfg.seed * 100_000 + a * 10_000 + i for i in range(n_pairs)]
        intensity = {seed: _intensity(cfg, axes_rng) for seed in seeds}  # one draw per twin pair
        clean_ids = {}
        for i, seed in enumerate(seeds[:n_clean]):
            body = {"arch": arch.arch, "arch_kwargs": arch.kwargs, "seed": seed, "trojan": None,
                    **({"intensity": intensity[seed]} if intensity[seed] else {})}
            clean_ids[seed] = _job_id(body, cfg)
            jobs.append(Job(id=clean_ids[seed], **body))
        insidious = set(rng.sample(range(n_trojaned), n_insidious))
        for i, seed in enumerate(seeds[:n_trojaned]):
            kind = cfg.trojans.kinds[i % len(cfg.trojans.kinds)]
            variants = cfg.trojans.variants.get(kind) or [{}]
            params = rng.choice(variants)
            modes = _modes(cfg, kind)
            mode = modes[0] if len(modes) == 1 else axes_rng.choice(modes)
            own = cfg.trojans.by_kind.get(kind)
            rate = rng.choice(own.rates if own is not None and own.rates else cfg.trojans.rates)
            fixed = TRIGGERS.get(kind).fixed_poison
            cover = cfg.trojans.cover.get(kind, TRIGGERS.get(kind).cover_ratio)
            trojan = TrojanSpec(
                trigger=TriggerSpec(kind=kind, params=params, seed=seed),
                poison=PoisonSpec(mode=mode, rate=rate, target=None if mode == "all-to-all" else fixed["target"] if fixed
                                  else rng.choice(cfg.trojans.targets),
                                  cover_rate=round(rate * cover, 12) if cover else None),
                insidious=i in insidious)
            body = {"arch": arch.arch, "arch_kwargs": arch.kwargs, "seed": seed, "trojan": trojan.model_dump(),
                    **({"intensity": intensity[seed]} if intensity[seed] else {})}
            twin = clean_ids.get(seed)
            if trojan.insidious and twin is None:
                raise UserError("insidious trojans need a clean twin: raise clean_fraction so clean models >= trojaned")
            jobs.append(Job(id=_job_id(body, cfg), twin=twin, **{**body, "trojan": trojan}))
    split_test(jobs, cfg.test_fraction, random.Random(cfg.seed + 1), stratify=cfg.stratify)
    ids = [j.id for j in jobs]
    if len(set(ids)) != len(ids):
        raise UserError("the zoo config gives two identical jobs; vary seeds or settings")
    return jobs


def split_test(jobs: list[Job], test_fraction: float, rng: random.Random, stratify: bool = False) -> None:
    """Mark the zoo's held-out models (`split = "test"`), in place. A trojan and its clean twin are one unit and
    always land on the same side, so no learned detector is scored on a model whose twin it was trained on.
    Models without a twin are units of their own. The number of held-out pairs is chosen so that the held-out
    share of clean models and of trojaned models are each as close to `test_fraction` as the units allow.
    `stratify`: instead, each trigger kind's trojans (with their twins) are held out at `test_fraction` of that
    kind, then lone clean models make up the clean share. Ids are untouched: they hash the job body, never its
    split."""
    if stratify:
        return _split_stratified(jobs, test_fraction, rng)
    by_id = {j.id: j for j in jobs}
    pairs = [(by_id[j.twin], j) for j in jobs if j.trojaned and j.twin in by_id]
    paired = {j.id for pair in pairs for j in pair}
    clean_alone = [j for j in jobs if not j.trojaned and j.id not in paired]
    trojaned_alone = [j for j in jobs if j.trojaned and j.id not in paired]
    n_clean, n_trojaned = sum(not j.trojaned for j in jobs), sum(j.trojaned for j in jobs)
    want_clean, want_trojaned = round(n_clean * test_fraction), round(n_trojaned * test_fraction)

    def fill(n_pairs: int) -> tuple[int, int, int]:
        a = min(max(want_clean - n_pairs, 0), len(clean_alone))
        b = min(max(want_trojaned - n_pairs, 0), len(trojaned_alone))
        return abs(n_pairs + a - want_clean) + abs(n_pairs + b - want_trojaned), a, b

    # the fewest misses; among equals the most pairs (a held-out trojan then keeps its twin beside it)
    n_pairs = min(range(len(pairs) + 1), key=lambda p: (fill(p)[0], -p))
    _, a, b = fill(n_pairs)
    for pair in rng.sample(pairs, n_pairs):
        for j in pair:
            j.split = "test"
    for j in rng.sample(clean_alone, a) + rng.sample(trojaned_alone, b):
        j.split = "test"


def _split_stratified(jobs: list[Job], test_fraction: float, rng: random.Random) -> None:
    by_id = {j.id: j for j in jobs}
    units: dict[str, list[list[Job]]] = {}
    for j in jobs:
        if j.trojaned:
            units.setdefault(j.trojan.trigger.kind, []).append([j] + ([by_id[j.twin]] if j.twin in by_id else []))
    for kind in sorted(units):
        for unit in rng.sample(units[kind], round(len(units[kind]) * test_fraction)):
            for j in unit:
                j.split = "test"
    twins = {j.twin for j in jobs if j.trojaned}
    clean = [j for j in jobs if not j.trojaned]
    alone = [j for j in clean if j.id not in twins]
    held = sum(j.split == "test" for j in clean)
    for j in rng.sample(alone, min(max(round(len(clean) * test_fraction) - held, 0), len(alone))):
        j.split = "test"
