"""A fast CIFAR network after airbench (Jordan 2024): a frozen patch-whitening 2x2 stem, then three
conv-pool-BN-GELU groups, max-pool and a scaled linear head. `width` scales all channel counts, so the
same design serves the CPU (width 0.5) and a GPU (width 1, airbench94's 64/256/256)."""

import torch
from torch import nn

from . import Normalize, image_hw, register

AIRNET_MIN_SIZE = 9  # a 2x2 unpadded stem (-1 px), then three 2x2 max-pools


class ConvGroup(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding="same", bias=False)
        self.pool = nn.MaxPool2d(2)
        self.bn1 = nn.BatchNorm2d(c_out, momentum=0.4)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding="same", bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, momentum=0.4)
        self.act = nn.GELU()

    def forward(self, x):
        x = self.act(self.bn1(self.pool(self.conv1(x))))
        return self.act(self.bn2(self.conv2(x)))


class AirNet(nn.Module):
    def __init__(self, in_channels, num_classes, mean, std, widths=(64, 256, 256)):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.whiten = nn.Conv2d(in_channels, 2 * in_channels * 4, 2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.act = nn.GELU()
        groups, c_in = [], self.whiten.out_channels
        for w in widths:
            groups.append(ConvGroup(c_in, w))
            c_in = w
        self.groups = nn.Sequential(*groups)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(c_in, num_classes, bias=False)
        self.head_scale = 1 / 9

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the stem to whiten 2x2 patches of the training images (its filters are then kept fixed)."""
        x = self.normalize(x[:5000].to(self.whiten.weight))
        c = x.shape[1]
        patches = x.unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, c * 4).double()
        cov = torch.cov(patches.T)
        eigvals, eigvecs = torch.linalg.eigh(cov)
        w = (eigvecs.T / (eigvals + eps).sqrt().unsqueeze(1)).view(c * 4, c, 2, 2).float()
        self.whiten.weight.copy_(torch.cat([w, -w]))
        self.whiten.bias.zero_()

    def forward(self, x):
        x = self.act(self.whiten(self.normalize(x)))
        x = self.pool(self.groups(x)).flatten(1)
        return self.head(x) * self.head_scale


@register("airnet")
def airnet(in_channels: int, num_classes: int, image_size, mean, std, width: float = 1.0) -> nn.Module:
    """`image_size` (H, or [H, W]; non-square is fine) is checked only against the smallest size the network
    can take: the 2x2 stem takes one pixel off and three groups halve the map, so each side needs >= 9 px."""
    h, w = image_hw(image_size)
    if min(h, w) < AIRNET_MIN_SIZE:
        raise TypeError(f"airnet needs images of at least {AIRNET_MIN_SIZE}x{AIRNET_MIN_SIZE} pixels, got {h}x{w}")
    widths = tuple(max(8, int(round(c * width))) for c in (64, 256, 256))
    return AirNet(in_channels, num_classes, mean, std, widths)
