"""The knowledge-distillation model zoo: mdistiller's CIFAR-100 teachers and students and its
ImageNet MobileNetV1, as ``--arch kd_<name>``, and the loading of their original checkpoints.

Names (``--arch``), each with mdistiller's name of the same network (its config's
``DISTILLER.TEACHER`` / ``STUDENT``):

=====================  ==================  ======================================================
``--arch``             mdistiller name     network (:mod:`gpaco.models.kd_cifar`, :mod:`~gpaco.models.mobilenet_v1`)
=====================  ==================  ======================================================
kd_resnet8x4           resnet8x4           ResNet-8, widths 32/64/128/256
kd_resnet32x4          resnet32x4          ResNet-32, widths 32/64/128/256
kd_resnet20 ... 110    resnet20/32/56/110  ResNet-6n+2, widths 16/16/32/64
kd_wrn_16_2 / 40_1/2   wrn_16_2, ...       WideResNet depth-widen
kd_vgg8 / kd_vgg13     vgg8 / vgg13        VGG with BN
kd_mobilenetv2         MobileNetV2         MobileNetV2, expansion 6, width 0.5 (``mobile_half``)
kd_shufflev1 / v2      ShuffleV1 / V2      ShuffleNetV1 (3 groups) / ShuffleNetV2 x1
kd_resnet50            ResNet50 (CIFAR)    Bottleneck ResNet-50 for 32 px (= our ``resnet50_cifar``)
kd_mobilenetv1         MobileNetV1         ImageNet MobileNetV1 (224 px)
=====================  ==================  ======================================================

The ImageNet ResNets of the same tables (ResNet-18 student, ResNet-34 / ResNet-50 teachers with
torchvision's weights) are the timm ``resnet18`` / ``resnet34`` / ``resnet50``: torchvision's
module and key names. :data:`MDISTILLER_CIFAR` / :data:`MDISTILLER_IMAGENET` map mdistiller's
names to ours.

Two ways to hold a network:

* the original's layout, :func:`build_kd_net` (classifier under the original's name): an mdistiller
  state dict loads into it as it is, ``strict=True``; ``net(x)`` -> logits.
* gpaco's :class:`~gpaco.models.Classifier` (``build_classifier("kd_vgg13", 100)``, what
  ``--arch kd_vgg13 --method ce`` trains): ``backbone`` = the same network built without its
  classifier, plus gpaco's ``fc``. Its logits are ``model(x)``; the penultimate (pooled) feature
  is ``model.backbone(x)`` [B, F], and ``model.fc(model.backbone(x))`` are the logits.

Checkpoint mapping, original key -> gpaco ``Classifier`` key (:func:`to_classifier_state_dict`;
:func:`to_original_state_dict` is the inverse):

========================================  ==========================  ================
archs                                     original classifier keys    gpaco
========================================  ==========================  ================
kd_resnet*, kd_wrn_*, kd_mobilenetv1,     ``fc.weight``, ``fc.bias``  ``fc.weight``,
torchvision / timm ResNets                                            ``fc.bias``
timm BEiT (``beitv2_*``)                  ``head.*``                  ``fc.*``
kd_resnet50, kd_shufflev1, kd_shufflev2   ``linear.*``                ``fc.*``
kd_vgg8, kd_vgg13                         ``classifier.*``            ``fc.*``
kd_mobilenetv2                            ``classifier.0.*``          ``fc.*``
every arch, every other key ``k``         ``k``                       ``backbone.k``
========================================  ==========================  ================

:func:`load_original_checkpoint` reads a file (mdistiller's ``{"model": state_dict, ...}``, a
torchvision ``.pth``, with or without DDP's ``module.``) and loads it strictly into either layout.
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, Mapping, Optional, Union

import torch
from torch import nn

from gpaco.checkpoint import CheckpointError, check_loadable_tensors, load_checkpoint, unwrap_state_dict

from . import kd_cifar
from .beit_teacher import BEIT_HEAD_PREFIX, is_beit
from .kd_cifar import KDNet
from .mobilenet_v1 import MobileNetV1

__all__ = [
    "KDArch", "KD_ARCHS", "MDISTILLER_CIFAR", "MDISTILLER_IMAGENET", "build_kd_net", "kd_backbone",
    "original_head_prefix", "to_classifier_state_dict", "to_original_state_dict", "read_original_state_dict",
    "load_original_checkpoint",
]


@dataclass(frozen=True)
class KDArch:
    """One zoo entry: ``build(num_classes)`` gives the network in the original's layout."""

    name: str  # our --arch name
    original: str  # mdistiller's name
    build: Callable[[int], KDNet]
    head_prefix: str  # the original's classifier keys start with this
    dataset: str  # "cifar" (32 px) or "imagenet" (224 px)
    default_classes: int


