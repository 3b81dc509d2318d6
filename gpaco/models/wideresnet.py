"""The WideResNets of adversarial training (TRADES / AWP / DKL): ``--arch wrn34_10`` and ``wrn28_10``.

The network is the one DKL's adversarial-training code builds as ``WideResNet34_10`` (its
``models/wideresnet.py``, a TRADES/AWP fork), written for this library:

* ``conv1`` 3x3, 3 -> 16; three stages ``block1..3`` of n = (depth - 4) / 6 pre-activation
  blocks (BN-ReLU-conv3x3-BN-ReLU-conv3x3, keys ``blockS.layer.i.{bn1,conv1,bn2,conv2}``) with
  16k / 32k / 64k channels (k = widen factor) and strides 1, 2, 2; where the width changes the
  shortcut is the 1x1 ``convShortcut`` on the pre-activated input;
* ``bn1`` + ReLU, global average pooling, a plain Linear ``fc`` ([B, 64k] -> [B, C]);
* dropout 0 (every script), no input normalisation: the network sees pixels in [0, 1]
  (``--norm none``), the space the attack's epsilon is measured in;
* init: conv ~ N(0, 2 / (k*k*out_channels)), BN weight 1 / bias 0, Linear bias 0 (weight:
  PyTorch's default).

Some TRADES versions also build a ``sub_block1`` (a copy of ``block1`` that ``forward`` never
calls); DKL's ``WideResNet34_10`` has none, so neither has ours, and the parameter counts are
DKL's: 46,160,474 for WRN-34-10 with 10 classes (46,218,164 with 100), 36,479,194 for WRN-28-10
with 10 classes (``tests/test_wideresnet.py`` counts them by hand). The original pools with
``avg_pool2d(8)``, sized for 32-px inputs; ours pools globally, the same at 32 px.

This is the same pre-activation WRN as mdistiller's ``wrn_d_k`` (both descend from the
reference WRN code), so it shares :class:`~gpaco.models.kd_cifar.KDWideResNet`'s modules, key
names and initialisation; only the names and the depth/width presets are ours.

Checkpoints. The original saves ``torch.save(model.state_dict())`` of an ``nn.DataParallel``
model (``ours-model-epoch{e}.pt``: every key prefixed ``module.``). Such a file loads into
gpaco's :class:`~gpaco.models.Classifier` (``backbone.*`` + ``fc.*``) with
``load_original_checkpoint(build_classifier("wrn34_10", 10), path, "wrn34_10")``
(:func:`gpaco.models.load_original_checkpoint`), and ``tools/eval.py --checkpoint path --arch
wrn34_10 --method ce`` reads it as a plain classifier.
"""
from __future__ import annotations

from typing import Dict, Tuple

from .kd_cifar import KDWideResNet

__all__ = ["WideResNet", "WRN_ARCHS", "wrn_backbone"]

# --arch name -> (depth, widen factor)
WRN_ARCHS: Dict[str, Tuple[int, int]] = {
    "wrn34_10": (34, 10),  # WRN-34-10: every adversarial-training script of TRADES / AWP / DKL
    "wrn28_10": (28, 10),  # WRN-28-10 (ReLU; the original's Swish WRN-28-10 is another network)
}


class WideResNet(KDWideResNet):
    """WRN-``depth``-``widen_factor`` (depth 6n + 4) with the TRADES/AWP/DKL key names.

    ``forward(x)``: [B, 3, H, W] in [0, 1] -> logits [B, num_classes], or the pooled feature
    [B, 64 * widen_factor] when built with ``num_classes=0`` (the backbone gpaco's classifier
    wraps). ``forward_features(x)`` -> the last feature map [B, 64k, H/4, W/4] after ``bn1`` + ReLU.
    """

    def __init__(self, depth: int = 34, widen_factor: int = 10, num_classes: int = 10) -> None:
        if widen_factor < 1:
            raise ValueError(f"a WideResNet's widen factor must be >= 1, got {widen_factor}")
        super().__init__(depth, widen_factor, num_classes)
        self.depth, self.widen_factor = depth, widen_factor

    def extra_repr(self) -> str:
        return f"depth={self.depth}, widen_factor={self.widen_factor}, num_classes={self.num_classes}"


def wrn_backbone(arch: str) -> WideResNet:
    """The trunk of ``--arch`` ``arch`` without its classifier: [B, 3, H, W] -> pooled [B, F]
    (what :func:`~gpaco.models.create_backbone` builds for ``wrn*``)."""
    if arch not in WRN_ARCHS:
        raise ValueError(f"unknown WideResNet arch {arch!r}; known: {', '.join(WRN_ARCHS)}")
    depth, widen = WRN_ARCHS[arch]
    return WideResNet(depth, widen, num_classes=0)
