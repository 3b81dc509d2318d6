"""Cross-entropy baselines: plain, balanced softmax / logit-adjusted, label-smoothed.

All are computed in float32 (float64 for float64 inputs), also under autocast.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .paco import compute_dtype

__all__ = ["cross_entropy", "balanced_cross_entropy"]


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    log_prior: Optional[Tensor] = None,
    label_smoothing: float = 0.0,
    tau: float = 1.0,
) -> Tensor:
    """Mean CE of ``logits + tau * log_prior`` against integer ``target``.

    ``log_prior`` given: balanced softmax (tau = 1) / logit-adjusted loss (Menon et al.).
    ``label_smoothing``: ``(1 - s) * nll + s * mean_c(-log p_c)`` (timm's formula, which
    equals torch's). ``target`` may also be [B, C] soft targets (mixup / cutmix).
    """
    dtype = compute_dtype(logits)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        z = logits.to(dtype)
        if log_prior is not None:
            z = z + tau * log_prior.to(device=z.device, dtype=dtype)
        if target.is_floating_point():  # soft targets
            return torch.sum(-target.to(dtype) * F.log_softmax(z, dim=-1), dim=-1).mean()
        if label_smoothing > 0:
            log_p = F.log_softmax(z, dim=-1)
            nll = -log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            return ((1.0 - label_smoothing) * nll - label_smoothing * log_p.mean(-1)).mean()
        return F.cross_entropy(z, target)


def balanced_cross_entropy(logits: Tensor, target: Tensor, log_prior: Tensor, *, tau: float = 1.0) -> Tensor:
    """Balanced softmax CE (Ren et al. 2020) = logit-adjusted CE with ``tau = 1``."""
    return cross_entropy(logits, target, log_prior=log_prior, tau=tau)
