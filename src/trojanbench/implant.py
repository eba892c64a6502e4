"""The foundation pipeline: poison a dataset, train a model on it, measure it, describe it in a card."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from .config import TrainConfig, default_train_config
from .data import ImageDataset
from .models import build_model, data_kwargs
from .train import attack_success_rate, clean_accuracy, predict, train_model
from .train.evaluate import clean_test_mask
from .trojans import TrojanSpec, make_trigger, poison_dataset
from .trojans.triggers import NaturalFeatureTrigger
from .zoo.store import ModelCard


@dataclass
class Implanted:
    model: nn.Module
    card: ModelCard
    poisoned_indices: torch.Tensor | None


def implant(dataset: ImageDataset, arch: str = "cnn", arch_kwargs: dict | None = None,
            trojan: TrojanSpec | None = None, train: TrainConfig | None = None, seed: int = 0,
            device: str | torch.device = "cpu", dataset_options: dict | None = None, progress=None) -> Implanted:
    """Train one model (clean if `trojan` is None) and return it with its card (not yet saved)."""
    train = train or default_train_config(arch, dataset.name)
    kwargs = {**data_kwargs(dataset), **(arch_kwargs or {})}
    x, y, trigger, poisoned = dataset.x_train, dataset.y_train, None, None
    if trojan is not None:
        trigger = make_trigger(trojan.trigger, dataset.image_shape)
        pd = poison_dataset(x, y, trigger, trojan.poison, dataset.num_classes, seed=seed)
        x, y, poisoned = pd.x, pd.y, pd.indices
        trojan = trojan.model_copy(update={"trigger": trigger.spec()})  # keeps fitted parameters (thresholds)
    torch.manual_seed(seed)
    model = build_model(arch, **kwargs)
    start = time.perf_counter()
    train_model(model, x, y, train, seed=seed, augment=dataset.augment, device=device, progress=progress)
    seconds = time.perf_counter() - start
    keep = clean_test_mask(trigger, dataset.x_test)
    metrics = {"clean_accuracy": clean_accuracy(model, dataset.x_test[keep], dataset.y_test[keep], train.eval_batch_size)}
    if trigger is not None:
        metrics["attack_success_rate"] = attack_success_rate(
            model, trigger, trojan.poison, dataset.x_test, dataset.y_test, dataset.num_classes, train.eval_batch_size)
        if isinstance(trigger, NaturalFeatureTrigger):
            natural = (~keep) & (dataset.y_test != trojan.poison.target)
            if natural.any():  # how often images that carry the feature in nature are sent to the target
                pred = predict(model, dataset.x_test[natural], train.eval_batch_size)
                metrics["natural_attack_success_rate"] = float((pred == trojan.poison.target).float().mean())
    card = ModelCard(
        arch=arch, arch_kwargs=kwargs, dataset={"name": dataset.name, "options": dict(dataset_options or {})},
        seed=seed, trojan=trojan.model_dump() if trojan else None, insidious=bool(trojan and trojan.insidious),
        train=train.model_dump(), metrics={k: round(v, 6) for k, v in metrics.items()},
        train_seconds=round(seconds, 3), extra={"trigger_description": trigger.description} if trigger else {},
    )
    return Implanted(model.cpu().eval(), card, poisoned)
