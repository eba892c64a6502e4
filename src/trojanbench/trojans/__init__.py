"""Triggers (what the trojan responds to) and poisoning (how it gets into a model)."""

from . import adaptive, text  # noqa: F401  (register the adaptive-blend and adaptive-patch, and the text triggers)
from .poison import PoisonedData, PoisonSpec, TrojanSpec, poison_dataset
from .triggers import TRIGGERS, Trigger, TriggerSpec, make_trigger, random_trigger

__all__ = ["TRIGGERS", "Trigger", "TriggerSpec", "make_trigger", "random_trigger", "PoisonSpec", "TrojanSpec",
           "PoisonedData", "poison_dataset"]
