"""Multi-task baseline of the GPaCo paper: cross-entropy + alpha * SupCon.

SupCon uses the same anchors and contrast set as PaCo but no center terms: for each
anchor the softmax runs over the other contrast rows only. The class re-weighting of
the original's MultiTaskLoss evaluates to all ones, so none is applied here
(docs/method.md#multi-task-baseline).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .ce import cross_entropy
from .paco import compute_dtype

__all__ = ["supcon_rows", "multitask_loss"]


def supcon_rows(features: Tensor, labels: Tensor, num_anchors: int, *, temperature: float) -> Tensor:
    """Per-anchor supervised contrastive loss. features [M, D], labels [M] -> [n]; batched over
    independent groups: [G, M, D], [G, M] -> [G, n].

    ``loss_i = -mean_{j in P(i)} log( exp(s_ij) / sum_{j != i} exp(s_ij) )`` with
    ``s_ij = <f_i, f_j> / T``; an anchor without positives contributes 0.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = num_anchors
    dtype = compute_dtype(features)
    with torch.autocast(device_type=features.device.type, enabled=False):
        feats = features.to(dtype)
        sims = torch.matmul(feats[..., :n, :], feats.transpose(-1, -2)) / temperature  # [(G,) n, M]
        sims = sims - sims.amax(-1, keepdim=True).detach()
        idx = torch.arange(n, device=feats.device)
        not_self = torch.ones(sims.shape[-2:], dtype=torch.bool, device=feats.device)
        not_self[idx, idx] = False
        log_denom = torch.log((sims.exp() * not_self).sum(-1, keepdim=True) + 1e-12)
        positives = (labels[..., :n, None] == labels[..., None, :]) & not_self
        num_pos = positives.sum(-1).to(dtype)
        pos_log_prob = torch.where(positives, sims - log_denom, sims.new_zeros(())).sum(-1)
        return -pos_log_prob / num_pos.clamp_min(1.0)


def multitask_loss(
    features: Tensor,
    labels: Tensor,
    logits: Tensor,
    num_anchors: int,
    *,
    alpha: float,
    temperature: float,
    log_prior: Optional[Tensor] = None,
    label_smoothing: float = 0.0,
) -> Tensor:
    """CE on the anchors' logits + ``alpha`` * SupCon over the same anchors.

    Args:
        features: [M, D] L2-normalised; rows ``[:num_anchors]`` are anchors. [G, M, D]: G
            independent contrast sets (``--device-batch``), both terms averaged over all anchors.
        labels: [M] ([G, M]).
        logits: [num_anchors, C] classifier logits ([G, num_anchors, C]).
        log_prior: [C]; when given the CE is balanced softmax (ImageNet-LT multi-task).
        label_smoothing: smoothed CE (ViT multi-task: 0.1).
    """
    if logits.shape[-2] != num_anchors:
        raise ValueError(f"logits must have num_anchors={num_anchors} rows, got {logits.shape[-2]}")
    ce = cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[..., :num_anchors].reshape(-1),
                       log_prior=log_prior, label_smoothing=label_smoothing)
    return ce + alpha * supcon_rows(features, labels, num_anchors, temperature=temperature).mean()
