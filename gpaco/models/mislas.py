"""MiSLAS (CVPR 2021) models. Stage 1 is a plain :class:`~gpaco.models.contrastive.Classifier`
(its mixup is the method's training step, :mod:`gpaco.methods.mislas`); stage 2 freezes the
stage-1 trunk and rescales the classifier's logits per class.

* :class:`LWSClassifier` (stage 2): ``x`` -> ``scale * fc(backbone(x))`` [B, C]; the trunk is
  frozen and runs without gradient, in train mode (BatchNorm statistics shift to the
  class-balanced batches) only with ``shift_bn``. It keeps the Classifier names
  (``backbone.``, ``fc.``), so a stage-1 checkpoint loads into it as it is
  (:func:`load_stage1`); LWS adds ``lws.scale``.
* ``new_last_block`` (both stages; MiSLAS's Places-LT network): the trunk's last residual
  block (ResNet-152: ``layer4.2``) is replaced by a freshly initialised one of the same shape
  (PyTorch's default init, BatchNorm 1/0, fresh statistics), and only that block and ``fc``
  train. The rest of the (pretrained) trunk is frozen and stays in eval mode, so its
  BatchNorm statistics never move; in stage 2 ``shift_bn`` re-estimates the statistics of
  that block alone. The block keeps its place and name in the trunk, so checkpoints of either
  layout have the same keys; the option is recorded in ``model_config``.
* The LDAM-style CIFAR trunks (:class:`~gpaco.models.cifar_resnet.CifarResNet`) get their
  classifier weight initialised as the original's CIFAR classifier, kaiming normal (fan in,
  ReLU gain) like the trunk; on other trunks ``fc`` keeps PyTorch's default init, as the
  original's ImageNet classifier.
"""
from __future__ import annotations

import os
from typing import Any, Tuple, Union

import torch
from torch import Tensor, nn

from .cifar_resnet import CifarResNet
from .contrastive import Classifier, build_classifier

__all__ = ["LearnableWeightScaling", "LWSClassifier", "NewLastBlockClassifier", "last_residual_block",
           "build_stage1_classifier", "build_lws_classifier", "load_stage1"]


class LearnableWeightScaling(nn.Module):
    """``logits * scale`` with one learnable scale per class (initialised to 1). [B, C] -> [B, C]."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(num_classes))

    def forward(self, logits: Tensor) -> Tensor:
        return logits * self.scale


def last_residual_block(backbone: nn.Module) -> str:
    """The name (``"layer4.2"``) of a ResNet-style trunk's last residual block: the last entry
    of its deepest ``layer<N>`` stage. ValueError when the trunk has no such stages (a ViT)."""
    stages = sorted((int(name[5:]), name) for name, m in backbone.named_children()
                    if name.startswith("layer") and name[5:].isdigit() and isinstance(m, nn.Sequential) and len(m))
    if not stages:
        raise ValueError(f"--new-last-block needs a ResNet-style trunk (stages layer1..layerN of residual blocks); "
                         f"{type(backbone).__name__} has none")
    name = stages[-1][1]
    return f"{name}.{len(getattr(backbone, name)) - 1}"


def _reinitialise(block: nn.Module) -> None:
    """A freshly built block's weights: every layer's own ``reset_parameters`` (convolutions
    PyTorch's default init; BatchNorm weight 1, bias 0, running statistics reset)."""
    for m in block.modules():
        if callable(getattr(m, "reset_parameters", None)):
            m.reset_parameters()


class NewLastBlockClassifier(Classifier):
    """MiSLAS stage 1 on Places-LT: a (pretrained) trunk whose last residual block is new and
    the only part of it that trains (module docstring, ``new_last_block``).

    ``forward(x)``: [B,3,H,W] -> logits [B, C], as :class:`Classifier`. The frozen part runs
    without autograd (none of its parameters requires a gradient) and, whatever the model's
    mode, in eval mode; :attr:`block_name` names the trained block under ``backbone.``.
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, num_classes: int) -> None:
        super().__init__(backbone, feat_dim, num_classes)
        self.block_name = last_residual_block(backbone)
        _reinitialise(self.block)
        freeze_all_but(backbone, self.block_name)

    @property
    def block(self) -> nn.Module:
        return self.backbone.get_submodule(self.block_name)

    def train(self, mode: bool = True) -> "NewLastBlockClassifier":
        super().train(mode)
        self.backbone.train(False)
        self.block.train(mode)
        return self


def freeze_all_but(backbone: nn.Module, block_name: str) -> None:
    """``requires_grad=False`` on every trunk parameter outside ``backbone.<block_name>``."""
    keep = {id(p) for p in backbone.get_submodule(block_name).parameters()}
    for p in backbone.parameters():
        if id(p) not in keep:
            p.requires_grad_(False)


class LWSClassifier(Classifier):
    """MiSLAS stage 2: frozen ``backbone``, trainable ``fc`` and ``lws`` (learnable weight scaling).

    ``shift_bn``: the trunk's BatchNorm layers use batch statistics in training and update
    their running statistics (momentum 0.1) on the class-balanced batches; their affine
    parameters stay frozen. Without it the trunk always runs in eval mode.
    ``new_last_block``: the stage-1 trunk trained only its last residual block
    (:class:`NewLastBlockClassifier`); ``shift_bn`` then re-estimates that block's statistics
    only, the rest of the trunk staying in eval mode, as the original's Places-LT stage 2.
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, num_classes: int, *, shift_bn: bool = False,
                 new_last_block: bool = False) -> None:
        super().__init__(backbone, feat_dim, num_classes)
        self.shift_bn = bool(shift_bn)
        self.block_name = last_residual_block(backbone) if new_last_block else None
        self.lws = LearnableWeightScaling(num_classes)
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    @property
    def new_last_block(self) -> bool:
        return self.block_name is not None

    def train(self, mode: bool = True) -> "LWSClassifier":
        super().train(mode)
        if self.block_name is None:
            self.backbone.train(mode and self.shift_bn)
        else:
            self.backbone.train(False)
            self.backbone.get_submodule(self.block_name).train(mode and self.shift_bn)
        return self

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            feat = self.backbone(x)
        return self.lws(self.fc(feat))


