"""Backbones: images [B, 3, H, W] -> pooled features [B, F].

ImageNet-scale ResNets come from timm (created with ``num_classes=0`` so the forward
already returns the global-average-pooled feature the classifier and the projection
both read). The CIFAR ResNets are ours (:mod:`gpaco.models.cifar_resnet`), and so are the
``kd_*`` networks of the knowledge-distillation tables (:mod:`gpaco.models.kd_zoo`) and the
``wrn*`` WideResNets of adversarial training (:mod:`gpaco.models.wideresnet`).

``pretrained``:

* ``False``: random init, nothing is downloaded.
* a path: a local state dict (``.pth``/``.pt``/``.bin`` via ``torch.load(weights_only=True)``
  or ``.safetensors``), e.g. torchvision's ImageNet weights or one of our checkpoints;
  see :func:`load_backbone_weights`.
* ``True``: timm's hub weights (torchvision's ImageNet weights where timm has them, as
  the original used). Fails fast, with a hint, when the hub is unreachable.
"""
from __future__ import annotations

import logging
import os
import socket
import warnings
from functools import partial
from typing import Any, Callable, Dict, List, Tuple, Union
from urllib.parse import urlparse

import torch
from torch import nn

from gpaco.checkpoint import CheckpointError, check_loadable_tensors, load_checkpoint, unwrap_state_dict

from . import cifar_resnet, kd_zoo, wideresnet

__all__ = ["create_backbone", "list_archs", "load_backbone_weights", "CIFAR_ARCHS", "TIMM_ARCHS", "KD_ARCHS",
           "WRN_ARCHS"]

_logger = logging.getLogger(__name__)

CIFAR_ARCHS: Dict[str, Callable[[], nn.Module]] = {
    "resnet8": cifar_resnet.resnet8,
    "resnet20": cifar_resnet.resnet20,
    "resnet32": cifar_resnet.resnet32,
    "resnet50_cifar": cifar_resnet.resnet50_cifar,
}

# The ImageNet-scale archs of the paper -> the timm weight tag matching the original's
# init (torchvision ImageNet weights) where timm has one; None = timm's default tag.
TIMM_ARCHS: Dict[str, Union[str, None]] = {
    "resnet50": "tv_in1k",
    "resnet101": "tv_in1k",
    "resnet152": "tv_in1k",
    "resnet200": None,  # timm has no ImageNet weights for it (the original had none either)
    "resnext50_32x4d": "tv_in1k",
    "resnext101_32x4d": None,  # [3, 4, 23, 3], 32 groups, width 4, as the original's local model
    "resnet10": None,  # BasicBlock [1, 1, 1, 1] (ResLT's ImageNet-LT R10); timm's resnet10t has another stem
    # the ImageNet distillation pairs (ResNet-34 teacher, ResNet-18 student; torchvision's keys and init)
    "resnet18": "tv_in1k",
    "resnet34": "tv_in1k",
}

# The knowledge-distillation zoo (mdistiller's CIFAR nets + MobileNetV1; gpaco.models.kd_zoo):
# `kd_<name>` -> the trunk without its classifier ([B,3,H,W] -> pooled [B,F]). Kept apart from
# CIFAR_ARCHS, whose ResNet layout (conv1/bn1/layerN) other models rely on.
KD_ARCHS: Dict[str, Callable[[], nn.Module]] = {name: partial(kd_zoo.kd_backbone, name) for name in kd_zoo.KD_ARCHS}

# The WideResNets of adversarial training (TRADES / AWP / DKL; gpaco.models.wideresnet): `wrn<depth>_<widen>`
# -> the trunk without its classifier. 32-px inputs in [0, 1] (--norm none), as the originals train them.
WRN_ARCHS: Dict[str, Callable[[], nn.Module]] = {name: partial(wideresnet.wrn_backbone, name)
                                                 for name in wideresnet.WRN_ARCHS}

# Archs timm has no registered name for: timm ResNet keywords.
_TIMM_RESNET_LAYOUTS: Dict[str, Dict[str, Any]] = {"resnet10": {"layers": (1, 1, 1, 1)}}

