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

With ``device_batch=N`` (``--device-batch``) the local batch is G = B / N virtual devices, each
holding what one GPU of the original holds: its N samples' two views (2N images), over which
its BatchNorm normalises, and its own in-batch contrast set (the 2N - 1 other rows of the
device; the queue keys are mined for every row from the one shared queue). The encoder input is
ordered device by device, ``[v1_0, v2_0, v1_1, v2_1, ...]`` (``v1_g``: view 1 of device g), so
each BatchNorm chunk of 2N rows is one device
(:class:`~gpaco.models.view_bn.ViewBatchNorm2d`), and the output is batched over devices:
features [G, 2N, d], logits [G, 2N, C], labels [G, 2N] = [y_g, y_g]. The queue receives view 1
in batch order, which is the original's rank order of the devices.

Evaluation: ``fc(backbone(x))``, no prior (docs/method.md#rescom-loss).
"""
from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import all_gather_nograd
from ..losses.rescom import ClassBalancedQueue
from .contrastive import device_groups, make_backbone
from .heads import PaCoProjection
from .view_bn import convert_view_batchnorm

__all__ = ["ResComOutput", "ResComModel", "build_rescom"]


class ResComOutput(NamedTuple):
    """Training output; rows are view 1 then view 2 (N = 2B). With G > 1 virtual devices every
    tensor but ``keys`` gains a leading device dimension, each device's rows its own view 1
    then view 2 (N = 2B / G)."""

    features: Tensor  # [N, d] L2-normalised projections ([G, N, d])
    logits: Tensor  # [N, C] classifier logits (view 1 first: the train accuracy reads logits[:B]) ([G, N, C])
    labels: Tensor  # [N] = [y, y] ([G, N])
    keys: Tensor  # [C, K, d] the queue's keys before this batch was enqueued (detached copy)


class ResComModel(nn.Module):
    """Backbone + classifier ``fc`` + projection + :class:`ClassBalancedQueue`.

    Args:
        arch: a timm / CIFAR ResNet name, or a backbone module with ``num_features``.
        num_classes: C.
        proj_dim: d, the contrastive feature size (the original's ``dim_con``).
        queue_per_class: K, keys kept per class (``queue_size_per_cls``).
        device_batch: N samples per virtual device (``--device-batch``; module docstring), or
            None: the whole local batch is one device.
    """

    def __init__(self, arch: Union[str, nn.Module], num_classes: int, *, proj_dim: int = 128,
                 queue_per_class: int = 10, pretrained: Union[bool, str] = False, drop_path_rate: float = 0.0,
                 backbone_kwargs: Optional[Dict[str, Any]] = None, device_batch: Optional[int] = None) -> None:
        super().__init__()
        backbone, dim = make_backbone(arch, pretrained=pretrained, drop_path_rate=drop_path_rate,
                                      backbone_kwargs=backbone_kwargs)
        self.backbone = backbone
        self.feat_dim, self.num_classes, self.proj_dim = dim, num_classes, proj_dim
        self.fc = nn.Linear(dim, num_classes)
        self.projection = PaCoProjection(dim, dim, proj_dim)
        self.balanced_queue = ClassBalancedQueue(num_classes, queue_per_class, proj_dim)
        self.device_batch = device_batch
        if device_batch is not None:  # a device's BatchNorm batch is its samples' two views
            convert_view_batchnorm(self.backbone, device_batch=2 * device_batch)
            convert_view_batchnorm(self.projection, device_batch=2 * device_batch)

    def forward(self, im_q: Tensor, im_k: Optional[Tensor] = None,
                labels: Optional[Tensor] = None) -> Union[Tensor, ResComOutput]:
        if not self.training or im_k is None or labels is None:
            return self.fc(self.backbone(im_q))
        batch = im_q.shape[0]
        groups = device_groups(batch, self.device_batch)
        labels = labels.long()
        # device by device: [v1_0, v2_0, v1_1, v2_1, ...] (one chunk, [v1, v2], without devices)
        h = self.backbone(torch.cat([v for pair in zip(im_q.chunk(groups), im_k.chunk(groups)) for v in pair]))
        features = F.normalize(self.projection(h), dim=1)
        logits = self.fc(h)
        keys = self.balanced_queue.keys.detach().clone()
        if groups == 1:
            out = ResComOutput(features, logits, torch.cat([labels, labels]), keys)
            first_view = features[:batch]
        else:
            features, logits = features.view(groups, -1, features.shape[1]), logits.view(groups, -1, logits.shape[1])
            device_labels = labels.view(groups, -1)
            out = ResComOutput(features, logits, torch.cat([device_labels, device_labels], dim=1), keys)
            first_view = features[:, :batch // groups].reshape(batch, -1)  # batch order
        self.balanced_queue.enqueue(all_gather_nograd(first_view), all_gather_nograd(labels))
        return out


def build_rescom(arch: Union[str, nn.Module], num_classes: int, **kw: Any) -> ResComModel:
    """:class:`ResComModel`; the other contrastive models' options (a FIFO queue's size, a
    hidden width) are ignored."""
    for k in ("queue_size", "hidden_dim", "global_batch"):
        kw.pop(k, None)
    return ResComModel(arch, num_classes, **kw)
