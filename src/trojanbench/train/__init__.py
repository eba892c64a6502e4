"""Training and evaluation. One training loop (`train.loop.run_steps`) runs every optimiser step in the package:
the plain trainer (`train_model`), the many-models trainer every zoo executor goes through
(`train.batched.train_models_batched`), the repairers' `fit`, the studies' and the fine-tuning editor's loops."""

from .evaluate import attack_success_rate, clean_accuracy, predict
from .single import train_model

# The trainer format version: bump it whenever a change in this package changes the weights that training
# produces for the same job (seeds, batch order, augmentation draws, kernels, optimiser arithmetic). It is
# part of every zoo's cache key and is written to zoo.json and each model card, so a zoo built by another
# trainer is refused instead of silently reused or mixed with new models.
#   1: (unversioned) one augmentation generator shared by a whole batched chunk
#   2: each model draws its batch order and augmentation from its own seed; the batched trainer computes
#      convolutions without oneDNN so a model's weights do not depend on the chunk it was trained in
TRAINER_VERSION = 2

__all__ = ["TRAINER_VERSION", "attack_success_rate", "clean_accuracy", "predict", "train_model"]
