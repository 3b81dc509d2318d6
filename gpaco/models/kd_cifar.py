"""The CIFAR networks of the knowledge-distillation tables (mdistiller's CIFAR-100 zoo), written for this library.

Every network keeps the original's module names, so a state dict saved by mdistiller (its
``ckpt_epoch_240.pth`` teachers hold it under ``"model"``) loads with ``strict=True``; the
classifier keeps the original's name too (``fc``, ``linear``, ``classifier`` or
``classifier.0``: :attr:`KDNet.head_name`). :mod:`gpaco.models.kd_zoo` registers them as
``--arch kd_<name>`` and maps their checkpoints onto gpaco's :class:`~gpaco.models.Classifier`.

==================  =====================================================================
network             layout (32x32 input)
==================  =====================================================================
KDResNet            resnet8x4/32x4 (widths 32/64/128/256), resnet20/32/56/110 (16/16/32/64):
                    3x3 stem, 3 stages of BasicBlocks, 1x1 conv + BN ``downsample`` shortcut
KDResNet50          ResNet-50 for CIFAR (the same network as ``resnet50_cifar``), head ``linear``
KDWideResNet        WRN-d-k, pre-activation blocks, 1x1 ``convShortcut`` where widths change
KDVGG               VGG-8 / VGG-13 with BN, five conv blocks, head ``classifier``
KDMobileNetV2       MobileNetV2 x0.5, expansion 6 (mdistiller's ``mobile_half``), head ``classifier.0``
KDShuffleNetV1      ShuffleNetV1, 3 groups, stage widths 240/480/960, head ``linear``
KDShuffleNetV2      ShuffleNetV2 x1 (116/232/464, 1024-d last conv), head ``linear``
==================  =====================================================================

Forward (``x`` [B, 3, 32, 32]):

* ``net(x)`` -> logits [B, C] (the original returns ``(logits, feats)``; we return the logits);
* ``net.forward_features(x)`` -> the last feature map [B, F, h, w], after its activation;
* ``net.forward_head(feat, pre_logits=True)`` -> the penultimate (pooled) feature [B, F],
  the original's ``feats["pooled_feat"]``.

Built with ``num_classes=0`` the classifier is an identity (no parameters, no keys) and
``net(x)`` returns the pooled feature [B, F]: that is the backbone gpaco's classifier wraps.

The original pools with a fixed window sized for 32-px inputs (``AvgPool2d(8)``, ``avg_pool2d(.., 4)``,
...); we pool globally, which is the same on 32-px inputs and also works on other sizes.
Initialisation follows each original (its ``init_classifier`` too, for the head gpaco adds).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cifar_resnet import SupConResNet

__all__ = [
    "KDNet", "KDResNet", "KDResNet50", "KDWideResNet", "KDVGG", "KDMobileNetV2", "KDShuffleNetV1", "KDShuffleNetV2",
    "channel_shuffle",
]


class KDNet(nn.Module):
    """What every zoo network has: a trunk, global average pooling and a classifier stored
    under the original's attribute name :attr:`head_name`.

    Subclasses build the trunk, set ``num_features`` and call :meth:`_set_head`.
    """

    head_name = "fc"  # the original's attribute of the classifier
    num_features: int
    num_classes: int

    def _set_head(self, num_classes: int) -> None:
        """Linear(num_features, num_classes) under :attr:`head_name`; an identity when ``num_classes == 0``."""
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        head: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        if num_classes:
            self.init_classifier(head)
        setattr(self, self.head_name, head)

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.head_name)

    def init_classifier(self, linear: nn.Linear) -> None:
        """The original's initialisation of its classifier (here: PyTorch's default, kept as built)."""

    def forward_features(self, x: Tensor) -> Tensor:  # pragma: no cover - every subclass has one
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """[B, F, h, w] -> pooled [B, F] (``pre_logits``) or logits [B, C]."""
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: Tensor) -> Tensor:
        """[B, 3, H, W] -> logits [B, C] (pooled features [B, F] when built with ``num_classes=0``)."""
        return self.forward_head(self.forward_features(x))


def _init_fan_out(module: nn.Module) -> None:
    """Conv weights ~ N(0, 2 / (k*k*out)) with zero bias, BN weight 1 / bias 0 (the init of
    mdistiller's ResNet, WRN, VGG and MobileNetV2; kaiming fan-out with the ReLU gain is the same law)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _init_linear_small(linear: nn.Linear) -> None:
    """N(0, 0.01) weights and zero bias (VGG and MobileNetV2 heads)."""
    nn.init.normal_(linear.weight, 0.0, 0.01)
    nn.init.zeros_(linear.bias)


# --------------------------------------------------------------------------------------------- ResNet


class _BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, then ReLU; ``downsample`` = 1x1 conv + BN (keys ``downsample.0/1``)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(out + skip)


class KDResNet(KDNet):
    """mdistiller's CIFAR ResNet of depth 6n+2: stem ``conv1``/``bn1`` (3 -> widths[0]) and stages
    ``layer1..3`` of n BasicBlocks with widths[1..3] channels (strides 1, 2, 2). -> [B, widths[3]]"""

    def __init__(self, depth: int, widths: Sequence[int], num_classes: int = 100) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"a BasicBlock CIFAR ResNet has depth 6n+2, got {depth}")
        if len(widths) != 4:
            raise ValueError(f"widths gives the stem and the 3 stages, got {list(widths)}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        inplanes = widths[0]
        stages = []
        for planes, stride in zip(widths[1:], (1, 2, 2)):
            blocks = [_BasicBlock(inplanes, planes, stride)] + [_BasicBlock(planes, planes) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            inplanes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.num_features = inplanes
        _init_fan_out(self)
        self._set_head(num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


class KDResNet50(KDNet, SupConResNet):
    """mdistiller's ``ResNet50`` for CIFAR: 3x3 stride-1 stem, no max-pool, Bottleneck [3, 4, 6, 3],
    1x1 conv + BN ``shortcut``. The trunk is our ``resnet50_cifar`` (same modules and key names);
    only the classifier's name, ``linear``, is mdistiller's. KDNet comes first in the bases, so
    ``forward`` is KDNet's (logits), not SupConResNet's (pooled features). -> [B, 2048]"""

    head_name = "linear"

    def __init__(self, num_classes: int = 100) -> None:
        SupConResNet.__init__(self, (3, 4, 6, 3))  # kaiming fan-out convs, BN 1/0: the original's init
        self._set_head(num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


# ---------------------------------------------------------------------------------------- WideResNet


class _WRNBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3. Where the width changes, the
    shortcut is the 1x1 ``convShortcut`` applied to the pre-activated input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        # the original's attribute name (it is in the checkpoint keys)
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride=stride,
                                                                     bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return out + (x if self.convShortcut is None else self.convShortcut(act))


class _WRNStage(nn.Module):
    """The original's ``NetworkBlock``: its blocks live under ``layer`` (keys ``blockK.layer.i.*``)."""

    def __init__(self, num_blocks: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[_WRNBlock(in_planes if i == 0 else out_planes, out_planes,
                                               stride if i == 0 else 1) for i in range(num_blocks)])

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class KDWideResNet(KDNet):
    """WRN-depth-widen (depth 6n+4): ``conv1`` 3 -> 16, stages ``block1..3`` of n blocks with
    16k/32k/64k channels (strides 1, 2, 2), then ``bn1`` + ReLU. -> [B, 64k]"""

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"a WideResNet has depth 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.block1 = _WRNStage(n, widths[0], widths[1], 1)
        self.block2 = _WRNStage(n, widths[1], widths[2], 2)
        self.block3 = _WRNStage(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.num_features = widths[3]
        _init_fan_out(self)
        self._set_head(num_classes)

    def init_classifier(self, linear: nn.Linear) -> None:
        nn.init.zeros_(linear.bias)  # the weight keeps PyTorch's default, as in the original

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return F.relu(self.bn1(x))


# ----------------------------------------------------------------------------------------------- VGG

VGG_CONFIGS = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
}


def _vgg_block(widths: Sequence[int], in_channels: int) -> nn.Sequential:
    """[conv3x3 (with bias), BN, ReLU] per width, without the last ReLU (keys ``3i`` conv, ``3i+1`` BN)."""
    layers: List[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(in_channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        in_channels = w
    return nn.Sequential(*layers[:-1])


class KDVGG(KDNet):
    """VGG with BN for CIFAR: conv blocks ``block0..4``, each followed by ReLU; 2x2 max-pools after
    blocks 0-2 (and after block 3 only on 64-px inputs, as the original), global average pool,
    ``classifier`` Linear(512, C). -> [B, 512]"""

    head_name = "classifier"

    def __init__(self, cfg: Sequence[Sequence[int]], num_classes: int = 100) -> None:
        super().__init__()
        if len(cfg) != 5:
            raise ValueError(f"a VGG config has 5 blocks, got {len(cfg)}")
        in_channels = 3
        for i, widths in enumerate(cfg):
            setattr(self, f"block{i}", _vgg_block(widths, in_channels))
            in_channels = widths[-1]
        self.num_features = in_channels
        _init_fan_out(self)
        self._set_head(num_classes)

    def init_classifier(self, linear: nn.Linear) -> None:
        _init_linear_small(linear)

    def forward_features(self, x: Tensor) -> Tensor:
        pool_block3 = x.shape[2] == 64  # the original's Tiny-ImageNet rule
        for i in range(5):
            x = F.relu(getattr(self, f"block{i}")(x))
            if i < 3 or (i == 3 and pool_block3):
                x = F.max_pool2d(x, 2, 2)
        return x


# --------------------------------------------------------------------------------------- MobileNetV2


def _conv_bn_relu(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(oup),
                         nn.ReLU(inplace=True))


class _InvertedResidual(nn.Module):
    """``conv``: 1x1 expand (always present, also for t = 1) - BN - ReLU - 3x3 depthwise - BN - ReLU -
    1x1 project - BN (keys ``conv.0/1/3/4/6/7``); identity skip when stride 1 and inp == oup."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# (expansion t or None for "the net's T", channels c, blocks n, first stride s)
_MV2_SETTING: Tuple[Tuple[Optional[int], int, int, int], ...] = (
    (1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1), (None, 160, 3, 2),
    (None, 320, 1, 1),
)


class KDMobileNetV2(KDNet):
    """MobileNetV2 for CIFAR with expansion ``T`` and width ``width_mult``: ``conv1`` 3x3 stride-2
    stem, 7 stages ``blocks.0..6`` of inverted residuals, ``conv2`` 1x1 to 1280 channels (more only
    when width_mult > 1), ``classifier.0`` Linear. mdistiller's ``MobileNetV2`` is T 6, width 0.5.
    -> [B, 1280]"""

    head_name = "classifier"

    def __init__(self, T: int = 6, width_mult: float = 0.5, num_classes: int = 100) -> None:
        super().__init__()
        channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, channels, 3, 2)
        stages = []
        for t, c, n, s in _MV2_SETTING:
            out = int(c * width_mult)
            layers = []
            for i in range(n):
                layers.append(_InvertedResidual(channels, out, s if i == 0 else 1, T if t is None else t))
                channels = out
            stages.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(stages)
        self.num_features = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(channels, self.num_features, 1, 1)
        _init_fan_out(self)
        self._set_head(num_classes)

    def _set_head(self, num_classes: int) -> None:
        # the original wraps its Linear in a Sequential (keys ``classifier.0.*``)
        super()._set_head(num_classes)
        if num_classes:
            self.classifier = nn.Sequential(self.classifier)

    def init_classifier(self, linear: nn.Linear) -> None:
        _init_linear_small(linear)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        return self.conv2(x)


# --------------------------------------------------------------------------------------- ShuffleNets


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """[B, C, H, W] -> the channels regrouped as [g, C/g] -> [C/g, g] (ShuffleNet's shuffle)."""
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class _ShuffleV1Block(nn.Module):
    """1x1 group conv (1 group when the input is the 24-channel stem) - BN - ReLU - shuffle -
    3x3 depthwise - BN - ReLU - 1x1 group conv - BN; stride 2: concat with a 3x3 avg-pooled
    input, stride 1: add it; then ReLU."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        mid = out_planes // 4
        self.stride = stride
        self.first_groups = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x: Tensor) -> Tensor:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1))
        return F.relu(out + x)


class KDShuffleNetV1(KDNet):
    """ShuffleNetV1 for CIFAR: ``conv1`` 1x1 3 -> 24 + ``bn1``, stages ``layer1..3`` (each starts
    with a stride-2 block whose concat shortcut supplies the input channels), ``linear``. -> [B, 960]"""

    head_name = "linear"

    def __init__(self, out_planes: Sequence[int] = (240, 480, 960), num_blocks: Sequence[int] = (4, 8, 4),
                 groups: int = 3, num_classes: int = 100) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_planes = 24
        stages = []
        for planes, n in zip(out_planes, num_blocks):
            blocks = [_ShuffleV1Block(in_planes, planes - in_planes, 2, groups)]
            blocks += [_ShuffleV1Block(planes, planes, 1, groups) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.num_features = in_planes
        self._set_head(num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


class _ShuffleV2Block(nn.Module):
    """Keeps the first half of the channels; the second half goes 1x1 - BN - ReLU - 3x3 depthwise -
    BN - 1x1 - BN - ReLU; concat, shuffle (2 groups)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.split = channels // 2
        c = channels - self.split
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> Tensor:
        keep, x = x[:, :self.split], x[:, self.split:]
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn3(self.conv3(self.bn2(self.conv2(out)))))
        return channel_shuffle(torch.cat([keep, out], 1), 2)


class _ShuffleV2Down(nn.Module):
    """Stride-2 unit. Left: 3x3 depthwise s2 - BN - 1x1 - BN - ReLU; right: 1x1 - BN - ReLU -
    3x3 depthwise s2 - BN - 1x1 - BN - ReLU; each gives out/2 channels; concat, shuffle."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        right = F.relu(self.bn5(self.conv5(right)))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class KDShuffleNetV2(KDNet):
    """ShuffleNetV2 for CIFAR: ``conv1`` 1x1 3 -> 24 + ``bn1``, stages ``layer1..3`` (a stride-2
    unit, then n basic units), ``conv2`` 1x1 + ``bn2`` + ReLU, ``linear``. mdistiller's
    ``ShuffleV2`` is size 1: widths 116/232/464, 1024, blocks 3/7/3. -> [B, 1024]"""

    head_name = "linear"

    def __init__(self, out_channels: Sequence[int] = (116, 232, 464, 1024), num_blocks: Sequence[int] = (3, 7, 3),
                 num_classes: int = 100) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_channels = 24
        stages = []
        for c, n in zip(out_channels[:3], num_blocks):
            stages.append(nn.Sequential(_ShuffleV2Down(in_channels, c), *[_ShuffleV2Block(c) for _ in range(n)]))
            in_channels = c
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(in_channels, out_channels[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.num_features = out_channels[3]
        self._set_head(num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return F.relu(self.bn2(self.conv2(x)))