def _entry(name: str, original: str, build: Callable[..., KDNet], head: str, dataset: str = "cifar") -> KDArch:
    return KDArch(name, original, lambda num_classes: build(num_classes=num_classes), head, dataset,
                  100 if dataset == "cifar" else 1000)


_RESNET_X4 = (32, 64, 128, 256)
_RESNET = (16, 16, 32, 64)

KD_ARCHS: Dict[str, KDArch] = {e.name: e for e in (
    _entry("kd_resnet8x4", "resnet8x4", partial(kd_cifar.KDResNet, 8, _RESNET_X4), "fc."),
    _entry("kd_resnet32x4", "resnet32x4", partial(kd_cifar.KDResNet, 32, _RESNET_X4), "fc."),
    _entry("kd_resnet20", "resnet20", partial(kd_cifar.KDResNet, 20, _RESNET), "fc."),
    _entry("kd_resnet32", "resnet32", partial(kd_cifar.KDResNet, 32, _RESNET), "fc."),
    _entry("kd_resnet56", "resnet56", partial(kd_cifar.KDResNet, 56, _RESNET), "fc."),
    _entry("kd_resnet110", "resnet110", partial(kd_cifar.KDResNet, 110, _RESNET), "fc."),
    _entry("kd_wrn_16_2", "wrn_16_2", partial(kd_cifar.KDWideResNet, 16, 2), "fc."),
    _entry("kd_wrn_40_1", "wrn_40_1", partial(kd_cifar.KDWideResNet, 40, 1), "fc."),
    _entry("kd_wrn_40_2", "wrn_40_2", partial(kd_cifar.KDWideResNet, 40, 2), "fc."),
    _entry("kd_vgg8", "vgg8", partial(kd_cifar.KDVGG, kd_cifar.VGG_CONFIGS["vgg8"]), "classifier."),
    _entry("kd_vgg13", "vgg13", partial(kd_cifar.KDVGG, kd_cifar.VGG_CONFIGS["vgg13"]), "classifier."),
    _entry("kd_mobilenetv2", "MobileNetV2", partial(kd_cifar.KDMobileNetV2, 6, 0.5), "classifier.0."),
    _entry("kd_shufflev1", "ShuffleV1", kd_cifar.KDShuffleNetV1, "linear."),
    _entry("kd_shufflev2", "ShuffleV2", kd_cifar.KDShuffleNetV2, "linear."),
    _entry("kd_resnet50", "ResNet50", kd_cifar.KDResNet50, "linear."),
    _entry("kd_mobilenetv1", "MobileNetV1", MobileNetV1, "fc.", "imagenet"),
)}

# mdistiller's model names (configs' DISTILLER.TEACHER / STUDENT) -> our --arch
MDISTILLER_CIFAR: Dict[str, str] = {e.original: e.name for e in KD_ARCHS.values() if e.dataset == "cifar"}
MDISTILLER_IMAGENET: Dict[str, str] = {"ResNet18": "resnet18", "ResNet34": "resnet34", "ResNet50": "resnet50",
                                       "MobileNetV1": "kd_mobilenetv1"}


def _get(arch: str) -> KDArch:
    if arch not in KD_ARCHS:
        raise ValueError(f"unknown distillation-zoo arch {arch!r}; known: {', '.join(KD_ARCHS)}")
    return KD_ARCHS[arch]


def build_kd_net(arch: str, num_classes: Optional[int] = None) -> KDNet:
    """The network in the original's layout (its classifier under its own name): an original
    state dict loads into it with ``strict=True``. ``num_classes`` defaults to 100 (CIFAR) / 1000."""
    entry = _get(arch)
    return entry.build(entry.default_classes if num_classes is None else num_classes)


def kd_backbone(arch: str) -> KDNet:
    """The trunk without its classifier: [B, 3, H, W] -> pooled [B, F], ``num_features`` F
    (what :func:`~gpaco.models.create_backbone` builds for ``kd_*``)."""
    return _get(arch).build(0)


