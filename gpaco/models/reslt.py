"""ResLT (TPAMI 2022): a trunk, a branch head and ONE classifier shared by the branches.

The head turns the trunk's feature map into ``K`` feature vectors of the trunk's width
``F`` (branch 0 "H" learns every class, branch 1 "M" the medium and tail classes, branch 2
"T" the tail; docs/method.md#reslt-loss):

=========  ==========================================================================
head       the ``K`` branch features
=========  ==========================================================================
``conv``   ImageNet / iNaturalist: 1x1 conv F -> K*F (no bias) + BatchNorm + ReLU, split
           into K slices of F
``bn``     CIFAR: K BatchNorm2d(F) copies of the map (no ReLU)
=========  ==========================================================================

``pool="after"`` runs the head on the trunk's map and pools its output (the original's
``--after_1x1conv``); ``pool="before"`` pools the trunk first and runs the head on the
pooled vector. The same order is used in training and evaluation; the original pooled
*before* the head at evaluation whatever it did in training, which ``original_eval_pooling``
reproduces (docs/migrating.md).

Shapes (batch B, classes C):

=====================  ==================================================================
training forward       :class:`ResLTOutput`: ``branch_logits`` [K, B, C] = fc(x_b) (with
                       bias), ``logits`` [B, C] their sum
evaluation forward     logits [B, C]: ``eval_gamma=None``: the sum of the branch logits;
                       else ``(sum_b x_b) @ (W / ||W_c||^gamma)^T``, no bias (the
                       gamma-normalised classifier of the ImageNet / iNaturalist scripts)
=====================  ==================================================================
"""
from __future__ import annotations

import math
from typing import Any, Dict, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import CIFAR_ARCHS
from .contrastive import make_backbone

__all__ = ["ResLTOutput", "ResLTModel", "build_reslt", "gamma_normalised_weight"]

HEADS = ("auto", "conv", "bn")
POOLS = ("after", "before")


class ResLTOutput(NamedTuple):
    """Training output: the loss reads ``branch_logits``, the train accuracy ``logits``."""

    branch_logits: Tensor  # [K, B, C]
    logits: Tensor  # [B, C], the sum over the branches


def gamma_normalised_weight(weight: Tensor, gamma: float) -> Tensor:
    """``W_c / ||W_c||^gamma`` per class row: [C, F] -> [C, F] (gamma 0: ``W`` itself)."""
    return weight / weight.norm(dim=1, keepdim=True).pow(gamma)


