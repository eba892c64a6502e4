from torch import nn

from . import Normalize, image_hw, register


@register("mlp")
def mlp(in_channels: int, num_classes: int, image_size, mean, std, width: int = 256, depth: int = 2) -> nn.Module:
    """`depth` hidden layers of `width` units with ReLU, on images of `image_size` (H, or [H, W])."""
    layers: list[nn.Module] = [Normalize(mean, std), nn.Flatten()]
    h, w = image_hw(image_size)
    d_in = in_channels * h * w
    for _ in range(depth):
        layers += [nn.Linear(d_in, width), nn.ReLU()]
        d_in = width
    layers.append(nn.Linear(d_in, num_classes))
    return nn.Sequential(*layers)