_HEAD_PREFIXES = ("fc.", "head.", "classifier.", "linear.", "last_linear.")
_WRAPPER_PREFIXES = ("encoder_q.backbone.", "encoder.backbone.", "backbone.", "encoder_q.", "encoder.")
_PRETRAINED_HINT = (
    "pass a local weights file instead: --pretrained /path/to/weights.pth "
    "(Python: pretrained='/path/to/weights.pth'; a torchvision/timm state dict, "
    ".pth/.pt/.bin/.safetensors)"
)


def list_archs() -> List[str]:
    """The backbone names we document (any other timm model name also works)."""
    return list(CIFAR_ARCHS) + list(TIMM_ARCHS) + list(KD_ARCHS) + list(WRN_ARCHS)


def known_arch(arch: str) -> bool:
    """Whether :func:`create_backbone` (or the MAE ViTs) can build ``arch``; no model is built."""
    import timm

    from .vit import MAE_ARCHS

    if arch in KD_ARCHS or arch in WRN_ARCHS:
        return True
    return (arch in CIFAR_ARCHS or arch in TIMM_ARCHS or arch in _TIMM_RESNET_LAYOUTS or arch in MAE_ARCHS
            or timm.is_model(arch.split(".")[0]))


def create_backbone(
    arch: str,
    *,
    pretrained: Union[bool, str, os.PathLike] = False,
    drop_path_rate: float = 0.0,
    **timm_kwargs: Any,
) -> Tuple[nn.Module, int]:
    """Build a feature extractor.

    Args:
        arch: one of :func:`list_archs`, or any timm model name (passthrough).
        pretrained: False, True (timm hub weights) or a path to a local weights file.
        drop_path_rate: stochastic depth (timm models only; CIFAR archs need 0).
        **timm_kwargs: extra ``timm.create_model`` arguments (e.g. ``global_pool`` for ViTs).
    Returns:
        (module mapping [B,3,H,W] -> [B,F], F).
    """
    if arch in KD_ARCHS:
        return _create_kd(arch, pretrained, drop_path_rate, timm_kwargs)
    if arch in CIFAR_ARCHS or arch in WRN_ARCHS:
        if drop_path_rate:
            raise ValueError(f"drop_path_rate is not supported by the CIFAR backbone '{arch}'")
        if timm_kwargs:
            raise TypeError(f"'{arch}' is not a timm model; unexpected arguments {sorted(timm_kwargs)}")
        if pretrained is True:
            raise RuntimeError(f"there are no hub weights for the CIFAR backbone '{arch}'; {_PRETRAINED_HINT}")
        model = CIFAR_ARCHS[arch]() if arch in CIFAR_ARCHS else WRN_ARCHS[arch]()
    else:
        model = _create_timm(arch, pretrained is True, drop_path_rate, timm_kwargs)
    if isinstance(pretrained, (str, os.PathLike)):
        load_backbone_weights(model, pretrained)
    return model, int(model.num_features)


def _create_kd(arch: str, pretrained: Union[bool, str, os.PathLike], drop_path_rate: float,
               kwargs: Dict[str, Any]) -> Tuple[nn.Module, int]:
    """A distillation-zoo trunk; ``pretrained`` may be an original (mdistiller) checkpoint: its
    classifier keys are dropped here (kd_zoo.load_original_checkpoint loads a whole model)."""
    if drop_path_rate:
        raise ValueError(f"drop_path_rate is not supported by the distillation-zoo backbone '{arch}'")
    if kwargs:
        raise TypeError(f"'{arch}' is not a timm model; unexpected arguments {sorted(kwargs)}")
    if pretrained is True:
        raise RuntimeError(f"there are no hub weights for the distillation-zoo backbone '{arch}'; {_PRETRAINED_HINT}")
    model = KD_ARCHS[arch]()
    if isinstance(pretrained, (str, os.PathLike)):
        load_backbone_weights(model, pretrained)
    return model, int(model.num_features)


