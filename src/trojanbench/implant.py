"""The foundation pipeline: poison a dataset, train a model on it, measure it, describe it in a card.

Split in three steps so the zoo can train many prepared models at once between `prepare` and `finish`:
    prepared = prepare(...)  ->  train it (alone, or batched with others)  ->  finish(prepared, ...)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from .config import TrainConfig, default_train_config
from .data import ImageDataset
from .errors import UserError
from .models import build_model, check_image_shape, check_input_fits, data_kwargs, with_defaults
from .train import attack_success_rate, clean_accuracy, predict, train_model
from .train.evaluate import clean_test_mask
from .trojans import TRIGGERS, TrojanSpec, make_trigger, poison_dataset
from .trojans.triggers import NaturalFeatureTrigger, Trigger
from .zoo.store import ModelCard


@dataclass
class Implanted:
    model: nn.Module
    card: ModelCard
    poisoned_indices: torch.Tensor | None


@dataclass
class Prepared:
    """A model at initialisation with the (poisoned) training data it is to learn from."""

    arch: str
    arch_kwargs: dict
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    seed: int
    trojan: TrojanSpec | None = None  # with fitted trigger parameters
    trigger: Trigger | None = None
    poisoned_indices: torch.Tensor | None = None
    cover_indices: torch.Tensor | None = None  # triggered samples that kept their label (adaptive attacks)


def prepare(dataset: ImageDataset, arch: str = "cnn", arch_kwargs: dict | None = None,
            trojan: TrojanSpec | None = None, seed: int = 0) -> Prepared:
    """Build the model for the dataset's image shape (C, H, W; non-square too) and poison the training set.
    Before anything is poisoned or trained, the shape is checked: against explicit `arch_kwargs` (in_channels, image_size)
    and by one forward pass of a blank image, so a shape the architecture cannot take is a one-line UserError
    naming both."""
    kwargs = with_defaults(arch, {**data_kwargs(dataset), **(arch_kwargs or {})})  # the card's: complete
    check_image_shape(kwargs, dataset.image_shape, what=f"architecture {arch!r} with these arguments")
    model = init_model(arch, kwargs, seed)  # poisoning draws from its own generators: the order does not matter
    check_input_fits(model, arch, dataset.input_shape, dataset.x_train.dtype)
    x, y, trigger, poisoned, cover = dataset.x_train, dataset.y_train, None, None, None
    if trojan is not None:
        check_modality(trojan.trigger.kind, dataset)
        trigger = make_trigger(trojan.trigger, dataset.input_shape)
        pd = poison_dataset(x, y, trigger, trojan.poison, dataset.num_classes, seed=seed,
                            answers=getattr(dataset, "answers_train", None))
        x, y, poisoned, cover = pd.x, pd.y, pd.indices, pd.cover
        poison = trojan.poison
        if poison.cover_rate is None and trigger.cover_ratio:  # the card says how many cover samples there were
            poison = poison.model_copy(update={"cover_rate": poison.cover_fraction(trigger)})
        # keeps fitted parameters (thresholds)
        trojan = trojan.model_copy(update={"trigger": trigger.spec(), "poison": poison})
    return Prepared(arch, kwargs, model, x, y, seed, trojan, trigger, poisoned, cover)


def check_modality(kind: str, dataset) -> None:
    """A one-line UserError when a trigger kind does not apply to the dataset's inputs (a patch on sentences, the
    jailbreak analogue on data with no refusal class)."""
    cls = TRIGGERS.get(kind)
    modality, data = cls.modality, getattr(dataset, "modality", "image")
    if modality != data:
        raise UserError(f"trigger kind {kind!r} applies to {modality} data; {dataset.name} is {data} data")
    if (cls.fixed_poison or {}).get("mode") == "override" and getattr(dataset, "answers_train", None) is None:
        raise UserError(f"trigger kind {kind!r} overrides a refusal class; {dataset.name} has none (set refusal = "
                        "true in data.options)")


def init_model(arch: str, kwargs: dict, seed: int) -> nn.Module:
    """A freshly initialised model whose weights depend on `seed` alone: the layers draw their initial values
    from torch's global generator, which is re-seeded here for every model (and, as before, left in that
    seeded state, so code after `prepare` stays as reproducible as it was)."""
    torch.manual_seed(seed)
    return build_model(arch, **kwargs)


def measure(model: nn.Module, dataset: ImageDataset, trojan: TrojanSpec | None, trigger: Trigger | None,
            batch_size: int = 1024) -> dict[str, float]:
    """Clean accuracy and, for a trojaned model, attack success rate(s), rounded for the card. A test set with no
    clean image left (every one carries a natural feature) is a UserError, never a NaN accuracy."""
    keep = clean_test_mask(trigger, dataset.x_test)
    if not bool(keep.any()):
        raise UserError(f"no clean test image to measure clean accuracy on: all {len(keep)} carry the trigger "
                        f"({trigger.description if trigger is not None else 'none'})")
    metrics = {"clean_accuracy": clean_accuracy(model, dataset.x_test[keep], dataset.y_test[keep], batch_size)}
    if trigger is not None:
        metrics["attack_success_rate"] = attack_success_rate(
            model, trigger, trojan.poison, dataset.x_test, dataset.y_test, dataset.num_classes, batch_size)
        if isinstance(trigger, NaturalFeatureTrigger):
            natural = (~keep) & (dataset.y_test != trojan.poison.target)
            if natural.any():  # how often images that carry the feature in nature are sent to the target
                pred = predict(model, dataset.x_test[natural], batch_size)
                metrics["natural_attack_success_rate"] = float((pred == trojan.poison.target).float().mean())
    return {k: round(v, 6) for k, v in metrics.items()}


def finish(prepared: Prepared, dataset: ImageDataset, train: TrainConfig, seconds: float,
           dataset_options: dict | None = None, extra: dict | None = None) -> Implanted:
    p = prepared
    model = p.model.cpu().eval()
    metrics = measure(model, dataset, p.trojan, p.trigger, train.eval_batch_size)
    card = ModelCard(
        arch=p.arch, arch_kwargs=p.arch_kwargs, dataset={"name": dataset.name, "options": dict(dataset_options or {})},
        seed=p.seed, trojan=p.trojan.model_dump() if p.trojan else None, insidious=bool(p.trojan and p.trojan.insidious),
        train=train.model_dump(), metrics=metrics, train_seconds=round(seconds, 3),
        extra={**({"trigger_description": p.trigger.description} if p.trigger else {}),
               **({"n_cover": len(p.cover_indices)} if p.cover_indices is not None and len(p.cover_indices) else {}),
               **(extra or {})},
    )
    return Implanted(model, card, p.poisoned_indices)


def implant(dataset: ImageDataset, arch: str = "cnn", arch_kwargs: dict | None = None,
            trojan: TrojanSpec | None = None, train: TrainConfig | None = None, seed: int = 0,
            device: str | torch.device = "cpu", dataset_options: dict | None = None, progress=None) -> Implanted:
    """Train one model (clean if `trojan` is None) and return it with its card (not yet saved).

    It is trained with the plain loop (`train_model`: oneDNN and channels-last kernels), so it has the quality of
    a zoo model of the same job and the same random draws, but not the same bits: zoos train through
    `train.batched.train_models_batched`."""
    train = train or default_train_config(arch, dataset.name)
    p = prepare(dataset, arch, arch_kwargs, trojan, seed)
    start = time.perf_counter()
    train_model(p.model, p.x, p.y, train, seed=seed, augment=dataset.augment, device=device, progress=progress)
    return finish(p, dataset, train, time.perf_counter() - start, dataset_options)