def original_head_prefix(arch: str) -> str:
    """The key prefix of the original's classifier: ``fc.`` for timm / torchvision ResNets,
    ``head.`` for timm's BEiT (:mod:`gpaco.models.beit_teacher`)."""
    if arch in KD_ARCHS:
        return KD_ARCHS[arch].head_prefix
    return BEIT_HEAD_PREFIX if is_beit(arch) else "fc."


def to_classifier_state_dict(state: Mapping[str, torch.Tensor], arch: str) -> "OrderedDict[str, torch.Tensor]":
    """Original key names (mdistiller, torchvision) -> gpaco ``Classifier`` names: the classifier's
    ``<head>weight/bias`` -> ``fc.weight/bias``, every other ``k`` -> ``backbone.k``."""
    head = original_head_prefix(arch)
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, value in state.items():
        out[f"fc.{key[len(head):]}" if key.startswith(head) else f"backbone.{key}"] = value
    return out


def to_original_state_dict(state: Mapping[str, torch.Tensor], arch: str) -> "OrderedDict[str, torch.Tensor]":
    """The inverse of :func:`to_classifier_state_dict` (export a gpaco ``Classifier`` in the
    original's layout). Keys outside ``backbone.`` / ``fc.`` are an error."""
    head = original_head_prefix(arch)
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, value in state.items():
        if key.startswith("fc."):
            out[head + key[len("fc."):]] = value
        elif key.startswith("backbone."):
            out[key[len("backbone."):]] = value
        else:
            raise ValueError(f"{key!r} is neither a backbone. nor an fc. key of a gpaco Classifier")
    return out


def _source_name(source, name: Optional[str]) -> str:
    return name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "state dict")


def read_original_state_dict(source: Union[str, os.PathLike, Mapping[str, torch.Tensor]], *,
                             name: Optional[str] = None) -> "OrderedDict[str, torch.Tensor]":
    """The state dict of an original checkpoint: a path (read without running pickled code; the
    dict under ``model`` / ``state_dict`` of a training checkpoint, or the file itself) or a
    mapping (a file already read: ``name`` is the file messages name); DDP's ``module.``
    prefixes stripped."""
    where = _source_name(source, name)
    obj = load_checkpoint(source, allow_data_objects=True) if isinstance(source, (str, os.PathLike)) else source
    try:
        return unwrap_state_dict(obj, where)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def load_original_checkpoint(model: nn.Module, source: Union[str, os.PathLike, Mapping[str, torch.Tensor]],
                             arch: Optional[str] = None, *, name: Optional[str] = None) -> nn.Module:
    """Load an original checkpoint strictly into ``model`` and return it.

    ``model`` is either a network in the original's layout (:func:`build_kd_net`, or a timm
    ResNet with ``num_classes`` set), which takes the keys as they are, or a gpaco
    ``Classifier`` (``backbone`` + ``fc``), which takes them through :func:`to_classifier_state_dict`
    for ``arch`` (a ``kd_*`` name, a timm / torchvision ResNet name, or a ``wrn*`` WideResNet of
    :mod:`gpaco.models.wideresnet`, whose classifier is ``fc`` too). ``source``: see
    :func:`read_original_state_dict`. Missing, unexpected or misshapen keys raise
    :class:`~gpaco.checkpoint.CheckpointError` naming them.
    """
    state = read_original_state_dict(source, name=name)
    own = model.state_dict()
    if any(k.startswith("backbone.") for k in own) and not any(k.startswith("backbone.") for k in state):
        if arch is None:
            raise ValueError("loading an original checkpoint into a gpaco Classifier needs its arch "
                             "(the classifier's key names depend on it)")
        state = to_classifier_state_dict(state, arch)
    where = _source_name(source, name)
    # files from before PyTorch 0.4.1 (torchvision's v1 ResNet weights) have no BN step
    # counters; load_state_dict fills them in
    missing = [k for k in own if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in state.items() if k in own and v.shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing keys {missing[:5]}" if missing else "",
                 f"{len(unexpected)} unexpected keys {unexpected[:5]}" if unexpected else "",
                 f"shape mismatches {shapes[:5]}" if shapes else ""]
        raise CheckpointError(f"{where} does not fit {type(model).__name__}"
                              f"{f' ({arch})' if arch else ''}: " + "; ".join(p for p in parts if p))
    for note in check_loadable_tensors(state, own, where):  # integer or NaN weights are refused
        warnings.warn(f"{where}: {note}", stacklevel=2)
    model.load_state_dict(state, strict=True)
    return model