def _create_timm(arch: str, hub: bool, drop_path_rate: float, kwargs: Dict[str, Any]) -> nn.Module:
    import timm

    name = arch
    if arch in TIMM_ARCHS:
        # torchvision-like init: no zero-init of the last BN gamma in each block.
        kwargs = {"zero_init_last": False, **kwargs}
        if hub and TIMM_ARCHS[arch]:
            name = f"{arch}.{TIMM_ARCHS[arch]}"
    elif not timm.is_model(arch.split(".")[0]):
        raise ValueError(f"unknown arch '{arch}'; known: {', '.join(list_archs())} (or any timm model name)")
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    if arch in _TIMM_RESNET_LAYOUTS:
        if hub:
            raise RuntimeError(f"there are no hub weights for '{arch}'; {_PRETRAINED_HINT}")
        from timm.models.resnet import BasicBlock, ResNet

        return ResNet(BasicBlock, num_classes=0, **_TIMM_RESNET_LAYOUTS[arch], **kwargs)
    if hub:
        _check_hub_weights(arch, name)
    try:
        return timm.create_model(name, pretrained=hub, num_classes=0, **kwargs)
    except Exception as err:
        if not hub:
            raise
        raise RuntimeError(f"could not load pretrained weights for '{arch}' ({type(err).__name__}: {err}); "
                           f"{_PRETRAINED_HINT}") from err


def _check_hub_weights(arch: str, name: str) -> None:
    """Fail in well under a second when the weights cannot come from the hub.

    timm silently falls back to random init for models without weights, and
    huggingface_hub retries an unreachable host for ~45 s before giving up.
    """
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise RuntimeError(f"timm has no pretrained weights for '{arch}'; {_PRETRAINED_HINT}")
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return  # huggingface_hub then only looks in its local cache, which is fast
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3.0).close()
    except OSError as err:
        raise RuntimeError(
            f"cannot reach {host} to download pretrained weights for '{arch}' ({err}). "
            f"Set HF_HUB_OFFLINE=1 to use weights already in the Hugging Face cache, or {_PRETRAINED_HINT}"
        ) from err


def _read_state_dict(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    obj = load_checkpoint(path)  # safetensors, or torch.load(weights_only=True): a pickle is refused
    try:
        return unwrap_state_dict(obj, path)
    except ValueError as e:
        raise CheckpointError(str(e)) from None  # training checkpoints: {'state_dict': ...}, {'model': ...}


def load_backbone_weights(model: nn.Module, path: Union[str, os.PathLike]) -> Tuple[List[str], List[str]]:
    """Load a local state dict into a backbone, leniently.

    ``module.`` prefixes (DDP) and a wrapping prefix (``encoder_q.``, ``backbone.``, our
    ``encoder_q.backbone.``...) are stripped; classifier/projection keys (``fc.``,
    ``head.``...) that the backbone does not have are dropped. Missing and unexpected
    keys are reported with a warning; a shape mismatch or no matching key at all is an error.

    Returns:
        (missing_keys, unexpected_keys).
    """
    state = _read_state_dict(path)
    own = model.state_dict()
    if not any(k in own for k in state):
        for prefix in _WRAPPER_PREFIXES:
            stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if any(k in own for k in stripped):
                state = stripped
                break
    state = {k: v for k, v in state.items() if k in own or not k.startswith(_HEAD_PREFIXES)}
    bad_shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and v.shape != own[k].shape]
    if bad_shapes:
        raise CheckpointError(f"weights in {os.fspath(path)} do not fit this backbone: " + "; ".join(bad_shapes[:5])
                           + (f" (+{len(bad_shapes) - 5} more)" if len(bad_shapes) > 5 else ""))
    matched = [k for k in state if k in own]
    if not matched:
        raise CheckpointError(f"no key of {os.fspath(path)} matches this backbone "
                           f"(file keys like {list(state)[:3]}, model keys like {list(own)[:3]})")
    for note in check_loadable_tensors(state, own, path):
        warnings.warn(f"pretrained weights {os.fspath(path)}: {note}", stacklevel=2)
    result = model.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    _logger.info("loaded %d tensors from %s", len(matched), os.fspath(path))
    if missing or unexpected:
        warnings.warn(
            f"pretrained weights {os.fspath(path)}: {len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}",
            stacklevel=2,
        )
    return missing, unexpected