class ResLTModel(nn.Module):
    """Trunk (``backbone``, any with ``forward_features``), branch ``head``, shared ``fc``.

    Args:
        arch: a timm name or a CIFAR ResNet (``resnet32``...); the trunk's
            ``forward_features`` map [B, F, h, w] feeds the head.
        num_classes: C.
        num_branches: K (3: H, M, T; 2 for iNaturalist's H + M, whose conv head is initialised
            as the original's three-slice block, of which it uses two).
        head: ``conv``, ``bn`` or ``auto`` (``bn`` for the CIFAR ResNets, ``conv`` otherwise).
        pool: ``after`` (head on the map, then pooling) or ``before``.
        eval_gamma: None = plain sum of the branch logits at evaluation; a float = the
            gamma-normalised classifier without bias.
        original_eval_pooling: evaluate with the pooling before the head even when
            training pools after it (the original's mismatch; for comparing with its numbers).
    """

    def __init__(self, arch: Union[str, nn.Module], num_classes: int, *, num_branches: int = 3, head: str = "auto",
                 pool: str = "after", eval_gamma: Optional[float] = None, original_eval_pooling: bool = False,
                 pretrained: Union[bool, str] = False, drop_path_rate: float = 0.0,
                 backbone_kwargs: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        if num_branches < 1:
            raise ValueError(f"num_branches must be >= 1, got {num_branches}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if eval_gamma is not None and eval_gamma < 0:
            raise ValueError(f"eval_gamma must be >= 0 (or None), got {eval_gamma}")
        if head == "auto":
            head = "bn" if isinstance(arch, str) and arch in CIFAR_ARCHS else "conv"
        backbone, dim = make_backbone(arch, pretrained=pretrained, drop_path_rate=drop_path_rate,
                                      backbone_kwargs=backbone_kwargs)
        if not hasattr(backbone, "forward_features"):
            raise ValueError(f"the ResLT head needs the trunk's feature map: {type(backbone).__name__} has no "
                             f"forward_features")
        self.backbone = backbone
        self.feat_dim, self.num_classes, self.num_branches = dim, num_classes, num_branches
        self.head_kind, self.pool, self.eval_gamma = head, pool, eval_gamma
        self.original_eval_pooling = original_eval_pooling
        if head == "conv":
            self.head = nn.Sequential(nn.Conv2d(dim, num_branches * dim, 1, bias=False),
                                      nn.BatchNorm2d(num_branches * dim), nn.ReLU(inplace=True))
            # kaiming fan-out init of the original's block, which is three slices wide even where only
            # two are used (iNaturalist's H + M): std sqrt(2 / (3F)) for a two-branch head too
            fan_out = max(num_branches, 3) * dim
            with torch.no_grad():
                self.head[0].weight.normal_(0.0, nn.init.calculate_gain("relu") / math.sqrt(fan_out))
        else:
            self.head = nn.ModuleList(nn.BatchNorm2d(dim) for _ in range(num_branches))
        self.fc = nn.Linear(dim, num_classes)

    def _head(self, x: Tensor) -> Tensor:
        """[B, F, h, w] -> [B, K*F, h, w] (branch-major channels)."""
        if self.head_kind == "conv":
            return self.head(x)
        return torch.cat([bn(x) for bn in self.head], dim=1)

    def branch_features(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] -> [B, K, F]."""
        fmap = self.backbone.forward_features(images)
        pool_first = self.pool == "before" or (self.original_eval_pooling and not self.training)
        if pool_first:
            x = self._head(F.adaptive_avg_pool2d(fmap, 1))
        else:
            x = F.adaptive_avg_pool2d(self._head(fmap), 1)
        return x.flatten(1).view(x.shape[0], self.num_branches, self.feat_dim)

    def classify(self, feats: Tensor) -> Tensor:
        """Evaluation logits [B, C] from branch features [B, K, F]."""
        if self.eval_gamma is None:
            return self.fc(feats).sum(1)
        return feats.sum(1) @ gamma_normalised_weight(self.fc.weight, self.eval_gamma).t()

    def forward(self, images: Tensor) -> Union[Tensor, ResLTOutput]:
        feats = self.branch_features(images)
        if not self.training:
            return self.classify(feats)
        branch_logits = self.fc(feats).transpose(0, 1)  # [K, B, C]
        return ResLTOutput(branch_logits, branch_logits.sum(0))

    def extra_repr(self) -> str:
        return (f"branches={self.num_branches}, head={self.head_kind!r}, pool={self.pool!r}, "
                f"eval_gamma={self.eval_gamma}, original_eval_pooling={self.original_eval_pooling}")


def build_reslt(arch: Union[str, nn.Module], num_classes: int, *, branch_sizes: Optional[Sequence[int]] = None,
                num_branches: Optional[int] = None, **kw: Any) -> ResLTModel:
    """:class:`ResLTModel` with one branch per entry of ``branch_sizes`` plus the head branch
    (``branch_sizes=None``: 3 branches). Contrastive-only options are ignored."""
    for k in ("proj_dim", "hidden_dim", "queue_size", "global_batch"):
        kw.pop(k, None)
    if num_branches is None:
        num_branches = 1 + len(branch_sizes) if branch_sizes is not None else 3
    elif branch_sizes is not None and num_branches != 1 + len(branch_sizes):
        raise ValueError(f"num_branches {num_branches} does not fit {len(branch_sizes)} branch sizes")
    return ResLTModel(arch, num_classes, num_branches=num_branches, **kw)