def _classifier_parts(arch, kw) -> Tuple[nn.Module, int]:
    base = build_classifier(arch, 1, **kw)  # the backbone as every classifier builds it
    return base.backbone, base.feat_dim


def _init_classifier(model: Classifier) -> None:
    """The original's CIFAR classifier is initialised as its trunk: kaiming normal (fan in, ReLU
    gain) weight, default bias; its ImageNet/Places classifier keeps PyTorch's default init."""
    if isinstance(model.backbone, CifarResNet):
        nn.init.kaiming_normal_(model.fc.weight)


def build_stage1_classifier(arch: Union[str, nn.Module], num_classes: int, *, new_last_block: bool = False,
                            **kw: Any) -> Classifier:
    """MiSLAS stage 1's :class:`~gpaco.models.contrastive.Classifier`, built as stage 2 builds its
    trunk (so one seed gives one initialisation); ``new_last_block``: a
    :class:`NewLastBlockClassifier` (the block is re-initialised after ``pretrained`` weights
    are loaded); other keywords as ``build_classifier``."""
    backbone, dim = _classifier_parts(arch, kw)
    model = (NewLastBlockClassifier if new_last_block else Classifier)(backbone, dim, num_classes)
    _init_classifier(model)
    return model


def build_lws_classifier(arch: Union[str, nn.Module], num_classes: int, *, shift_bn: bool = False,
                         new_last_block: bool = False, **kw: Any) -> LWSClassifier:
    """:class:`LWSClassifier` (weights: :func:`load_stage1`)."""
    backbone, dim = _classifier_parts(arch, kw)
    model = LWSClassifier(backbone, dim, num_classes, shift_bn=shift_bn, new_last_block=new_last_block)
    _init_classifier(model)
    return model


def load_stage1(model: LWSClassifier, path: str) -> str:
    """Load a stage-1 checkpoint's ``backbone.`` and ``fc.`` weights into a stage-2 model
    (the classifier is kept, not re-initialised; ``lws.scale`` stays 1). Returns a summary line.

    Raises:
        FileNotFoundError: no such file. ValueError: the file does not fit the model, or its
        recorded ``new_last_block`` differs from the model's.
    """
    from gpaco.checkpoint import load_checkpoint, unwrap_state_dict

    if not os.path.isfile(path):
        raise FileNotFoundError(f"stage-1 checkpoint {path}: no such file")
    ckpt = load_checkpoint(path)
    config = ckpt.get("model_config") if isinstance(ckpt, dict) else None
    if isinstance(config, dict) and isinstance(config.get("options"), dict):  # files of ours record the layout
        trained = bool(config["options"].get("new_last_block", False))
        if trained != model.new_last_block:
            raise ValueError(f"stage-1 checkpoint {path} was trained {'with' if trained else 'without'} "
                             f"--new-last-block: give stage 2 --{'' if trained else 'no-'}new-last-block too")
    state = unwrap_state_dict(ckpt, path)
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
