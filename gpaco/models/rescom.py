"""ResCom (rebalanced Siamese contrastive mining): one encoder on two views, a class-balanced queue.

Submodules: ``backbone`` (pooled feature h, width F), ``fc`` (Linear(F, C) on h),
``projection`` (:class:`~gpaco.models.heads.PaCoProjection`: Linear(F, F)-BN-ReLU-Linear(F, d)),
``balanced_queue`` (:class:`~gpaco.losses.rescom.ClassBalancedQueue`: K slots of d per class).

Training, ``forward(view_1, view_2, labels)`` (B images each):

1. both views go through the encoder as ONE batch of 2B (BatchNorm statistics over both views,
   as the original concatenates them);
2. f = normalize(projection(h)), logits = fc(h), labels [y, y];
3. the output carries a snapshot of the queue's keys taken before step 4, so the criterion
   (:class:`~gpaco.losses.criteria.ResComCriterion`) mines the keys as they were;
4. the first view's f, gathered from every process, goes into the queue (every rank writes the
   same rows, so the queues stay identical without a broadcast).

Evaluation: ``fc(backbone(x))``, no prior (docs/method.md#rescom-loss).
"""
from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import all_gather_nograd
from ..losses.rescom import ClassBalancedQueue
from .contrastive import make_backbone
from .heads import PaCoProjection

__all__ = ["ResComOutput", "ResComModel", "build_rescom"]


class ResComOutput(NamedTuple):
    """Training output; rows are view 1 then view 2 (N = 2B)."""

    features: Tensor  # [N, d] L2-normalised projections
    logits: Tensor  # [N, C] classifier logits (view 1 first: the train accuracy reads logits[:B])
    labels: Tensor  # [N] = [y, y]
    keys: Tensor  # [C, K, d] the queue's keys before this batch was enqueued (detached copy)


class ResComModel(nn.Module):
    """Backbone + classifier ``fc`` + projection + :class:`ClassBalancedQueue`.

    Args:
        arch: a timm / CIFAR ResNet name, or a backbone module with ``num_features``.
        num_classes: C.
        proj_dim: d, the contrastive feature size (the original's ``dim_con``).
        queue_per_class: K, keys kept per class (``queue_size_per_cls``).
    """

    def __init__(self, arch: Union[str, nn.Module], num_classes: int, *, proj_dim: int = 128,
                 queue_per_class: int = 10, pretrained: Union[bool, str] = False, drop_path_rate: float = 0.0,
                 backbone_kwargs: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        backbone, dim = make_backbone(arch, pretrained=pretrained, drop_path_rate=drop_path_rate,
                                      backbone_kwargs=backbone_kwargs)
        self.backbone = backbone
        self.feat_dim, self.num_classes, self.proj_dim = dim, num_classes, proj_dim
        self.fc = nn.Linear(dim, num_classes)
        self.projection = PaCoProjection(dim, dim, proj_dim)
        self.balanced_queue = ClassBalancedQueue(num_classes, queue_per_class, proj_dim)

    def forward(self, im_q: Tensor, im_k: Optional[Tensor] = None,
                labels: Optional[Tensor] = None) -> Union[Tensor, ResComOutput]:
        if not self.training or im_k is None or labels is None:
            return self.fc(self.backbone(im_q))
        batch = im_q.shape[0]
        h = self.backbone(torch.cat([im_q, im_k], dim=0))
        features = F.normalize(self.projection(h), dim=1)
        labels = labels.long()
        keys = self.balanced_queue.keys.detach().clone()
        out = ResComOutput(features, self.fc(h), torch.cat([labels, labels]), keys)
        self.balanced_queue.enqueue(all_gather_nograd(features[:batch]), all_gather_nograd(labels))
        return out


def build_rescom(arch: Union[str, nn.Module], num_classes: int, *, device_batch: Optional[int] = None,
                 **kw: Any) -> ResComModel:
    """:class:`ResComModel`; ``device_batch`` (``--device-batch``) is not supported; the other
    contrastive models' options (a FIFO queue's size, a hidden width) are ignored."""
    for k in ("queue_size", "hidden_dim", "global_batch"):
        kw.pop(k, None)
    if device_batch is not None:
        raise ValueError("--device-batch is not supported by --method rescom (its BatchNorm and queue see "
                         "the whole per-process batch)")
    return ResComModel(arch, num_classes, **kw)
