"""Configs for the foundation layer (pydantic). Files and CLI flags only override these fields."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

PoisonMode = Literal["all-to-one", "all-to-all", "clean-label", "override", "graded", "relabel"]


class StableDump(BaseModel):
    """A model some of whose fields (`added`) came after zoos had been built with it: each is left out of the
    model's dumps while it holds its default, so the dump of a config that does not use it, and with it every
    hash taken of the dump (job ids, model card ids, zoo cache keys), is what it was before the field existed."""

    added: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_added_defaults(self, handler):
        data = handler(self)
        for name in self.added:
            if name in data and getattr(self, name) == type(self).model_fields[name].get_default(call_default_factory=True):
                del data[name]
        return data


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    warmup: float = Field(0.15, ge=0, le=1, description="fraction of steps spent warming the lr up linearly")
    augment: bool = True
    channels_last: bool = Field(True, description="NHWC memory layout: ~1.5x faster convolutions on CPU and GPU")
    # tuned per architecture family where the default does not suit it
    eval_batch_size: int = Field(1024, ge=1)


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "digits"
    data_root: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


def default_train_config(arch: str, dataset: str = "digits") -> TrainConfig:
    """Sane defaults per architecture: transformers want AdamW and a smaller lr."""
    if arch == "vit":
        return TrainConfig(optimizer="adamw", lr=2e-3, weight_decay=0.05, epochs=60)
    if arch == "mlp":
        return TrainConfig(lr=0.02)
    return TrainConfig()


class ArchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    arch: str = "cnn"
    kwargs: dict[str, Any] = Field(default_factory=dict)


class KindPlan(BaseModel):
    """One trigger kind's own draws, in place of the plan-wide `rates` and `mode` (e.g. warp needs more poisoned
    samples than a patch to be learned from a small training set)."""

    model_config = ConfigDict(extra="forbid")
    rates: list[Annotated[float, Field(gt=0, le=0.5)]] | None = None  # as PoisonSpec.rate
    mode: PoisonMode | list[PoisonMode] | None = None


class TrojanPlanConfig(StableDump):
    """Which trojans the zoo's trojaned models get; each trojaned model draws one combination.

    Difficulty axes: `rates` (e.g. 0.003 to 0.1), `mode` (one mode, or a list to draw from: all-to-one and
    all-to-all trojans in one zoo). Evasive trojans: `insidious_fraction` (trained to stay near their clean twin),
    and the adaptive kinds `adaptive-blend` and `adaptive-patch` (Qi et al., ICLR 2023), whose poisoned samples
    come with cover samples (`cover`)."""

    model_config = ConfigDict(extra="forbid")
    added: ClassVar[tuple[str, ...]] = ("cover", "by_kind")
    kinds: list[str] = Field(default_factory=lambda: ["patch", "blended", "warp", "style", "natural"])
    variants: dict[str, list[dict[str, Any]]] = Field(
        default_factory=dict, description="per kind, parameter sets to draw from (default: the kind's defaults)")
    targets: list[int] = Field(default_factory=lambda: [0])
    rates: list[Annotated[float, Field(gt=0, le=0.5)]] = Field(default_factory=lambda: [0.1])  # as PoisonSpec.rate
    mode: PoisonMode | list[PoisonMode] = Field(
        "all-to-one", description="a poisoning mode, or a list each trojan draws one from (natural-feature trojans "
        "draw among the all-to-one modes only)")
    insidious_fraction: float = Field(0.0, ge=0, le=1)
    cover: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict, description="per kind, cover samples (triggered, labels kept) per poisoned sample "
        "(default: the kind's own, e.g. 1 for adaptive-blend and 2 for adaptive-patch as Qi et al.; 0 for the others)")
    by_kind: dict[str, KindPlan] = Field(
        default_factory=dict, description="per kind, rates and modes drawn in place of the plan-wide ones")


class IntensityConfig(BaseModel):
    """Training intensity as a difficulty axis: each pair of a clean model and its trojaned twin draws its epochs
    and a multiplier of the zoo's learning rate from these lists (empty: the zoo's `train` setting for all)."""

    model_config = ConfigDict(extra="forbid")
    epochs: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)
    lr_scales: list[Annotated[float, Field(gt=0)]] = Field(default_factory=list)


class GateConfig(BaseModel):
    """A trojaned model below `min_asr`, or more than `max_clean_drop` below its clean twin, is retrained
    with another seed up to `retries` times, then marked rejected (never silently kept)."""

    model_config = ConfigDict(extra="forbid")
    min_asr: float = Field(0.97, ge=0, le=1)
    max_clean_drop: float = Field(0.03, ge=0, le=1)
    retries: int = Field(2, ge=0)


class InsidiousConfig(BaseModel):
    """Evasive trojans start from their clean twin and are pulled toward its weights while they learn the trigger."""

    model_config = ConfigDict(extra="forbid")
    pull_weight: float = Field(0.05, ge=0)
    epochs: int | None = Field(None, ge=1, description="fine-tuning epochs (default: the zoo's training epochs)")


class ZooConfig(StableDump):
    model_config = ConfigDict(extra="forbid")
    added: ClassVar[tuple[str, ...]] = ("intensity", "stratify")
    name: str = "zoo"
    seed: int = Field(0, ge=0)
    data: DataConfig = Field(default_factory=DataConfig)
    archs: list[ArchConfig] = Field(default_factory=lambda: [ArchConfig()])
    models_per_arch: int = Field(64, ge=2)
    clean_fraction: float = Field(0.5, ge=0, le=1)
    test_fraction: float = Field(0.25, ge=0, lt=1, description="share of the zoo held out for meta-classifiers")
    stratify: bool = Field(False, description="hold out the same share of each trigger kind's trojans (with their "
                           "twins), so that every kind is scored on enough models")
    trojans: TrojanPlanConfig = Field(default_factory=TrojanPlanConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    insidious: InsidiousConfig = Field(default_factory=InsidiousConfig)
    intensity: IntensityConfig = Field(default_factory=IntensityConfig)
