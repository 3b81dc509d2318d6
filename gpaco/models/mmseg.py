"""The segmentation networks of the paper's rows, as mmsegmentation 0.x builds them, in plain torch.

The original trained its segmentation rows with mmseg 0.17: ResNetV1c encoders with
DeepLabV3+ (``DepthwiseSeparableASPPHead``) and Swin encoders with ``UPerHead``, each with
an auxiliary ``FCNHead`` (docs/method.md#segmentation-models). These modules rebuild them
without mmcv, with mmseg's parameter names inside each module, so that an mmseg
checkpoint converts key for key (:func:`from_mmseg_state_dict`).

================================  =======================================================
mmseg module                      here
================================  =======================================================
``ConvModule`` (conv-BN-ReLU)     :class:`ConvModule`: ``conv`` (no bias), ``bn``
``DepthwiseSeparableConvModule``  :class:`DepthwiseSeparableConvModule`: ``depthwise_conv``
                                  and ``pointwise_conv``, each a ConvModule (BN + ReLU)
``ResNetV1c``                     :class:`ResNetV1c`: deep stem ``stem.{0,3,6}`` convs
                                  (32, 32, 64 channels), plain strided 1x1 shortcut,
                                  ``strides=(1,2,1,1)``, ``dilations=(1,1,2,4)`` (output
                                  stride 8), ``contract_dilation`` (first block of a
                                  dilated stage at half the dilation)
``DepthwiseSeparableASPPHead``    :class:`DepthwiseSeparableASPPHead`: ``image_pool``,
                                  ``aspp_modules`` (1x1 + separable 3x3 at 12/24/36),
                                  dense 3x3 ``bottleneck``, 1x1 ``c1_bottleneck`` on the
                                  1/4 feature, two separable 3x3 in ``sep_bottleneck``
``UPerHead``                      :class:`UPerHead`: ``psp_modules`` (pool scales 1/2/3/6),
                                  3x3 ``bottleneck``, 1x1 ``lateral_convs``, 3x3
                                  ``fpn_convs``, 3x3 ``fpn_bottleneck``
``FCNHead`` (auxiliary)           :class:`FCNHead`: ``convs.0`` (3x3), ``dropout``,
                                  ``conv_seg``; no input concat
================================  =======================================================

The decode heads return the fused 1/4-resolution map (``channels`` wide); the classifier
``conv_seg`` (with its Dropout2d) is the model's ``cls_seg``, as the GPaCo class centers.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvModule", "DepthwiseSeparableConvModule", "ResNetV1c", "DepthwiseSeparableASPPHead", "UPerHead",
           "FCNHead", "SwinEncoder", "from_mmseg_state_dict", "is_mmseg_state_dict", "infer_mmseg_model",
           "MMSEG_PREFIXES"]


class ConvModule(nn.Module):
    """conv (no bias) -> BatchNorm -> ReLU, named as mmcv's ``ConvModule`` (``conv``, ``bn``)."""

    def __init__(self, cin: int, cout: int, kernel: int, *, stride: int = 1, padding: int = 0, dilation: int = 1,
                 groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
                              bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x, inplace=True) if self.act else x


class DepthwiseSeparableConvModule(nn.Module):
    """Depthwise kxk ConvModule (BN + ReLU) then pointwise 1x1 ConvModule (BN + ReLU), as mmcv's."""

    def __init__(self, cin: int, cout: int, kernel: int, *, padding: int = 0, dilation: int = 1):
        super().__init__()
        self.depthwise_conv = ConvModule(cin, cin, kernel, padding=padding, dilation=dilation, groups=cin)
        self.pointwise_conv = ConvModule(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


# --------------------------------------------------------------------------- ResNetV1c


class BasicBlock(nn.Module):
    """mmseg's BasicBlock: 3x3 (stride, dilation) -> 3x3 (undilated); names conv1/bn1/conv2/bn2."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, downsample: nn.Module = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)), inplace=True)


class Bottleneck(nn.Module):
    """mmseg's Bottleneck, ``style='pytorch'``: the stride and dilation on the 3x3 ``conv2``."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, downsample: nn.Module = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)), inplace=True)


_DEPTHS = {18: (BasicBlock, (2, 2, 2, 2)), 50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3))}


