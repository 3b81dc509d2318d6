"""Segmentation models for GPaCo (docs/method.md#segmentation-models): the paper's networks as
mmseg 0.x builds them (:mod:`gpaco.models.mmseg`), an auxiliary FCN head and the GPaCo
embedding branch; any segmentation-models-pytorch network for users' own models.

=========  ==========================  ================================  ========  ======  ===========
``arch``   decoder                     encoder                           channels  c1      aux in->ch
=========  ==========================  ================================  ========  ======  ===========
r18        DepthwiseSeparableASPPHead  ResNetV1c-18, output stride 8     128       64->12  256 -> 64
r50        DepthwiseSeparableASPPHead  ResNetV1c-50, output stride 8     512       256->48 1024 -> 256
r101       DepthwiseSeparableASPPHead  ResNetV1c-101, output stride 8    512       256->48 1024 -> 256
swin_t     UPerHead                    ``swin_tiny_patch4_window7_224``  512       -       384 -> 256
swin_b     UPerHead                    ``swin_base_patch4_window12_384`` 512       -       512 -> 256
swin_l     UPerHead                    ``swin_large_patch4_window12_384``512       -       768 -> 256
=========  ==========================  ================================  ========  ======  ===========

These are the original's rows (mmseg's ``deeplabv3plus_r{18,50,101}-d8`` and
``upernet_swin`` configs): an mmseg checkpoint of them loads key for key after
:func:`gpaco.models.mmseg.from_mmseg_state_dict` (Swin encoders: timm's parameter names,
not mmseg's). Swin runs with ``dynamic_img_size`` and ``always_partition`` (windows padded,
always shifted, like mmseg's Swin) and drop-path 0.3, each stage output through a LayerNorm.

``smp:<decoder>:<encoder>`` (e.g. ``smp:deeplabv3plus:resnet34``, ``smp:upernet:tu-convnext_tiny``)
builds a segmentation-models-pytorch decoder (``deeplabv3plus`` at output stride 8, or
``upernet``) on any smp encoder, with the same heads: for users' own models, not the paper's
rows. Inputs are zero-padded (after normalisation) to a multiple of 8 (ResNet) or 32 (Swin)
and the outputs cropped back.

Heads on the decoder's final 1/4-resolution map (``channels`` wide):

* ``cls_seg``: Dropout2d(0.1) + 1x1 conv to C classes (mmseg's ``conv_seg``) -- the
  classifier, i.e. the GPaCo class centers;
* ``aux_head`` (:class:`~gpaco.models.mmseg.FCNHead`): 3x3 ConvModule, Dropout2d(0.1), 1x1 conv
  on the stage-3 encoder feature (loss weight 0.4, applied by the criterion);
* ``embed`` (GPaCo only): 1x1 ConvModule x2, 1x1 conv to ``embed_dim`` (128) with bias,
  L2-normalised per pixel;
* ``ceco`` (CeCo only, :class:`gpaco.losses.ceco.CeCoBranch`): a frozen, training-only branch
  on the decoder output; absent from the inference graph. Its BatchNorm and class centres
  work per process, or per virtual device of ``ceco_options["device_batch"]`` images
  (``--device-batch``), as the original's per-GPU ones; :func:`convert_sync_batchnorm`
  leaves it out, so only the rest of the network shares statistics across processes;
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

from .mmseg import ConvModule, DepthwiseSeparableASPPHead, FCNHead, ResNetV1c, SwinEncoder, UPerHead

IGNORE_INDEX = 255  # the label of unlabelled pixels (gpaco.data.seg_transforms.IGNORE_INDEX)

__all__ = ["SEG_ARCHS", "SegArch", "SegModel", "FCNHead", "PixelEmbedding", "build_seg_model", "convert_sync_batchnorm",
           "load_encoder_weights", "pad_to_multiple", "seg_arch"]


@dataclass(frozen=True)
class SegArch:
    decoder: str                 # 'deeplabv3plus' or 'upernet'
    encoder: str                 # 'resnetv1c-<depth>', a timm Swin name, or (smp) an smp encoder name
    channels: int                # decoder output channels
    aux_in: int                  # channels of the stage-3 encoder feature
    aux_channels: int
    c1_channels: int = 48        # DeepLabV3+ skip projection
    size_divisor: int = 8
    encoder_kwargs: Tuple[Tuple[str, object], ...] = ()
    smp: bool = False            # a segmentation-models-pytorch network (users' models)


_SWIN = (("dynamic_img_size", True), ("always_partition", True), ("drop_path_rate", 0.3))
SEG_ARCHS: Dict[str, SegArch] = {
    "r18": SegArch("deeplabv3plus", "resnetv1c-18", 128, 256, 64, c1_channels=12),
    "r50": SegArch("deeplabv3plus", "resnetv1c-50", 512, 1024, 256),
    "r101": SegArch("deeplabv3plus", "resnetv1c-101", 512, 1024, 256),
    "swin_t": SegArch("upernet", "swin_tiny_patch4_window7_224", 512, 384, 256, size_divisor=32,
                      encoder_kwargs=_SWIN),
    "swin_b": SegArch("upernet", "swin_base_patch4_window12_384", 512, 512, 256, size_divisor=32,
                      encoder_kwargs=_SWIN),
    "swin_l": SegArch("upernet", "swin_large_patch4_window12_384", 512, 768, 256, size_divisor=32,
                      encoder_kwargs=_SWIN),
}


def seg_arch(arch: str) -> SegArch:
    """The :class:`SegArch` of ``arch``: a :data:`SEG_ARCHS` name or
    ``smp:<decoder>:<encoder>[:<channels>]`` (decoder channels default 256 / 512)."""
    if arch in SEG_ARCHS:
        return SEG_ARCHS[arch]
    parts = arch.split(":")
    if 3 <= len(parts) <= 4 and parts[0] == "smp" and parts[1] in ("deeplabv3plus", "upernet") and parts[2] and \
            (len(parts) == 3 or parts[3].isdigit() and int(parts[3]) > 0):
        channels = int(parts[3]) if len(parts) == 4 else (256 if parts[1] == "deeplabv3plus" else 512)
        return SegArch(parts[1], parts[2], channels, 0, 256, size_divisor=8 if parts[1] == "deeplabv3plus" else 32,
                       smp=True)
    raise ValueError(f"unknown segmentation arch {arch!r}; choose one of {sorted(SEG_ARCHS)} or "
                     f"smp:<deeplabv3plus|upernet>:<smp encoder>[:<decoder channels>] (e.g. smp:deeplabv3plus:resnet34)")


def pad_to_multiple(x: Tensor, divisor: int, value: float = 0.0) -> Tensor:
    """Pad the last two dims on the bottom/right up to multiples of ``divisor``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), value=value)


