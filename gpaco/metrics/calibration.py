"""Calibration of the top-1 prediction: MiSLAS's 15-bin expected calibration error."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["ECE_BINS", "calibration_bin_index", "expected_calibration_error"]

ECE_BINS = 15  # MiSLAS's reliability bins


def calibration_bin_index(confidence: Tensor, n_bins: int = ECE_BINS) -> Tensor:
    """Bin of each top-1 confidence: bin ``b`` (0-based) holds ``b/n < c <= (b+1)/n``; -1 for ``c <= 0``."""
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=confidence.dtype, device=confidence.device)
    idx = torch.bucketize(confidence, edges, right=False) - 1
    return torch.where((idx >= 0) & (idx < n_bins), idx, torch.full_like(idx, -1))


@torch.no_grad()
def expected_calibration_error(probs_or_logits: Tensor, labels: Tensor, n_bins: int = ECE_BINS, *,
                               from_logits: Optional[bool] = None) -> float:
    """Expected calibration error of the top-1 prediction, as MiSLAS reports it.

    Confidence ``c_i = max_j p_ij``; bins of equal width (:func:`calibration_bin_index`);
    ``ECE = sum_b |B_b| / n * |acc(B_b) - mean_conf(B_b)|`` over the non-empty bins, ``n``
    the binned samples (all of them for softmax outputs).

    Args:
        probs_or_logits: [N, C] probabilities (rows summing to 1) or logits.
        labels: [N] true classes.
        n_bins: number of bins (MiSLAS: 15).
        from_logits: True = apply softmax, False = already probabilities, None = softmax
            unless every row is non-negative and sums to 1.
    Returns:
        ECE as a fraction in [0, 1]; MiSLAS's tables (and ``metrics.json``'s ``ece``) print it x 100.
    """
    if probs_or_logits.ndim != 2:
        raise ValueError(f"probs_or_logits must be [N, C], got shape {tuple(probs_or_logits.shape)}")
    n = probs_or_logits.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"labels must be [N] = [{n}], got shape {tuple(labels.shape)}")
    if n == 0:
        raise ValueError("expected_calibration_error needs at least one sample")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    x = probs_or_logits.detach().to(torch.float64)
    if from_logits is None:
        from_logits = not (bool((x >= 0).all()) and torch.allclose(x.sum(-1), torch.ones_like(x[:, 0]), atol=1e-4))
    probs = x.softmax(-1) if from_logits else x
    conf, pred = probs.max(-1)
    correct = (pred == labels.to(pred.device)).to(torch.float64)
    idx = calibration_bin_index(conf, n_bins)
    valid = idx >= 0
    idx = idx[valid]
    count = torch.bincount(idx, minlength=n_bins).to(torch.float64)
    acc_sum = torch.bincount(idx, weights=correct[valid], minlength=n_bins)
    conf_sum = torch.bincount(idx, weights=conf[valid], minlength=n_bins)
    total = count.sum()
    if total == 0:
        raise ValueError("no confidence falls in (0, 1]: are these probabilities?")
    return float((acc_sum - conf_sum).abs().sum() / total)