class ResNetV1c(nn.Module):
    """mmseg's ``ResNetV1c`` (deep stem) at output stride 8: ``forward(x)`` -> the four stage
    outputs [B, C_i, H/4, W/4], [.., H/8, ..], [.., H/8, ..], [.., H/8, ..] (C = 256/512/1024/2048
    for depth 50/101, 64/128/256/512 for depth 18)."""

    def __init__(self, depth: int, *, strides: Sequence[int] = (1, 2, 1, 1), dilations: Sequence[int] = (1, 1, 2, 4),
                 contract_dilation: bool = True):
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"ResNetV1c depth must be one of {sorted(_DEPTHS)}, got {depth}")
        block, layers = _DEPTHS[depth]
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin, self.out_channels = 64, []
        for i, (n, stride, dilation) in enumerate(zip(layers, strides, dilations)):
            planes = 64 * 2 ** i
            downsample = None
            if stride != 1 or cin != planes * block.expansion:
                downsample = nn.Sequential(nn.Conv2d(cin, planes * block.expansion, 1, stride=stride, bias=False),
                                           nn.BatchNorm2d(planes * block.expansion))
            first = dilation // 2 if contract_dilation and dilation > 1 else dilation
            blocks = [block(cin, planes, stride, first, downsample)]
            cin = planes * block.expansion
            blocks += [block(cin, planes, 1, dilation) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.out_channels.append(cin)

    def forward(self, x: Tensor) -> List[Tensor]:
        x = self.maxpool(self.stem(x))
        outs = []
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            outs.append(x)
        return outs


class SwinEncoder(nn.Module):
    """A timm Swin transformer's four stage outputs (NCHW), each through its own LayerNorm
    (``norm0``..``norm3``) as mmseg's ``SwinTransformer(out_indices=(0, 1, 2, 3))``."""

    def __init__(self, name: str, **kwargs):
        super().__init__()
        import timm

        self.model = timm.create_model(name, pretrained=False, features_only=True, out_indices=(0, 1, 2, 3),
                                       **kwargs)
        self.out_channels = list(self.model.feature_info.channels())
        self.channels_last_out = getattr(self.model, "output_fmt", "NCHW") == "NHWC"
        for i, c in enumerate(self.out_channels):
            self.add_module(f"norm{i}", nn.LayerNorm(c))

    def forward(self, x: Tensor) -> List[Tensor]:
        outs = []
        for i, f in enumerate(self.model(x)):
            f = f if self.channels_last_out else f.permute(0, 2, 3, 1)
            outs.append(getattr(self, f"norm{i}")(f).permute(0, 3, 1, 2).contiguous())
        return outs


# --------------------------------------------------------------------------- heads


def _resize(x: Tensor, size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class DepthwiseSeparableASPPHead(nn.Module):
    """DeepLabV3+ decoder: ``forward(feats)`` on the four stage outputs -> [B, channels, H/4, W/4]."""

    def __init__(self, in_channels: int, channels: int, c1_in_channels: int, c1_channels: int,
                 dilations: Sequence[int] = (1, 12, 24, 36)):
        super().__init__()
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvModule(in_channels, channels, 1))
        self.aspp_modules = nn.ModuleList(
            ConvModule(in_channels, channels, 1) if d == 1 else
            DepthwiseSeparableConvModule(in_channels, channels, 3, padding=d, dilation=d) for d in dilations)
        self.bottleneck = ConvModule((len(dilations) + 1) * channels, channels, 3, padding=1)
        self.c1_bottleneck = ConvModule(c1_in_channels, c1_channels, 1)
        self.sep_bottleneck = nn.Sequential(
            DepthwiseSeparableConvModule(channels + c1_channels, channels, 3, padding=1),
            DepthwiseSeparableConvModule(channels, channels, 3, padding=1))

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        x = feats[3]
        outs = [_resize(self.image_pool(x), x.shape[2:])] + [m(x) for m in self.aspp_modules]
        out = self.bottleneck(torch.cat(outs, dim=1))
        c1 = self.c1_bottleneck(feats[0])
        out = torch.cat([_resize(out, c1.shape[2:]), c1], dim=1)
        return self.sep_bottleneck(out)


class UPerHead(nn.Module):
    """UPerNet decoder: PPM on the last stage + FPN over all four -> [B, channels, H/4, W/4]."""

    def __init__(self, in_channels: Sequence[int], channels: int, pool_scales: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_channels[-1], channels, 1)) for s in pool_scales)
        self.bottleneck = ConvModule(in_channels[-1] + len(pool_scales) * channels, channels, 3, padding=1)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3, padding=1) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3, padding=1)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        x = feats[-1]
        psp = [x] + [_resize(m(x), x.shape[2:]) for m in self.psp_modules]
        laterals = [conv(feats[i]) for i, conv in enumerate(self.lateral_convs)] + [self.bottleneck(torch.cat(psp, 1))]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [self.fpn_convs[i](laterals[i]) for i in range(len(laterals) - 1)] + [laterals[-1]]
        outs = [outs[0]] + [_resize(o, outs[0].shape[2:]) for o in outs[1:]]
        return self.fpn_bottleneck(torch.cat(outs, dim=1))


