"""Parametric contrastive loss: PaCo (ICCV 2021) and GPaCo (TPAMI 2023) in one function.

Every recipe (long-tailed, full ImageNet, CIFAR, ViT, segmentation) goes through
:func:`paco_rows`; the public functions only choose anchors and reduce.

The math, per anchor ``i`` with label ``y_i`` (docs/method.md#paco-loss, docs/method.md#gpaco-loss):

* center logits ``c_ic = logits_ic + log_prior_c`` (raw classifier logits: the class
  centers are the classifier's weight rows; no normalisation, no temperature);
* sample logits ``s_ij = <f_i, f_j> / T`` over all ``M`` contrast rows;
* one softmax over ``[c_i1..c_iC, s_i0..s_i(M-1)]`` whose denominator weights the
  center terms by 1, the sample terms by ``gamma`` and the anchor's own column by 0;
* soft targets: ``beta`` on the true center (label-smoothed by ``smoothing``) and
  ``alpha`` on every other contrast row of the same class;
* ``loss_i = -sum_t w_it log p_it / sum_t w_it``.

The row maximum (detached, taken over centers and all samples including the anchor
itself) is subtracted before ``exp`` and ``1e-12`` is added inside the log, exactly
as the original does, so results agree with its numbers to float32 rounding.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["paco_loss", "paco_rows", "log_prior_from_counts", "compute_dtype", "host_readable"]


def host_readable(t: Tensor) -> bool:
    """Whether reading ``t`` back to Python stalls nothing: a CPU tensor in eager mode. Label-range
    checks run only then; on a GPU an out-of-range label fails the indexing kernel instead, as in
    cross-entropy, and the step stays free of host syncs."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (fp16/bf16 inputs are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def log_prior_from_counts(class_counts, eps: float = 1e-9) -> Tensor:
    """``log(n_c / sum(n) + eps)``: the logit adjustment of the long-tailed recipes. [C]"""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() == 0:
        raise ValueError(f"class_counts must be a non-empty 1-D list of counts, got shape {tuple(counts.shape)}")
    if (counts < 0).any() or counts.sum() <= 0:
        raise ValueError("class_counts must be non-negative with a positive sum")
    return torch.log(counts / counts.sum() + eps).float()


def _check_common(features: Tensor, labels: Tensor, logits: Tensor, num_anchors: int, temperature: float) -> None:
    if features.ndim != 3 or labels.ndim != 2 or logits.ndim != 3:
        raise ValueError("internal: expected batched [B, M, D] features, [B, M] labels, [B, n, C] logits")
    b, m, _ = features.shape
    if labels.shape != (b, m):
        raise ValueError(f"labels must have one entry per feature row: features {m} rows, labels {labels.shape[-1]}")
    if not 0 < num_anchors <= m:
        raise ValueError(f"num_anchors must be in 1..{m} (the number of feature rows), got {num_anchors}")
    if logits.shape[:2] != (b, num_anchors):
        raise ValueError(
            f"logits must have num_anchors={num_anchors} rows (one per anchor), got {logits.shape[-2]}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def paco_rows(
    features: Tensor,
    labels: Tensor,
    logits: Tensor,
    num_anchors: int,
    *,
    alpha: float,
    temperature: float,
    beta: float = 1.0,
    gamma: float = 1.0,
    log_prior: Optional[Tensor] = None,
    smoothing: float = 0.0,
    center_valid: Optional[Tensor] = None,
) -> Tensor:
    """Per-anchor PaCo loss, batched over independent groups.

    Args:
        features: [G, M, D] L2-normalised rows; the first ``num_anchors`` rows of each
            group are the anchors, all ``M`` rows are the contrast set.
        labels: [G, M] integer labels of the rows.
        logits: [G, n, C] classifier (center) logits of the anchors.
        center_valid: [G, n] bool; anchors marked False get no center target (the
            segmentation ignore label). Their sample targets are still computed.
    Returns:
        [G, n] per-anchor losses in float32 (float64 for float64 inputs).
    """
    _check_common(features, labels, logits, num_anchors, temperature)
    n = num_anchors
    num_classes = logits.shape[-1]
    dtype = compute_dtype(features, logits)
    with torch.autocast(device_type=features.device.type, enabled=False):
        feats = features.to(dtype)
        centers = logits.to(dtype)
        if log_prior is not None:
            if log_prior.shape[-1] != num_classes:
                raise ValueError(f"log_prior has {log_prior.shape[-1]} classes, logits have {num_classes}")
            centers = centers + log_prior.to(device=centers.device, dtype=dtype)
        anchors = feats[:, :n]
        if feats.shape[0] == 1:  # 2-D mm: bmm's backward would copy the transposed [M, D] rows
            sims = (anchors[0] @ feats[0].T).unsqueeze(0) / temperature  # [1, n, M]
        else:
            sims = torch.matmul(anchors, feats.transpose(1, 2)) / temperature  # [G, n, M]

        # Shared, detached row maximum over centers and every sample (self included).
        row_max = torch.maximum(centers.amax(-1), sims.amax(-1)).detach().unsqueeze(-1)
        centers = centers - row_max
        sims = sims - row_max

        idx = torch.arange(n, device=feats.device)
        not_self = torch.ones(sims.shape[-2:], dtype=torch.bool, device=feats.device)
        not_self[idx, idx] = False  # the anchor's own column: out of numerator and denominator
        sample_exp = sims.exp() * not_self
        denom = centers.exp().sum(-1)
        sample_sum = sample_exp.sum(-1)
        denom = denom + (sample_sum * gamma if gamma != 1.0 else sample_sum)
        log_denom = torch.log(denom + 1e-12).unsqueeze(-1)  # [G, n, 1]

        # Sample positives: same label, not the anchor itself. sum_j alpha * (s_ij - log_denom_i)
        # is computed as alpha * (sum_j s_ij - num_pos_i * log_denom_i): two fewer [n, M] passes.
        positives = labels[:, :n, None] == labels[:, None, :]  # [G, n, M]
        positives[:, idx, idx] = False
        positives = positives.to(dtype)
        num_pos = positives.sum(-1)
        sample_term = alpha * ((sims * positives).sum(-1) - num_pos * log_denom.squeeze(-1))

        # Center target: beta on the true class, label-smoothed over the others.
        target = labels[:, :n]
        valid = (target >= 0) & (target < num_classes)
        if center_valid is not None:
            valid = valid & center_valid
        log_p_centers = centers - log_denom  # [G, n, C]
        log_p_true = log_p_centers.gather(-1, target.clamp(0, num_classes - 1).unsqueeze(-1)).squeeze(-1)
        if smoothing > 0:
            off = (log_p_centers.sum(-1) - log_p_true) / (num_classes - 1)
            center_term = beta * ((1.0 - smoothing) * log_p_true + smoothing * off)
        else:
            center_term = beta * log_p_true
        center_term = torch.where(valid, center_term, center_term.new_zeros(()))
        weight_sum = torch.where(valid, beta, 0.0).to(dtype) + alpha * num_pos

        numer = center_term + sample_term
        return -numer / (weight_sum + 1e-12)


