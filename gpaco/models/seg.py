"""Segmentation models for GPaCo (docs/method.md#segmentation-models): DeepLabV3+ and UPerNet from
segmentation-models-pytorch with timm encoders, an auxiliary FCN head and the GPaCo
embedding branch.

=========  ==============  ===================================  ========  ======  ===========
``arch``   decoder         encoder (timm, via smp ``tu-``)      channels  c1      aux in->ch
=========  ==============  ===================================  ========  ======  ===========
r18        DeepLabV3+ OS8  ``resnet18d``: deep stem + avg-down  128       12      256 -> 64
r50        DeepLabV3+ OS8  ``resnet50c``: deep stem (= V1c)     512       48      1024 -> 256
r101       DeepLabV3+ OS8  ``resnet101c``: deep stem (= V1c)    512       48      1024 -> 256
swin_t     UPerNet         ``swin_tiny_patch4_window7_224``     512       -       384 -> 256
swin_b     UPerNet         ``swin_base_patch4_window12_384``    512       -       512 -> 256
swin_l     UPerNet         ``swin_large_patch4_window12_384``   512       -       768 -> 256
=========  ==============  ===================================  ========  ======  ===========

The original used mmseg's ResNetV1c (deep stem) for all three ResNets; timm has a
``c`` variant (deep stem, plain strided shortcut) for ResNet-50/101 but not for
ResNet-18, so R18 uses ``resnet18d`` (deep stem and an average-pool shortcut).
``encoder=`` overrides the encoder (any smp encoder name, e.g. ``resnet18`` for
torchvision's stem). Swin runs with ``dynamic_img_size`` and ``always_partition``
(windows padded, always shifted, like mmseg's Swin) and drop-path 0.3.

Differences from mmseg's heads that remain: smp's DeepLabV3+ ASPP is depthwise
separable with one separable 3x3 after the ASPP and after the skip fusion (mmseg: a
dense 3x3 bottleneck and two separable 3x3s), and smp's UPerNet applies a LayerNorm
to each encoder feature (mmseg's Swin has the same per-stage norms inside the
backbone). Inputs are zero-padded (after normalisation) to a multiple of 8 (ResNet)
or 32 (Swin) and the outputs cropped back.

Heads on the decoder's final 1/4-resolution map (``channels`` wide):

* ``cls_seg``: Dropout2d(0.1) + 1x1 conv to C classes -- the classifier, i.e. the GPaCo
  class centers;
* ``aux_head`` (FCN): 3x3 conv-BN-ReLU, Dropout2d(0.1), 1x1 conv on the stage-3
  encoder feature (loss weight 0.4, applied by the criterion);
* ``embed`` (GPaCo only): 1x1 conv-BN-ReLU x2, 1x1 conv to ``embed_dim`` (128) with
  bias, L2-normalised per pixel;
* ``ceco`` (CeCo only, :class:`gpaco.losses.ceco.CeCoBranch`): a frozen, training-only branch
  on the decoder output; absent from the inference graph;
* ``region`` (RR only, :class:`gpaco.losses.rr.RegionBranch`): the region classifier whose
  per-image class bias is added to the low-resolution logits, in training and at inference
  (so also to every sliding window and every scale of multi-scale testing).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from gpaco.checkpoint import load_checkpoint, unwrap_state_dict
from gpaco.losses.ceco import CeCoBranch
from gpaco.losses.rr import RegionBranch

IGNORE_INDEX = 255  # the label of unlabelled pixels (gpaco.data.seg_transforms.IGNORE_INDEX)

__all__ = ["SEG_ARCHS", "SegArch", "SegModel", "FCNHead", "PixelEmbedding", "build_seg_model", "convert_sync_batchnorm",
           "load_encoder_weights", "pad_to_multiple"]


@dataclass(frozen=True)
class SegArch:
    decoder: str                 # 'deeplabv3plus' or 'upernet'
    encoder: str                 # smp encoder name
    channels: int                # decoder output channels
    aux_in: int                  # channels of the stage-3 encoder feature
    aux_channels: int
    c1_channels: int = 48        # DeepLabV3+ skip projection
    size_divisor: int = 8
    encoder_kwargs: Tuple[Tuple[str, object], ...] = ()


_SWIN = (("dynamic_img_size", True), ("always_partition", True), ("drop_path_rate", 0.3))
SEG_ARCHS: Dict[str, SegArch] = {
    "r18": SegArch("deeplabv3plus", "tu-resnet18d", 128, 256, 64, c1_channels=12),
    "r50": SegArch("deeplabv3plus", "tu-resnet50c", 512, 1024, 256),
    "r101": SegArch("deeplabv3plus", "tu-resnet101c", 512, 1024, 256),
    "swin_t": SegArch("upernet", "tu-swin_tiny_patch4_window7_224", 512, 384, 256, size_divisor=32,
                      encoder_kwargs=_SWIN),
    "swin_b": SegArch("upernet", "tu-swin_base_patch4_window12_384", 512, 512, 256, size_divisor=32,
                      encoder_kwargs=_SWIN),
    "swin_l": SegArch("upernet", "tu-swin_large_patch4_window12_384", 512, 768, 256, size_divisor=32,
                      encoder_kwargs=_SWIN),
}


def pad_to_multiple(x: Tensor, divisor: int, value: float = 0.0) -> Tensor:
    """Pad the last two dims on the bottom/right up to multiples of ``divisor``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), value=value)