class FCNHead(nn.Module):
    """mmseg's auxiliary FCNHead (``num_convs=1``, ``concat_input=False``): 3x3 ConvModule,
    Dropout2d, 1x1 ``conv_seg`` -> logits [B, num_classes, h, w]."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.convs = nn.Sequential(ConvModule(in_channels, channels, 3, padding=1))
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_seg(self.dropout(self.convs(x)))


# --------------------------------------------------------------------------- checkpoints

#: mmseg ``EncoderDecoder`` prefixes -> ours (gpaco.models.seg.SegModel); first match wins.
MMSEG_PREFIXES: Tuple[Tuple[str, str], ...] = (
    ("backbone.", "encoder."),
    ("decode_head.conv_seg.", "cls_seg.1."),
    ("decode_head.mlp.", "embed.mlp."),  # the original's GPaCo embedding branch
    ("decode_head.", "decoder."),
    ("auxiliary_head.", "aux_head."),
)


def from_mmseg_state_dict(state: Mapping[str, Tensor]) -> "OrderedDict[str, Tensor]":
    """An mmseg ``EncoderDecoder`` state dict under our SegModel's names (``module.`` already
    stripped). mmseg's loss modules hold no tensors; unknown prefixes raise ValueError."""
    out: "OrderedDict[str, Tensor]" = OrderedDict()
    for key, value in state.items():
        for src, dst in MMSEG_PREFIXES:
            if key.startswith(src):
                out[dst + key[len(src):]] = value
                break
        else:
            raise ValueError(f"mmseg checkpoint key {key!r} has none of the prefixes "
                             f"{', '.join(s for s, _ in MMSEG_PREFIXES)}")
    return out


def is_mmseg_state_dict(state: Mapping[str, Tensor]) -> bool:
    return any(k.startswith("decode_head.") for k in state) and any(k.startswith("backbone.") for k in state)


def infer_mmseg_model(state: Mapping[str, Tensor]) -> dict:
    """``arch``, ``method``, ``num_classes``, ``embed_dim`` of an mmseg DeepLabV3+ ResNetV1c
    checkpoint (our SegModel keywords); ValueError for layouts we do not convert."""
    if "backbone.stem.0.weight" not in state:
        raise ValueError("only mmseg ResNetV1c checkpoints (deeplabv3plus_r{18,50,101}-d8) are converted; the keys "
                         "look like another backbone (mmseg's Swin names differ from timm's)")
    if "backbone.layer1.0.conv3.weight" not in state:
        arch = "r18"
    else:
        arch = "r101" if "backbone.layer3.22.conv1.weight" in state else "r50"
    gpaco = "decode_head.mlp.2.weight" in state
    return {"arch": arch, "method": "gpaco" if gpaco else "ce",
            "num_classes": int(state["decode_head.conv_seg.weight"].shape[0]),
            "embed_dim": int(state["decode_head.mlp.2.weight"].shape[0]) if gpaco else 128}