def paco_loss(
    features: Tensor,
    labels: Tensor,
    logits: Tensor,
    num_anchors: int,
    *,
    alpha: float,
    temperature: float,
    beta: float = 1.0,
    gamma: float = 1.0,
    log_prior: Optional[Tensor] = None,
    smoothing: float = 0.0,
) -> Tensor:
    """PaCo / GPaCo loss, averaged over anchors.

    Args:
        features: [M, D] L2-normalised embeddings. Rows ``[:num_anchors]`` are the
            anchors (q for PaCo; q and k for GPaCo); the rest (keys, queue) only
            contrast. [G, M, D]: G independent contrast sets (the virtual devices of
            ``--device-batch``), averaged over all their anchors.
        labels: [M] class of every row ([G, M]).
        logits: [num_anchors, C] classifier logits of the anchors (the centers; [G, num_anchors, C]).
        num_anchors: how many leading rows (of each group) are anchors.
        alpha: weight of each same-class sample positive.
        temperature: T of the sample-sample logits.
        beta: weight of the center positive.
        gamma: weight of the sample terms in the softmax denominator.
        log_prior: [C] log class prior added to the center logits (long-tailed
            recipes), or None.
        smoothing: label smoothing of the center target (GPaCo full-ImageNet: 0.1).
    Returns:
        Scalar loss (float32, or float64 for float64 inputs).
    """
    grouped = features.ndim == 3
    if not ((features.ndim, labels.ndim, logits.ndim) == (2, 1, 2) or (grouped and labels.ndim == 2
                                                                       and logits.ndim == 3)):
        raise ValueError(
            f"expected features [M, D], labels [M], logits [n, C] (or [G, ...] each); got "
            f"{tuple(features.shape)}, {tuple(labels.shape)}, {tuple(logits.shape)}"
        )
    num_classes = logits.shape[-1]
    anchor_labels = labels[..., :num_anchors]
    if (anchor_labels.numel() and host_readable(anchor_labels)
            and (anchor_labels.min() < 0 or anchor_labels.max() >= num_classes)):
        raise ValueError(f"anchor labels must be in [0, {num_classes}) (the logits' class count), "
                         f"got min {int(anchor_labels.min())}, max {int(anchor_labels.max())}")
    if not grouped:
        features, labels, logits = features[None], labels[None], logits[None]
    rows = paco_rows(
        features, labels, logits, num_anchors,
        alpha=alpha, temperature=temperature, beta=beta, gamma=gamma,
        log_prior=log_prior, smoothing=smoothing,
    )
    return rows.mean()
