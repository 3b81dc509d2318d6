"""The frozen teacher of the distillation methods (``--teacher-weights``, ``--teacher-arch``).

A teacher is read from a local file in any of the layouts users have:

* a gpaco run folder (its ``best.pth``) or a gpaco checkpoint (``best.pth``, ``checkpoint.pth``,
  a converted ``.safetensors``): the model is rebuilt from the ``model_config`` the file
  records (:func:`gpaco.methods.rebuild.build_model_from_checkpoint`), with the test-time
  forward of the method that trained it; ``--teacher-arch`` may be left out;
* an mdistiller checkpoint (``{"model": state_dict, ...}``, e.g. ``ckpt_epoch_240.pth``), a
  torchvision state dict (``resnet34-333f7ec4.pth``), with or without DDP's ``module.``:
  ``--teacher-arch`` names the network (``kd_resnet32x4``, ``resnet34``...) and the file loads
  strictly into gpaco's classifier (:func:`gpaco.models.load_original_checkpoint`).

* a BEiT-v2 release file or the flat state dict the GenDD scripts load
  (``beitv2_base_patch16_224_pt1k_ft21kto1k_new.pth``): ``--teacher-arch beitv2_base_patch16_224``
  (or ``beitv2_large_patch16_224``) builds timm's network and the file loads strictly
  (:mod:`gpaco.models.beit_teacher`).

Nothing in a file runs as code (weights-only reading). A file that does not fit the named
network is one error line naming both flags.

:class:`FrozenTeacher` keeps the network in eval mode whatever ``train()`` is called with,
with ``requires_grad`` off and its forward under ``no_grad``. The distillation methods hold it
as an attribute of themselves, not of the student, so it is outside the optimizer, the saved
model state and DistributedDataParallel.

Besides its logits, a teacher whose logits are one linear classifier on a pooled feature (every
``--teacher-arch`` network, and gpaco checkpoints of a ``Classifier``, PaCo, GPaCo or MiSLAS
stage-2 model) gives that feature, ``teacher.features(images)`` [B, D], and the classifier,
``teacher.classifier`` = (weight [C, D], bias [C]): ``F.linear(features, *classifier)`` are its
logits (what Generative Distribution Distillation generates and decodes with).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpaco.checkpoint import CheckpointError, load_checkpoint, unwrap_state_dict
from gpaco.engine.args import FlagError
from gpaco.models.beit_teacher import beit_release_state_dict, is_beit
from gpaco.models.contrastive import Classifier, GPaCoModel, PaCoModel, build_classifier
from gpaco.models.convert import is_model_config, read_checkpoint
from gpaco.models.kd_zoo import load_original_checkpoint
from gpaco.models.mislas import LWSClassifier

from .base import Method
from .rebuild import build_model_from_checkpoint, checkpoint_model_config
from .registry import get_method

__all__ = ["FeatureHead", "FrozenTeacher", "feature_head", "load_teacher", "random_teacher", "teacher_file"]

#: ``(network, images) -> logits``: the test-time forward of the method that trained the teacher.
Forward = Callable[[nn.Module, Tensor], Tensor]


@dataclass(frozen=True)
class FeatureHead:
    """How a network's logits factor into a pooled feature and one linear classifier:
    ``features(net, images)`` -> [B, D]; ``classifier(net)`` -> (weight [C, D], bias [C]), with
    ``F.linear(features(net, x), *classifier(net))`` = the network's eval-mode logits."""

    features: Callable[[nn.Module, Tensor], Tensor]
    classifier: Callable[[nn.Module], Tuple[Tensor, Tensor]]


def _linear(fc: nn.Linear) -> Tuple[Tensor, Tensor]:
    bias = fc.bias if fc.bias is not None else fc.weight.new_zeros(fc.out_features)
    return fc.weight.detach(), bias.detach()


def _lws_linear(net: nn.Module) -> Tuple[Tensor, Tensor]:
    """MiSLAS stage 2 scales each class's logit: scale * (W f + b) = (scale W) f + scale b."""
    weight, bias = _linear(net.fc)
    scale = net.lws.scale.detach()
    return weight * scale[:, None], bias * scale


