"""Pre-activation ResNet-18 for 32x32 inputs (He et al. 2016), as in BackdoorBench.

Every ReLU is its own nn.ReLU module, one per call site, not a functional `F.relu`: attribution methods that
override the backward pass of activation modules (captum's DeepLIFT, guided backprop, deconvolution) and tools
that hook activations (attention distillation, quantization) only see modules. ReLU has no parameters or buffers,
so state dicts are the same as with functional calls and stored models load unchanged.
"""

from torch import nn
from torch.nn import functional as F

from . import Normalize, image_hw, register


class PreActBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(c_in), nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(c_out), nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if stride != 1 or c_in != c_out else None

    def forward(self, x):
        out = self.relu1(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.relu2(self.bn2(out)))
        return out + skip


class PreActResNet(nn.Module):
    def __init__(self, in_channels, num_classes, mean, std, blocks=(2, 2, 2, 2), width=64):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.stem = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        layers, c_in = [], width
        for i, n in enumerate(blocks):
            c_out = width * 2**i
            for j in range(n):
                layers.append(PreActBlock(c_in, c_out, 2 if (j == 0 and i > 0) else 1))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.bn, self.relu = nn.BatchNorm2d(c_in), nn.ReLU()
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x):
        out = self.layers(self.stem(self.normalize(x)))
        out = F.adaptive_avg_pool2d(self.relu(self.bn(out)), 1).flatten(1)
        return self.head(out)


@register("resnet18")
def resnet18(in_channels: int, num_classes: int, image_size, mean, std, width: int = 64) -> nn.Module:
    """Any image size, square or not (`image_size`: H or [H, W]): global average pooling before the head."""
    image_hw(image_size)  # a malformed size is refused here, as by the other architectures
    return PreActResNet(in_channels, num_classes, mean, std, (2, 2, 2, 2), width)
