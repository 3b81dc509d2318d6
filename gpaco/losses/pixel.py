"""Pixel-level GPaCo loss for semantic segmentation (SPEC §2.5).

Every sampled pixel is an anchor and a contrast sample (no queue, no prior). Pixels
labelled ``ignore_index`` stay in every denominator as negatives but have no center
target and are left out of the mean.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .paco import paco_rows

__all__ = ["pixel_paco_loss"]


def pixel_paco_loss(features: Tensor, labels: Tensor, logits: Tensor, *, alpha: float, temperature: float,
                    ignore_index: int = 255) -> Tensor:
    """Mean PaCo loss over the non-ignored pixels.

    Args:
        features: [N, D] (one image) or [B, N, D] (B images, each its own contrast set),
            L2-normalised per pixel.
        labels: [N] or [B, N]; ``ignore_index`` marks unlabeled pixels, any other value
            must be in ``[0, C)``.
        logits: [N, C] or [B, N, C] per-pixel classifier logits (the centers).
    Returns:
        Scalar: per image the mean over its valid pixels (0 if it has none), then the
        mean over images.
    """
    if features.ndim == 2:
        features, labels, logits = features[None], labels[None], logits[None]
    if features.ndim != 3 or labels.ndim != 2 or logits.ndim != 3:
        raise ValueError(
            f"expected features [B, N, D], labels [B, N], logits [B, N, C]; got {tuple(features.shape)}, "
            f"{tuple(labels.shape)}, {tuple(logits.shape)}"
        )
    num_classes = logits.shape[-1]
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        raise ValueError(
            f"pixel labels must be in [0, {num_classes}) or ignore_index={ignore_index}; "
            f"found {labels[bad].unique().tolist()[:5]}"
        )
    # Give ignored pixels a label no valid pixel has, so they are never a valid anchor's positive.
    labels = torch.where(valid, labels, torch.full_like(labels, num_classes))
    rows = paco_rows(
        features, labels, logits, features.shape[1],
        alpha=alpha, temperature=temperature, center_valid=valid,
    )
    valid_f = valid.to(rows.dtype)
    rows = torch.where(valid, rows, rows.new_zeros(()))
    per_image = (rows * valid_f).sum(-1) / (valid_f.sum(-1) + 1e-12)
    return per_image.mean()
