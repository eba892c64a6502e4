"""Training and evaluation: one plain, fast loop over tensors (and, later, many models at once)."""

from .evaluate import attack_success_rate, clean_accuracy, predict
from .single import train_model

__all__ = ["train_model", "predict", "clean_accuracy", "attack_success_rate"]
