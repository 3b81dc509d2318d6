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

Nothing in a file runs as code (weights-only reading). A file that does not fit the named
network is one error line naming both flags.

:class:`FrozenTeacher` keeps the network in eval mode whatever ``train()`` is called with,
with ``requires_grad`` off and its forward under ``no_grad``. The distillation methods hold it
as an attribute of themselves, not of the student, so it is outside the optimizer, the saved
model state and DistributedDataParallel.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from gpaco.checkpoint import CheckpointError, load_checkpoint
from gpaco.engine.args import FlagError
from gpaco.models.contrastive import build_classifier
from gpaco.models.convert import is_model_config, read_checkpoint
from gpaco.models.kd_zoo import load_original_checkpoint

from .rebuild import build_model_from_checkpoint, checkpoint_model_config
from .registry import get_method

__all__ = ["FrozenTeacher", "load_teacher", "teacher_file"]

#: ``(network, images) -> logits``: the test-time forward of the method that trained the teacher.
Forward = Callable[[nn.Module, Tensor], Tensor]


class FrozenTeacher(nn.Module):
    """A teacher network that never trains: eval mode always, no parameter requires grad,
    forward under ``no_grad``. ``teacher(images)`` -> logits [B, C].

    ``arch``, ``source``: what it is and where it came from (for the log line)."""

    def __init__(self, net: nn.Module, *, arch: str, source: str, forward: Optional[Forward] = None) -> None:
        super().__init__()
        self.net = net.requires_grad_(False)
        self.arch, self.source = arch, source
        self._forward = forward
        self.train(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        """Stays in eval mode: BatchNorm uses its running statistics, dropout is off."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return self.net(images) if self._forward is None else self._forward(self.net, images)


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
    return FrozenTeacher(net, arch=cfg["arch"], source=path, forward=get_method(cfg["method"]).eval_forward)


def random_teacher(arch: str, num_classes: int) -> FrozenTeacher:
    """A teacher with random weights (dry runs without the teacher's file)."""
    return FrozenTeacher(build_classifier(arch, num_classes), arch=arch, source="random weights")
