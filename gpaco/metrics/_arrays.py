"""Input coercion and NaN-safe ratios shared by the metric modules."""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
from torch import Tensor

ArrayLike = Union[Tensor, np.ndarray, Sequence[int], Sequence[float]]


def _as_long_tensor(x: ArrayLike, name: str) -> Tensor:
    t = torch.as_tensor(x)
    if t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must hold integer class indices, got dtype {t.dtype}")
    return t.reshape(-1).long()


def _check_range(t: Tensor, num_classes: int, name: str) -> None:
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(
            f"{name} must be class indices in [0, {num_classes}), got min {int(t.min())}, max {int(t.max())}"
        )


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num/den as float64, NaN where den == 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out
