"""Lovász-softmax loss (Berman et al., CVPR 2018): a convex surrogate of the mean Jaccard
(IoU) loss, as mmseg's ``LovaszLoss(loss_type='multi_class', classes='present',
per_image=False)`` computes it (docs/method.md#pixel-gpaco-for-segmentation).

For every class ``c`` present in the labels: the pixel errors ``e_i = |[y_i = c] - p_ic|``
sorted in decreasing order, dotted with the discrete gradient of the Jaccard loss along that
order (:func:`lovasz_grad`); the loss is the mean over those classes. Pixels labelled
``ignore_index`` are left out. All pixels of the batch form one set (``per_image=False``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["lovasz_grad", "lovasz_softmax_flat", "lovasz_softmax"]


def lovasz_grad(gt_sorted: Tensor) -> Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. the sorted errors.

    ``gt_sorted`` [P] (0/1, in the order of decreasing error) -> [P]:
    ``J_k = 1 - |gt ∩ top-k| / |gt ∪ top-k|`` differenced along k.
    """
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def lovasz_softmax_flat(probs: Tensor, labels: Tensor) -> Tensor:
    """``probs`` [P, C] (softmax), ``labels`` [P] in ``[0, C)`` -> scalar (0 for no pixel)."""
    if probs.numel() == 0:
        return probs.sum() * 0.0
    losses = []
    for c in torch.unique(labels).tolist():
        fg = (labels == c).to(probs.dtype)
        errors = (fg - probs[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg[perm])))
    return torch.stack(losses).mean()


def lovasz_softmax(logits: Tensor, labels: Tensor, *, ignore_index: int = 255) -> Tensor:
    """Lovász-softmax of ``logits`` [B, C, H, W] against ``labels`` [B, H, W] (same size),
    over the classes present among the non-ignored pixels; computed in float32."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        probs = F.softmax(logits.float(), dim=1).permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
        flat = labels.reshape(-1)
        valid = flat != ignore_index
        return lovasz_softmax_flat(probs[valid], flat[valid])