def _paco_features(net: nn.Module, images: Tensor) -> Tensor:
    pooled = net.encoder_q.backbone(images)
    return F.normalize(pooled, dim=1) if net.normalize_pooled else pooled


def feature_head(net: nn.Module) -> Optional[FeatureHead]:
    """The :class:`FeatureHead` of a gpaco model whose eval-mode logits are a linear classifier
    on its pooled feature; None for the others (ResLT, RIDE, ResCom, multi-task, segmentation
    models: several branches or heads). The model's type decides, not its attribute names."""
    if isinstance(net, LWSClassifier):
        return FeatureHead(lambda n, x: n.backbone(x), _lws_linear)
    if isinstance(net, PaCoModel):
        return FeatureHead(_paco_features, lambda n: _linear(n.fc))
    if isinstance(net, GPaCoModel):
        return FeatureHead(lambda n, x: n.encoder.backbone(x), lambda n: _linear(n.fc))
    if isinstance(net, Classifier) and type(net).forward is Classifier.forward:
        return FeatureHead(lambda n, x: n.backbone(x), lambda n: _linear(n.fc))
    return None


class FrozenTeacher(nn.Module):
    """A teacher network that never trains: eval mode always, no parameter requires grad,
    forward under ``no_grad``. ``teacher(images)`` -> logits [B, C].

    ``teacher.features(images)`` -> the pooled feature [B, D] its classifier reads, and
    ``teacher.classifier`` -> (weight [C, D], bias [C]), for the teachers whose logits are
    ``F.linear(features, weight, bias)`` (:attr:`has_features`; ``forward`` None, the network's
    own forward, and a :func:`feature_head` the network's type has).

    ``arch``, ``source``: what it is and where it came from (for the log line)."""

    def __init__(self, net: nn.Module, *, arch: str, source: str, forward: Optional[Forward] = None) -> None:
        super().__init__()
        self.net = net.requires_grad_(False)
        self.arch, self.source = arch, source
        self._forward = forward
        # a method's own test-time forward (several experts...) is not one classifier on one feature
        self._head = feature_head(net) if forward is None else None
        self.train(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        """Stays in eval mode: BatchNorm uses its running statistics, dropout is off."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        out = self.net(images) if self._forward is None else self._forward(self.net, images)
        return out["logits"] if isinstance(out, Mapping) else out  # a method's forward with extra heads (GenDD)

    @property
    def has_features(self) -> bool:
        """Whether :meth:`features` and :attr:`classifier` exist for this teacher."""
        return self._head is not None

    def _feature_head(self) -> FeatureHead:
        if self._head is None:
            raise FlagError(f"teacher {self.arch} from {self.source}: its logits are not one linear classifier on a "
                            f"pooled feature ({type(self.net).__name__}), so it has no feature / classifier to "
                            f"distil; give a teacher of a --teacher-arch network or a gpaco checkpoint of a "
                            f"Classifier, PaCo, GPaCo or MiSLAS model")
        return self._head

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """The pooled penultimate feature [B, D] of images [B, 3, H, W] (eval mode, no gradient)."""
        return self._feature_head().features(self.net, images)

    @property
    def classifier(self) -> Tuple[Tensor, Tensor]:
        """(weight [C, D], bias [C]) of the frozen classifier, on the teacher's device, without
        gradient: the network's own tensors (no copy) where its classifier is a plain Linear."""
        with torch.no_grad():
            return self._feature_head().classifier(self.net)

    @property
    def feature_dim(self) -> int:
        """D, the width of :meth:`features`."""
        return int(self.classifier[0].shape[1])


def teacher_file(weights: str) -> str:
    """The file ``--teacher-weights`` names: a run folder's ``best.pth``, or the file itself."""
    if os.path.isdir(weights):
        best = os.path.join(weights, "best.pth")
        if not os.path.isfile(best):
            raise FlagError(f"--teacher-weights {weights}: the folder has no best.pth (give a gpaco run folder, or "
                            f"the checkpoint file itself)")
        return best
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"--teacher-weights {weights}: no such file or folder")
    return weights


