"""Segmentation metrics: the confusion matrix and mmseg-style IoU over a whole split.

:class:`SegMeter` keeps an int64 confusion matrix, so summing it across processes is exact,
and reports percent.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from gpaco.distributed import all_reduce_counts

from ._arrays import _check_range, _ratio

__all__ = ["confusion_matrix", "SegMeter"]


def confusion_matrix(
    preds: Tensor, targets: Tensor, num_classes: int, *, ignore_index: Optional[int] = None
) -> Tensor:
    """[C, C] int64 counts, rows = target class, columns = predicted class.

    Args:
        preds, targets: integer tensors of the same shape (any number of dims).
        ignore_index: target value to skip (e.g. 255 for segmentation), or None.
    """
    preds = torch.as_tensor(preds)
    targets = torch.as_tensor(targets).to(preds.device)
    if preds.shape != targets.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and targets {tuple(targets.shape)} differ in shape")
    p = preds.reshape(-1).long()
    t = targets.reshape(-1).long()
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    _check_range(t, num_classes, "targets")
    _check_range(p, num_classes, "preds")
    c = num_classes
    return torch.bincount(t * c + p, minlength=c * c).view(c, c)


class SegMeter:
    """Semantic-segmentation IoU over a whole validation set (mmseg's ``mIoU`` convention).

    Accumulates one [C, C] confusion matrix (int64, exact under DDP). ``compute`` gives
    per-class IoU and accuracy with NaN for classes absent from both prediction and
    label (IoU) or from the label (accuracy); means skip the NaNs.
    """

    def __init__(
        self, num_classes: int, ignore_index: int = 255, *, device: Optional[Union[torch.device, str]] = None
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.reset()

    def reset(self) -> None:
        """Zero the confusion matrix."""
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=self.device)
        self._reduced = False

    @torch.no_grad()
    def update(self, preds: Tensor, labels: Tensor) -> None:
        """Add a batch.

        Args:
            preds: [N, H, W] predicted class map, or [N, C, H, W] scores (argmax over C).
            labels: [N, H, W] ground truth; ``ignore_index`` pixels are skipped.
        """
        if self._reduced:
            raise RuntimeError("SegMeter.update after all_reduce: call reset() first")
        if preds.ndim == labels.ndim + 1:
            if preds.shape[1] != self.num_classes:
                raise ValueError(f"score map has {preds.shape[1]} channels, expected {self.num_classes}")
            preds = preds.argmax(1)
        cm = confusion_matrix(preds, labels, self.num_classes, ignore_index=self.ignore_index)
        if self.confusion.device != cm.device:
            self.confusion = self.confusion.to(cm.device)
        self.confusion += cm

    def all_reduce(self) -> None:
        """Sum the confusion matrix over processes (no-op without a process group); call once."""
        if self._reduced:
            raise RuntimeError("SegMeter.all_reduce called twice (counts would be double-summed)")
        (self.confusion,) = all_reduce_counts([self.confusion])
        self._reduced = True

    def compute(self) -> dict:
        """Percent: ``per_class_iou``, ``per_class_acc`` (lists, NaN where undefined), ``miou``,
        ``macc`` (NaN-skipping means), ``aacc`` (pixel accuracy), ``num_pixels``."""
        cm = self.confusion.cpu().numpy().astype(np.float64)
        inter = np.diag(cm)
        area_label = cm.sum(1)
        area_pred = cm.sum(0)
        iou = _ratio(inter, area_label + area_pred - inter) * 100.0
        acc = _ratio(inter, area_label) * 100.0
        total = area_label.sum()

        def nanmean(x: np.ndarray) -> float:
            return float(np.nanmean(x)) if np.any(~np.isnan(x)) else float("nan")

        return {
            "per_class_iou": iou.tolist(),
            "per_class_acc": acc.tolist(),
            "miou": nanmean(iou),
            "macc": nanmean(acc),
            "aacc": float(100.0 * inter.sum() / total) if total else float("nan"),
            "num_pixels": int(total),
        }