def _conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class FCNHead(nn.Sequential):
    """mmseg's auxiliary FCNHead (one 3x3 conv, no input concat)."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1):
        super().__init__(_conv_bn_relu(in_channels, channels, 3), nn.Dropout2d(dropout),
                         nn.Conv2d(channels, num_classes, 1))


class PixelEmbedding(nn.Module):
    """GPaCo embedding branch: 1x1 conv-BN-ReLU x2, 1x1 conv to ``dim``, L2-normalised per pixel."""

    def __init__(self, channels: int, dim: int = 128):
        super().__init__()
        self.mlp = nn.Sequential(_conv_bn_relu(channels, channels, 1), _conv_bn_relu(channels, channels, 1),
                                 nn.Conv2d(channels, dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.mlp(x), dim=1)


class SegModel(nn.Module):
    """Encoder + decoder + classifier (+ aux FCN head, + GPaCo embedding, + CeCo / RR branch).

    ``model(img)`` returns [B, C, H, W] logits at the input size (inference; with the RR
    branch the region bias is added before upsampling);
    ``model(img, train_outputs=True, labels=y)`` returns a dict with the low-resolution
    pieces the criterion needs:

    ====================  ===============  ===============================================
    key                   shape            when
    ====================  ===============  ===============================================
    ``logits``            [B, C, h, w]     always; 1/4 of the padded input, after dropout
    ``padded_size``       (Hp, Wp)         always; the input size those maps cover
    ``aux``               [B, C, h', w']   aux head
    ``embed``             [B, D, h, w]     GPaCo
    ``center_logits``...  see CeCoBranch   CeCo, ``labels`` given
    ``region_logits``...  see RegionBranch RR (``gt_region_*`` only with ``labels``)
    ====================  ===============  ===============================================

    ``labels`` [B, H, W] are the crop's labels (``IGNORE_INDEX`` padded to (Hp, Wp) here);
    only the CeCo and RR branches read them. ``logits`` never include the RR bias: the
    RR criterion adds it itself.
    """

    #: state-dict prefixes of the branches that only training uses (the inference graph never runs them)
    TRAINING_ONLY_PREFIXES = ("embed.", "ceco.")
    #: children whose BatchNorm stays per-process under SyncBatchNorm (the original's CeCo branch
    #: has a plain BatchNorm2d that mmseg's SyncBN config does not reach)
    LOCAL_BN_CHILDREN = ("ceco",)

    def __init__(self, arch: str, num_classes: int, *, gpaco: bool = False, embed_dim: int = 128,
                 aux: bool = True, encoder: Optional[str] = None, encoder_kwargs: Optional[dict] = None,
                 ceco: Optional[str] = None, ceco_options: Optional[Mapping[str, Any]] = None, region: bool = False):
        super().__init__()
        import segmentation_models_pytorch as smp

        if arch not in SEG_ARCHS:
            raise ValueError(f"unknown segmentation arch {arch!r}; choose one of {sorted(SEG_ARCHS)}")
        spec = SEG_ARCHS[arch]
        self.arch, self.num_classes, self.size_divisor = arch, int(num_classes), spec.size_divisor
        self.encoder_name = encoder or spec.encoder
        kwargs = dict(spec.encoder_kwargs)
        kwargs.update(encoder_kwargs or {})
        if spec.decoder == "deeplabv3plus":
            net = smp.DeepLabV3Plus(self.encoder_name, encoder_weights=None, encoder_output_stride=8,
                                    decoder_channels=spec.channels, decoder_atrous_rates=(12, 24, 36),
                                    decoder_aspp_dropout=0.0, classes=num_classes, **kwargs)
            if spec.c1_channels != 48:
                self._resize_skip(net.decoder, net.encoder.out_channels[2], spec.c1_channels, spec.channels)
        elif spec.decoder == "upernet":
            net = smp.UPerNet(self.encoder_name, encoder_weights=None, decoder_channels=spec.channels,
                              classes=num_classes, **kwargs)
        else:  # pragma: no cover - table typo
            raise ValueError(spec.decoder)
        self.encoder, self.decoder = net.encoder, net.decoder
        del net  # its own segmentation head is not used
        self.aux_index = 4  # smp feature list: [input, 1/2, 1/4, 1/8, stage 3, stage 4]
        aux_in = self.encoder.out_channels[self.aux_index]
        self.cls_seg = nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(spec.channels, num_classes, 1))
        self.aux_head = FCNHead(aux_in, spec.aux_channels, num_classes) if aux else None
        self.embed = PixelEmbedding(spec.channels, embed_dim) if gpaco else None
        self.ceco = CeCoBranch(spec.channels, num_classes, variant=ceco, ignore_index=IGNORE_INDEX,
                               **dict(ceco_options or {})) if ceco else None
        self.region = RegionBranch(spec.channels, num_classes) if region else None

    @staticmethod
    def _resize_skip(decoder: nn.Module, highres_in: int, c1: int, channels: int) -> None:
        from segmentation_models_pytorch.decoders.deeplabv3.decoder import SeparableConv2d

        decoder.block1 = _conv_bn_relu(highres_in, c1, 1)
        decoder.block2 = nn.Sequential(SeparableConv2d(c1 + channels, channels, kernel_size=3, padding=1, bias=False),
                                       nn.BatchNorm2d(channels), nn.ReLU(inplace=True))

    def features(self, img: Tensor):
        x = pad_to_multiple(img, self.size_divisor)
        feats = self.encoder(x)
        return x.shape[-2:], feats, self.decoder(feats)

    def forward(self, img: Tensor, train_outputs: bool = False, labels: Optional[Tensor] = None):
        padded, feats, dec = self.features(img)
        logits = self.cls_seg(dec)
        if not train_outputs:
            if self.region is not None:
                logits = logits + self.region(dec, logits)["region_bias"].to(logits.dtype)[:, :, None, None]
            logits = F.interpolate(logits, size=padded, mode="bilinear", align_corners=False)
            return logits[..., : img.shape[-2], : img.shape[-1]]
        out = {"logits": logits, "padded_size": tuple(padded)}
        if self.aux_head is not None:
            out["aux"] = self.aux_head(feats[self.aux_index])
        if self.embed is not None:
            out["embed"] = self.embed(dec)
        if labels is not None and (self.ceco is not None or self.region is not None):
            labels = pad_to_multiple(labels, self.size_divisor, value=IGNORE_INDEX)
            if labels.shape[-2:] != tuple(padded):
                raise ValueError(f"labels {tuple(labels.shape)} do not cover the image {tuple(img.shape)}")
        if self.region is not None:
            out.update(self.region(dec, logits, labels))
        if self.ceco is not None and labels is not None:
            out.update(self.ceco(dec, labels))
        return out


def convert_sync_batchnorm(model: SegModel) -> SegModel:
    """``nn.SyncBatchNorm.convert_sync_batchnorm`` on every child but :attr:`SegModel.LOCAL_BN_CHILDREN`."""
    for name, child in list(model.named_children()):
        if name not in model.LOCAL_BN_CHILDREN:
            setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    return model


def build_seg_model(arch: str, num_classes: int, *, method: str = "gpaco", embed_dim: int = 128,
                    aux: bool = True, encoder: Optional[str] = None, pretrained: Optional[str] = None,
                    ceco: Optional[str] = None, ceco_options: Optional[Mapping[str, Any]] = None,
                    region: bool = False) -> SegModel:
    """``method`` 'gpaco' adds the embedding branch; 'ce' does not. ``ceco`` ('ceco' or 'cecol')
    adds the frozen CeCo branch (``ceco_options``: :class:`~gpaco.losses.ceco.CeCoBranch`
    keywords), ``region`` the RR region branch. ``pretrained``: a local encoder weights file
    (timm key names; nothing is downloaded)."""
    if method not in ("ce", "gpaco"):
        raise ValueError(f"segmentation method must be 'ce' or 'gpaco', got {method!r}")
    model = SegModel(arch, num_classes, gpaco=method == "gpaco", embed_dim=embed_dim, aux=aux, encoder=encoder,
                     ceco=ceco, ceco_options=ceco_options, region=region)
    if pretrained:
        load_encoder_weights(model, pretrained)
    return model


def _norm_key(key: str) -> str:
    return key.replace("_", ".")


def load_encoder_weights(model: SegModel, path: str, *, verbose: bool = True) -> dict:
    """Load a local backbone checkpoint (timm names; ``model``/``state_dict`` wrappers and
    ``module.``/``backbone.``/``encoder.`` prefixes accepted) into the encoder.

    Keys are matched up to ``_`` vs ``.`` (timm's feature wrappers rename ``layers.0`` to
    ``layers_0``); classifier weights and shape mismatches are skipped. Returns counts.
    """
    state = unwrap_state_dict(load_checkpoint(path), path)
    target = model.encoder.model.state_dict() if hasattr(model.encoder, "model") else model.encoder.state_dict()
    by_norm = {_norm_key(k): k for k in target}
    new, skipped_shape, unused = {}, [], []
    for key, value in state.items():
        k = key
        for prefix in ("backbone.", "encoder.", "model."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        dest = by_norm.get(_norm_key(k))
        if dest is None:
            unused.append(key)
        elif tuple(value.shape) != tuple(target[dest].shape):
            skipped_shape.append(key)
        else:
            new[dest] = value
    if not new:
        raise ValueError(f"--pretrained {path}: no tensor matches the {model.encoder_name} encoder "
                         f"(first keys: {list(state)[:5]})")
    module = model.encoder.model if hasattr(model.encoder, "model") else model.encoder
    missing = module.load_state_dict(new, strict=False).missing_keys
    report = {"loaded": len(new), "missing": len(missing), "unused": len(unused), "shape_mismatch": len(skipped_shape)}
    if verbose:
        print(f"loaded {len(new)} encoder tensors from {path}; {len(missing)} encoder tensors not in the file, "
              f"{len(unused)} file tensors unused (e.g. {unused[:3]}), {len(skipped_shape)} skipped for shape "
              f"(e.g. {skipped_shape[:3]})", flush=True)
    return report
