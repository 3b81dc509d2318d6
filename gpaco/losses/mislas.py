"""MiSLAS stage 2 (CVPR 2021): label-aware smoothing (LAS) and the calibration metric.

Label-aware smoothing gives each class its own smoothing factor, large for head
classes and small for tail classes (maths in docs/method.md#mislas-label-aware-smoothing). With
``r_c = (n_c - n_min) / (n_max - n_min)`` in [0, 1] (0 = rarest, 1 = most frequent):

======== ===========================================================
shape    ``eps_c = tail + (head - tail) * g(r_c)``
======== ===========================================================
concave  ``g = sin(pi/2 * r)``  (the one every MiSLAS recipe uses)
linear   ``g = r``
convex   ``g = 1 - cos(pi/2 * r)``
exp      ``g = r ** power``
======== ===========================================================

and the loss is ``mean_i [(1 - eps_{y_i}) (-log p_{i,y_i}) + eps_{y_i} mean_j (-log p_ij)]``,
i.e. label-smoothed CE whose smoothing depends on the true class. The factors are
stored in float32 as the original does (a float64 loss upcasts them).

:func:`expected_calibration_error` is the ECE MiSLAS reports: 15 equal-width bins on
the top-1 softmax probability.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from .paco import compute_dtype, host_readable

# The calibration metric MiSLAS reports lives with the other metrics; re-exported here.
from gpaco.metrics import expected_calibration_error  # noqa: E402,F401

__all__ = ["label_aware_smoothing", "las_loss", "LabelAwareSmoothingLoss", "expected_calibration_error"]

_SHAPES = ("concave", "linear", "convex", "exp")


def label_aware_smoothing(
    class_counts,
    *,
    head: float,
    tail: float,
    shape: str = "concave",
    power: Optional[float] = None,
) -> Tensor:
    """Per-class smoothing factors ``eps_c`` from the training counts.

    Args:
        class_counts: [C] training images per class (any order); at least two distinct values.
        head: smoothing of the most frequent class(es) (recipes: 0.1 .. 0.4).
        tail: smoothing of the rarest class(es) (recipes: 0 or 0.1).
        shape: "concave" (MiSLAS default), "linear", "convex" or "exp".
        power: exponent of the "exp" shape (required there, unused otherwise).
    Returns:
        [C] float32.
    """
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() == 0:
        raise ValueError(f"class_counts must be a non-empty 1-D list of counts, got shape {tuple(counts.shape)}")
    if (counts < 0).any():
        raise ValueError("class_counts must be non-negative")
    if shape not in _SHAPES:
        raise ValueError(f"unknown label-aware smoothing shape {shape!r}; expected one of {', '.join(_SHAPES)}")
    if shape == "exp" and power is None:
        raise ValueError("the 'exp' shape needs power=")
    for name, v in (("head", head), ("tail", tail)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} smoothing must be in [0, 1], got {v}")
    lo, hi = counts.min(), counts.max()
    if hi == lo:
        raise ValueError("label-aware smoothing needs at least two distinct class counts (all classes have "
                         f"{int(hi)} images: head and tail are undefined)")
    r = (counts - lo) / (hi - lo)
    if shape == "concave":
        g = torch.sin(math.pi / 2 * r)
    elif shape == "linear":
        g = r
    elif shape == "convex":
        g = 1.0 - torch.cos(math.pi / 2 * r)
    else:
        g = r ** float(power)
    return (tail + (head - tail) * g).float()


def las_loss(logits: Tensor, target: Tensor, smoothing: Tensor) -> Tensor:
    """Label-aware smoothed cross-entropy.

    Args:
        logits: [B, C] (MiSLAS: the LWS-scaled classifier logits).
        target: [B] class indices.
        smoothing: [C] per-class factors (:func:`label_aware_smoothing`).
    Returns:
        Scalar ``mean_i [(1 - e_i) (-log p_{i,y_i}) + e_i mean_j (-log p_ij)]`` with
        ``e_i = smoothing[y_i]``, in float32 (float64 for float64 logits). ``1 - e_i`` is
        evaluated in ``smoothing``'s dtype before the upcast, as the original does.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be [B, C], got shape {tuple(logits.shape)}")
    b, c = logits.shape
    if target.shape != (b,):
        raise ValueError(f"target must be [B] = [{b}] class indices, got shape {tuple(target.shape)}")
    if target.is_floating_point():
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
    if smoothing.shape != (c,):
        raise ValueError(f"smoothing must be [C] = [{c}] (one factor per class), got shape {tuple(smoothing.shape)}")
    # CPU only: on a GPU the read would stall the step; the gather fails on a bad label instead
    if b and host_readable(target) and (target.min() < 0 or target.max() >= c):
        raise ValueError(f"target must be class indices in [0, {c}), got min {int(target.min())}, "
                         f"max {int(target.max())}")
    dtype = compute_dtype(logits)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        log_p = logits.to(dtype).log_softmax(-1)
        target = target.to(log_p.device)
        # 1 - eps in the factors' own dtype (float32 from label_aware_smoothing), then upcast,
        # as the original does: the two weights then sum to 1 only to float32 precision.
        smoothing = smoothing.to(log_p.device)
        eps = smoothing[target].to(dtype)
        confidence = (1.0 - smoothing)[target].to(dtype)
        nll = -log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        uniform = -log_p.mean(-1)
        return (confidence * nll + eps * uniform).mean()


class LabelAwareSmoothingLoss(nn.Module):
    """Label-aware smoothing criterion with the factors fixed from the training counts.

    Args:
        class_counts: [C] training images per class.
        head, tail, shape, power: see :func:`label_aware_smoothing`.
    """

    smoothing: Tensor

    def __init__(self, class_counts, *, head: float, tail: float, shape: str = "concave",
                 power: Optional[float] = None) -> None:
        super().__init__()
        self.shape, self.power = shape, power
        self.register_buffer(
            "smoothing", label_aware_smoothing(class_counts, head=head, tail=tail, shape=shape, power=power),
            persistent=False,
        )

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """logits [B, C], target [B] -> scalar loss."""
        return las_loss(logits, target, self.smoothing)

    def extra_repr(self) -> str:
        s = self.smoothing
        power = f", power={self.power}" if self.shape == "exp" else ""
        return f"shape={self.shape!r}{power}, smoothing=[{float(s.min()):.4g}, {float(s.max()):.4g}]"
