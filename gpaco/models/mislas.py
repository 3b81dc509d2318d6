"""MiSLAS (CVPR 2021) stage-2 model: the stage-1 trunk frozen, the classifier's logits rescaled
per class. (Stage 1 is a plain :class:`~gpaco.models.contrastive.Classifier`; its mixup is the
method's training step, :mod:`gpaco.methods.mislas`.)

:class:`LWSClassifier`: ``x`` -> ``scale * fc(backbone(x))`` [B, C]; the trunk is frozen and runs
without gradient, in train mode (BatchNorm statistics shift to the class-balanced batches)
only with ``shift_bn``. It keeps the Classifier names (``backbone.``, ``fc.``), so a stage-1
checkpoint loads into it as it is (:func:`load_stage1`); LWS adds ``lws.scale``.
"""
from __future__ import annotations

import os
from typing import Any, Union

import torch
from torch import Tensor, nn

from .contrastive import Classifier, build_classifier

__all__ = ["LearnableWeightScaling", "LWSClassifier", "build_stage1_classifier", "build_lws_classifier",
           "load_stage1"]


class LearnableWeightScaling(nn.Module):
    """``logits * scale`` with one learnable scale per class (initialised to 1). [B, C] -> [B, C]."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(num_classes))

    def forward(self, logits: Tensor) -> Tensor:
        return logits * self.scale


class LWSClassifier(Classifier):
    """MiSLAS stage 2: frozen ``backbone``, trainable ``fc`` and ``lws`` (learnable weight scaling).

    ``shift_bn``: the trunk's BatchNorm layers use batch statistics in training and update
    their running statistics (momentum 0.1) on the class-balanced batches; their affine
    parameters stay frozen. Without it the trunk always runs in eval mode.
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, num_classes: int, *, shift_bn: bool = False) -> None:
        super().__init__(backbone, feat_dim, num_classes)
        self.shift_bn = bool(shift_bn)
        self.lws = LearnableWeightScaling(num_classes)
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "LWSClassifier":
        super().train(mode)
        self.backbone.train(mode and self.shift_bn)
        return self

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            feat = self.backbone(x)
        return self.lws(self.fc(feat))


def _classifier_parts(arch, kw):
    base = build_classifier(arch, 1, **kw)  # the backbone as every classifier builds it
    return base.backbone, base.feat_dim


def build_stage1_classifier(arch: Union[str, nn.Module], num_classes: int, **kw: Any) -> Classifier:
    """MiSLAS stage 1's :class:`~gpaco.models.contrastive.Classifier`, built as stage 2 builds its
    trunk (so one seed gives one initialisation); keywords as ``build_classifier``."""
    backbone, dim = _classifier_parts(arch, kw)
    return Classifier(backbone, dim, num_classes)


def build_lws_classifier(arch: Union[str, nn.Module], num_classes: int, *, shift_bn: bool = False,
                         **kw: Any) -> LWSClassifier:
    """:class:`LWSClassifier` (weights: :func:`load_stage1`)."""
    backbone, dim = _classifier_parts(arch, kw)
    return LWSClassifier(backbone, dim, num_classes, shift_bn=shift_bn)


def load_stage1(model: LWSClassifier, path: str) -> str:
    """Load a stage-1 checkpoint's ``backbone.`` and ``fc.`` weights into a stage-2 model
    (the classifier is kept, not re-initialised; ``lws.scale`` stays 1). Returns a summary line.

    Raises:
        FileNotFoundError: no such file. ValueError: the file does not fit the model.
    """
    from gpaco.checkpoint import load_checkpoint, unwrap_state_dict

    if not os.path.isfile(path):
        raise FileNotFoundError(f"stage-1 checkpoint {path}: no such file")
    state = unwrap_state_dict(load_checkpoint(path), path)
    wanted = {k: v for k, v in state.items() if k.startswith(("backbone.", "fc."))}
    own = model.state_dict()
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in wanted.items()
           if k in own and v.shape != own[k].shape]
    missing = [k for k in own if k.startswith(("backbone.", "fc.")) and k not in wanted]
    if bad or missing:
        raise ValueError(f"stage-1 checkpoint {path} does not fit this model (--arch/--num-classes?): "
                         + "; ".join(bad[:3] + [f"missing {missing[:4]}"] * bool(missing)))
    model.load_state_dict(wanted, strict=False)
    return f"loaded stage 1 from {path}: {len(wanted)} tensors (backbone + classifier); lws.scale starts at 1"