def _is_gpaco_checkpoint(obj) -> bool:
    return isinstance(obj, dict) and (is_model_config(obj.get("model_config"))
                                      or ("method" in obj and "args" in obj and "model" in obj))


def load_teacher(weights: str, *, arch: Optional[str], num_classes: int) -> FrozenTeacher:
    """The frozen teacher ``--teacher-weights`` / ``--teacher-arch`` describe, on the CPU.

    Raises :class:`~gpaco.engine.args.FlagError` (a flag does not fit the file) or
    :class:`~gpaco.checkpoint.CheckpointError` (the file is not a checkpoint) with one line."""
    path = teacher_file(weights)
    # a .safetensors file is one of ours (tools/convert_checkpoint.py), its header says what it holds
    if path.endswith(".safetensors"):
        return _rebuilt(path, arch, num_classes)
    loaded = load_checkpoint(path, allow_data_objects=True)
    if _is_gpaco_checkpoint(loaded):
        return _rebuilt(path, arch, num_classes)
    if not arch:
        raise FlagError(f"--teacher-weights {path} is not a gpaco checkpoint (an mdistiller or torchvision file?): "
                        f"give --teacher-arch, the network it holds (e.g. kd_resnet32x4, resnet34)")
    try:
        net = build_classifier(arch, num_classes)
    except (ValueError, KeyError, RuntimeError) as e:
        raise FlagError(f"--teacher-arch {arch}: {e}") from None
    if is_beit(arch):  # the release files also hold the constant relative-position index tables
        try:
            loaded = beit_release_state_dict(unwrap_state_dict(loaded, path))
        except ValueError as e:
            raise CheckpointError(str(e)) from None
    try:
        load_original_checkpoint(net, loaded, arch, name=path)  # the file read above, not read again
    except CheckpointError as e:
        raise FlagError(f"--teacher-arch {arch} does not fit --teacher-weights (wrong arch, or a teacher of "
                        f"another class count than the data's {num_classes}?): {e}") from None
    return FrozenTeacher(net, arch=arch, source=path)


def _rebuilt(path: str, arch: Optional[str], num_classes: int) -> FrozenTeacher:
    """A gpaco checkpoint's model, rebuilt from what it records."""
    loaded = read_checkpoint(path)
    cfg = checkpoint_model_config(loaded)
    if arch and cfg["arch"] != arch:
        raise FlagError(f"--teacher-arch {arch}, but --teacher-weights {path} holds a {cfg['arch']} "
                        f"({cfg['method']}); drop --teacher-arch or give the right file")
    if int(cfg["num_classes"]) != num_classes:
        raise FlagError(f"--teacher-weights {path} predicts {cfg['num_classes']} classes, the data has "
                        f"{num_classes}")
    net, _ = build_model_from_checkpoint(loaded, method=cfg["method"], arch=cfg["arch"],
                                         num_classes=int(cfg["num_classes"]))
    method = get_method(cfg["method"])
    # the default test-time forward is the network's own: left as None, the network's type tells
    # whether its logits factor into a feature and a classifier
    own_forward = type(method).eval_forward is not Method.eval_forward
    return FrozenTeacher(net, arch=cfg["arch"], source=path, forward=method.eval_forward if own_forward else None)


def random_teacher(arch: str, num_classes: int, *, image_size: Optional[int] = None) -> FrozenTeacher:
    """A teacher with random weights (dry runs without the teacher's file). With ``image_size`` a BEiT
    teacher is a one-block stand-in at that input size (its grid is fixed; BEiT-v2-L has 300M parameters)."""
    kwargs = {"backbone_kwargs": {"depth": 1, "img_size": image_size}} if image_size and is_beit(arch) else {}
    return FrozenTeacher(build_classifier(arch, num_classes, **kwargs), arch=arch,
                         source="random weights" + (", one block" if kwargs else ""))
