from torch import nn

from . import Normalize, image_hw, register


@register("cnn")
def cnn(in_channels: int, num_classes: int, image_size, mean, std, width: int = 32, depth: int = 3) -> nn.Module:
    """`depth` conv-BN-ReLU blocks; channels double (up to 4x `width`) and the map halves while both its sides
    are larger than 4; then global average pooling and a linear head. `image_size`: H, or [H, W]."""
    layers: list[nn.Module] = [Normalize(mean, std)]
    c_in, size = in_channels, min(image_hw(image_size))
    for i in range(depth):
        c_out = width * 2 ** min(i, 2)
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        if size > 4:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)
