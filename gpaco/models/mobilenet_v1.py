"""MobileNetV1 (Howard et al. 2017), the ImageNet student of the knowledge-distillation tables
(ResNet-50 -> MobileNetV1), in mdistiller's module layout.

``model``: a Sequential of 14 units, ``model.0`` = 3x3 stride-2 conv (3 -> 32) + BN + ReLU and
``model.1..13`` = 3x3 depthwise conv + BN + ReLU + 1x1 conv + BN + ReLU (keys ``model.i.0/1/3/4``);
global average pool; ``fc`` Linear(1024, C). The original ends ``model`` with a parameter-free
``AvgPool2d(7)`` (global at 224 px); we pool globally, so smaller inputs work too.
No custom initialisation: PyTorch's defaults, as the original.
"""
from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from .kd_cifar import KDNet

__all__ = ["MobileNetV1", "MOBILENET_V1_UNITS"]

# (input channels, output channels, depthwise stride) of the 13 depthwise-separable units
MOBILENET_V1_UNITS = (
    (32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2),
    (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 1024, 2), (1024, 1024, 1),
)


def _separable(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp), nn.ReLU(inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True),
    )


class MobileNetV1(KDNet):
    """[B, 3, H, W] -> logits [B, C] (pooled [B, 1024] with ``num_classes=0``); H, W >= 32."""

    head_name = "fc"

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True))
        self.model = nn.Sequential(stem, *[_separable(i, o, s) for i, o, s in MOBILENET_V1_UNITS])
        self.num_features = 1024
        self._set_head(num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """[B, 3, H, W] -> [B, 1024, H/32, W/32]"""
        return self.model(x)