class PixelEmbedding(nn.Module):
    """GPaCo embedding branch: 1x1 ConvModule x2, 1x1 conv to ``dim``, L2-normalised per pixel
    (the original's ``mlp`` of the decode head)."""

    def __init__(self, channels: int, dim: int = 128):
        super().__init__()
        self.mlp = nn.Sequential(ConvModule(channels, channels, 1), ConvModule(channels, channels, 1),
                                 nn.Conv2d(channels, dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.mlp(x), dim=1)


class _SmpDecoder(nn.Module):
    """An smp decoder as ``forward(feats) -> map`` (smp passes its feature list whole)."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, feats):
        try:
            return self.decoder(feats)
        except TypeError:  # older smp: decoder(*features)
            return self.decoder(*feats)


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
    #: children whose BatchNorm stays per-process (per virtual device with ``--device-batch``)
    #: under SyncBatchNorm: the original's CeCo branch has a plain BatchNorm2d that mmseg's SyncBN
    #: config does not reach
    LOCAL_BN_CHILDREN = ("ceco",)

    def __init__(self, arch: str, num_classes: int, *, gpaco: bool = False, embed_dim: int = 128,
                 aux: bool = True, encoder: Optional[str] = None, encoder_kwargs: Optional[dict] = None,
                 ceco: Optional[str] = None, ceco_options: Optional[Mapping[str, Any]] = None, region: bool = False):
        super().__init__()
        spec = seg_arch(arch)
        self.arch, self.num_classes, self.size_divisor = arch, int(num_classes), spec.size_divisor
        self.encoder_name = encoder or spec.encoder
        kwargs = dict(spec.encoder_kwargs)
        kwargs.update(encoder_kwargs or {})
        if spec.smp:
            self._build_smp(spec, kwargs)
        else:
            if encoder is not None:
                raise ValueError(f"--encoder overrides the encoder of smp:... archs only; {arch} is the paper's "
                                 f"{spec.encoder} (use smp:{spec.decoder}:{encoder} for another encoder)")
            if spec.encoder.startswith("resnetv1c-"):
                self.encoder = ResNetV1c(int(spec.encoder.split("-")[1]))
            else:
                self.encoder = SwinEncoder(spec.encoder, **kwargs)
            chans = self.encoder.out_channels
            if spec.decoder == "deeplabv3plus":
                self.decoder = DepthwiseSeparableASPPHead(chans[3], spec.channels, chans[0], spec.c1_channels)
            else:
                self.decoder = UPerHead(chans, spec.channels)
            self.aux_index = 2  # stage 3
        aux_in = self.encoder.out_channels[self.aux_index]
        self.cls_seg = nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(spec.channels, num_classes, 1))
        self.aux_head = FCNHead(aux_in, spec.aux_channels, num_classes) if aux else None
        self.embed = PixelEmbedding(spec.channels, embed_dim) if gpaco else None
        self.ceco = CeCoBranch(spec.channels, num_classes, variant=ceco, ignore_index=IGNORE_INDEX,
                               **dict(ceco_options or {})) if ceco else None
        self.region = RegionBranch(spec.channels, num_classes) if region else None

    def _build_smp(self, spec: SegArch, kwargs: dict) -> None:
        import segmentation_models_pytorch as smp

        if spec.decoder == "deeplabv3plus":
            net = smp.DeepLabV3Plus(self.encoder_name, encoder_weights=None, encoder_output_stride=8,
                                    decoder_channels=spec.channels, decoder_atrous_rates=(12, 24, 36),
                                    decoder_aspp_dropout=0.0, classes=self.num_classes, **kwargs)
        else:
            net = smp.UPerNet(self.encoder_name, encoder_weights=None, decoder_channels=spec.channels,
                              classes=self.num_classes, **kwargs)
        self.encoder, self.decoder = net.encoder, _SmpDecoder(net.decoder)
        self.aux_index = 4  # smp feature list: [input, 1/2, 1/4, 1/8, stage 3, stage 4]

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
    """``nn.SyncBatchNorm.convert_sync_batchnorm`` on every child but :attr:`SegModel.LOCAL_BN_CHILDREN`
    (whose per-virtual-device BatchNorm, if any, is kept as built)."""
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
