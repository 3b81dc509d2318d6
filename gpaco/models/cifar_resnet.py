"""The 32x32-input ResNets of the CIFAR recipes, written for this library.

* ``resnet32`` / ``resnet20`` / ``resnet8``: the LDAM-style family (3 stages of
  BasicBlocks, 16/32/64 channels, parameter-free "option A" shortcut that subsamples
  and zero-pads channels, ``kaiming_normal_`` init). PaCo CIFAR uses ResNet-32 (64-d).
* ``resnet50_cifar``: SupCon-style ResNet-50 (3x3 stride-1 stem, no max-pool,
  Bottleneck [3, 4, 6, 3], 2048-d); GPaCo CIFAR uses it.

Every module maps images [B, 3, H, W] to pooled features [B, F] and exposes ``num_features``.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CifarResNet", "SupConResNet", "resnet8", "resnet20", "resnet32", "resnet50_cifar"]


class _PadShortcut(nn.Module):
    """Option-A shortcut: take every other pixel, zero-pad the new channels equally on
    both sides (no parameters, so the block's skip path stays an identity-like map)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = planes - in_planes
        self.pad_lo, self.pad_hi = extra // 2, extra - extra // 2

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_lo, self.pad_hi))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = _PadShortcut(in_planes, planes, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """LDAM-style CIFAR ResNet (6n+2 layers) without its classifier. [B,3,H,W] -> [B,64]"""

    def __init__(self, blocks_per_stage: int, widths: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        stages: List[nn.Module] = []
        for i, planes in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(blocks_per_stage):
                blocks.append(_BasicBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.num_features = in_planes
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)  # LDAM's init (fan_in, ReLU gain)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's map [B, 64, H/4, W/4] before pooling (timm's name; ResLT's head reads it)."""
        out = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(out)))

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.forward_features(x), 1), 1)


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        if stride != 1 or in_planes != out_planes:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class SupConResNet(nn.Module):
    """SupCon-style ResNet for 32x32 inputs: 3x3 stride-1 stem, no max-pool. [B,3,H,W] -> [B,2048]"""

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        stages: List[nn.Module] = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(n):
                blocks.append(_Bottleneck(in_planes, planes, (1 if i == 0 else 2) if j == 0 else 1))
                in_planes = planes * _Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = in_planes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


def resnet32() -> CifarResNet:
    """ResNet-32 (5 blocks per stage), PaCo's CIFAR backbone. 64-d."""
    return CifarResNet(5)


def resnet20() -> CifarResNet:
    """ResNet-20 (3 blocks per stage). 64-d."""
    return CifarResNet(3)


def resnet8() -> CifarResNet:
    """ResNet-8 (1 block per stage): tiny, for CPU demos and tests. 64-d."""
    return CifarResNet(1)


def resnet50_cifar() -> SupConResNet:
    """SupCon-style ResNet-50, GPaCo's CIFAR backbone. 2048-d."""
    return SupConResNet((3, 4, 6, 3))
