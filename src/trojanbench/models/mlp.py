from torch import nn

from . import Normalize, register


@register("mlp")
def mlp(in_channels: int, num_classes: int, image_size: int, mean, std, width: int = 256, depth: int = 2) -> nn.Module:
    """`depth` hidden layers of `width` units with ReLU."""
    layers: list[nn.Module] = [Normalize(mean, std), nn.Flatten()]
    d_in = in_channels * image_size * image_size
    for _ in range(depth):
        layers += [nn.Linear(d_in, width), nn.ReLU()]
        d_in = width
    layers.append(nn.Linear(d_in, num_classes))
    return nn.Sequential(*layers)
