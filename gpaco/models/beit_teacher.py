"""The BEiT-v2 teachers of the distillation tables, through timm, and their released weight files.

``--teacher-arch beitv2_base_patch16_224`` (or ``beitv2_large_patch16_224``, with or without a timm
tag such as ``.in1k_ft_in22k_in1k``) builds timm's BEiT-v2 without its head as the trunk of a gpaco
:class:`~gpaco.models.Classifier`: ``model.backbone(x)`` is the pooled feature the classifier reads,
``fc_norm`` (LayerNorm) of the mean patch token (the class token is not used), 768-d (base) or
1024-d (large); ``model.fc`` is the 1000-class head.

Weight files (read locally, nothing is downloaded):

* the BEiT-v2 release files (``beitv2_{base,large}_patch16_224_pt1k_ft21kto1k.pth``: the state dict
  under ``model`` or ``module``) and the flat state dicts the GenDD scripts load
  (``..._pt1k_ft21kto1k_new.pth``, written by timm 0.6, whose BEiT stored its relative-position
  index tables as buffers). Their keys are timm's (``blocks.N.attn.qkv.weight``, ``q_bias`` /
  ``v_bias``, ``gamma_1`` / ``gamma_2``, ``fc_norm.*``, ``head.*``...) plus
  ``blocks.N.attn.relative_position_index``: a constant that timm now rebuilds instead of loading,
  dropped here (:func:`beit_release_state_dict`). ``head.*`` becomes gpaco's ``fc.*``
  (:func:`gpaco.models.kd_zoo.to_classifier_state_dict`), every other key ``backbone.<key>``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Mapping

import torch

__all__ = ["BEIT_TEACHERS", "BEIT_HEAD_PREFIX", "is_beit", "beit_release_state_dict"]

#: timm name -> pooled feature width D (the GenDD tables: ``D`` 768 / 1024)
BEIT_TEACHERS: Dict[str, int] = {"beitv2_base_patch16_224": 768, "beitv2_large_patch16_224": 1024}

#: the classifier's key prefix in timm's BEiT and in the release files
BEIT_HEAD_PREFIX = "head."

# buffers older BEiT code saved and timm recomputes from the patch grid (non-persistent since timm 0.9)
_DERIVED_SUFFIX = "relative_position_index"


def is_beit(arch: str) -> bool:
    """A timm BEiT name (``beit_*``, ``beitv2_*``, with or without a ``.tag``)."""
    return arch.split(".")[0].startswith("beit")


def beit_release_state_dict(state: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """A BEiT state dict with timm's key names: the relative-position index buffers (constants
    derived from the patch grid) left out; every other key kept as it is."""
    return OrderedDict((k, v) for k, v in state.items() if not k.endswith(_DERIVED_SUFFIX))
