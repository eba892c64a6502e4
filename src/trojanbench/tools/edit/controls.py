"""Controls for tracing: the same editors applied at a layer they choose themselves, ignoring the traced one.
If `rome@last-layer` or `rome@random-layer` does as well as `rome`, tracing added nothing on that board."""

from __future__ import annotations

import torch
from torch import nn

from ..locate import traceable_layers
from . import EditInputs, model_seed, register
from .finetune import FineTuneLayer
from .rome import Rome


def last_layer(model: nn.Module) -> str:
    """The last editable layer: the classifier head of every architecture here."""
    return traceable_layers(model)[-1]


def random_layer(model: nn.Module, seed: int) -> str:
    """A uniformly drawn editable layer (the traced one included: this is a blind choice), drawn from `seed`
    and the model's weights, so every model of a zoo gets its own draw."""
    layers = traceable_layers(model)
    g = torch.Generator().manual_seed(model_seed(model, seed) % 2**63)
    return layers[int(torch.randint(len(layers), (1,), generator=g))]


class AtLastLayer:
    is_baseline = True
    uses_trace = False

    def layer_for(self, model: nn.Module, inputs: EditInputs) -> str:
        return last_layer(model)


class AtRandomLayer:
    is_baseline = True
    uses_trace = False

    def layer_for(self, model: nn.Module, inputs: EditInputs) -> str:
        return random_layer(model, inputs.seed)


@register("rome@last-layer")
class RomeAtLastLayer(AtLastLayer, Rome):
    """ROME at the classifier head, whatever the trace says."""

    fidelity = "baseline: ROME (as `rome`) at the last layer instead of the traced one, a control for tracing"


@register("rome@random-layer")
class RomeAtRandomLayer(AtRandomLayer, Rome):
    """ROME at a random editable layer, whatever the trace says."""

    fidelity = "baseline: ROME (as `rome`) at a random layer (seeded per model) instead of the traced one, a control for tracing"


@register("finetune-layer@last-layer")
class FineTuneLastLayer(AtLastLayer, FineTuneLayer):
    """Fine-tune the classifier head alone on the edit's inputs."""

    fidelity = "baseline: `finetune-layer` at the last layer (the classifier head) instead of the traced one"


@register("finetune-layer@random-layer")
class FineTuneRandomLayer(AtRandomLayer, FineTuneLayer):
    """Fine-tune a random editable layer alone on the edit's inputs."""

    fidelity = "baseline: `finetune-layer` at a random layer (seeded per model) instead of the traced one"
