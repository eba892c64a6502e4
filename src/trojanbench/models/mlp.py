from torch import nn

from ..errors import UserError
from . import Normalize, image_hw, register

INITS = ("default", "kaiming-normal")


@register("mlp")
def mlp(in_channels: int, num_classes: int, image_size, mean, std, width: int = 256, depth: int = 2,
        init: str = "default") -> nn.Module:
    """`depth` hidden layers of `width` units with ReLU, on images of `image_size` (H, or [H, W]).

    `init`: "default" is torch's Linear init; "kaiming-normal" draws every weight from N(0, 2 / fan_in) (He et al.
    2015) and zeroes the biases, so the network is positively homogeneous (the supermask study's theta0). Both draw
    from torch's global generator, which the zoo seeds per model: the card's seed gives the initial weights back."""
    if init not in INITS:
        raise UserError(f"unknown mlp init {init!r}; choose one of {', '.join(INITS)}")
    layers: list[nn.Module] = [Normalize(mean, std), nn.Flatten()]
    h, w = image_hw(image_size)
    d_in = in_channels * h * w
    for _ in range(depth):
        layers += [nn.Linear(d_in, width), nn.ReLU()]
        d_in = width
    layers.append(nn.Linear(d_in, num_classes))
    if init == "kaiming-normal":
        for layer in layers:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)
