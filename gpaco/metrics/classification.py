"""Classification metrics: top-k, many/medium/few shot accuracy, per-class fairness, the meter.

Conventions (docs/method.md#metrics):

* Top-1/top-5 are sample-weighted; many/medium/few are the **unweighted mean of
  per-class accuracies** inside each group, over the classes present in the test
  labels. Groups come from the *training* counts: ``> 100`` many, ``< 20`` few, else
  medium (20..100 inclusive). An empty group (CIFAR-10-LT has no few-shot class) reports NaN,
  printed "—" and stored as null (the original printed 0.0); the group sizes come with it.
* The meter keeps integer counts only (int64 tensors), so summing them across
  processes (:meth:`ClassificationMeter.all_reduce`) is exact. It assumes every test
  sample reaches exactly one process (no sampler padding).
* Percentages: :class:`ClassificationMeter` reports percent; the functional helpers
  (:func:`class_accuracy`, :func:`shot_accuracy`) report fractions in 0..1, like the
  original ``shot_acc``.
"""
from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Iterable, Optional, Union

import numpy as np
import torch
from torch import Tensor

from gpaco.distributed import all_reduce_counts

from ._arrays import ArrayLike, _as_long_tensor, _check_range, _ratio
from .calibration import ECE_BINS, calibration_bin_index

__all__ = [
    "topk_correct", "ShotSplit", "shot_groups", "class_accuracy", "shot_accuracy",
    "shot_accuracy_from_class_acc", "format_accuracy", "class_fairness", "FAIRNESS_KEYS", "ClassificationMeter",
]

FAIRNESS_KEYS = ("worst_class_acc", "class_acc_std", "class_acc_cv", "many_few_gap")  # class_fairness's keys
GROUPS = ("many", "medium", "few")


# --------------------------------------------------------------------------- top-k


def topk_correct(logits: Tensor, targets: Tensor, ks: Iterable[int] = (1, 5)) -> dict[int, int]:
    """Number of samples whose target is among the ``k`` highest logits, per ``k``.

    Args:
        logits: [N, C] scores.
        targets: [N] class indices.
        ks: the ``k`` values; each is clipped to ``C`` (top-5 of a 3-class problem is top-3).
    Returns:
        ``{k: count}`` keyed by the *requested* ``k``.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be [N, C], got shape {tuple(logits.shape)}")
    targets = targets.reshape(-1)
    if targets.shape[0] != logits.shape[0]:
        raise ValueError(f"logits have {logits.shape[0]} rows but targets has {targets.shape[0]} entries")
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {ks}")
    num_classes = logits.shape[1]
    if not ks or logits.shape[0] == 0:
        return {k: 0 for k in ks}
    maxk = min(max(ks), num_classes)
    top = logits.topk(maxk, dim=1).indices  # [N, maxk], best first
    hit = top == targets.to(top.device)[:, None]
    # Cumulative hit: the target is in the first j columns.
    cum = hit.cumsum(1).clamp_(max=1).sum(0)  # [maxk]
    return {k: int(cum[min(k, num_classes) - 1]) for k in ks}


# --------------------------------------------------------------------------- shot groups


@dataclass(frozen=True)
class ShotSplit:
    """Many/medium/few thresholds on *training* counts: ``> many_thr`` many, ``< few_thr`` few."""

    many_thr: int = 100
    few_thr: int = 20

    def groups(self, train_counts: ArrayLike) -> np.ndarray:
        """[C] array of ``'many' | 'medium' | 'few'``, one per class."""
        counts = np.asarray(torch.as_tensor(train_counts).cpu(), dtype=np.int64).reshape(-1)
        out = np.full(counts.shape, "medium", dtype="<U6")
        out[counts > self.many_thr] = "many"
        out[counts < self.few_thr] = "few"
        return out

    def masks(self, train_counts: ArrayLike) -> dict[str, np.ndarray]:
        """``{'many': [C] bool, 'medium': ..., 'few': ...}``."""
        g = self.groups(train_counts)
        return {name: g == name for name in GROUPS}


def shot_groups(train_counts: ArrayLike, many_thr: int = 100, few_thr: int = 20) -> np.ndarray:
    """[C] array of ``'many' | 'medium' | 'few'`` from training counts (docs/method.md#metrics)."""
    return ShotSplit(many_thr, few_thr).groups(train_counts)


def class_accuracy(preds: ArrayLike, targets: ArrayLike, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class accuracy (= recall) from hard predictions.

    Args:
        preds: [N] predicted class indices.
        targets: [N] true class indices.
    Returns:
        ``(acc [C] float64 in 0..1, NaN for classes with no test sample, test_counts [C] int64)``.
    """
    p = _as_long_tensor(preds, "preds").cpu()
    t = _as_long_tensor(targets, "targets").cpu()
    if p.shape != t.shape:
        raise ValueError(f"preds and targets must have the same length, got {p.numel()} and {t.numel()}")
    _check_range(t, num_classes, "targets")
    total = torch.bincount(t, minlength=num_classes).numpy()
    correct = torch.bincount(t[p == t], minlength=num_classes).numpy()
    return _ratio(correct, total), total.astype(np.int64)


def shot_accuracy_from_class_acc(
    acc_per_class: ArrayLike, train_counts: ArrayLike, *, many_thr: int = 100, few_thr: int = 20
) -> dict[str, float]:
    """Group means of per-class accuracies; NaN entries (classes absent from the test set) are skipped.

    Returns:
        ``many, medium, few`` (same unit as ``acc_per_class``; NaN for an empty group, e.g.
        CIFAR-10-LT's few-shot group: it has no accuracy, and 0.0 would read as one) and
        ``many_classes, medium_classes, few_classes``: how many classes each mean covers.
    """
    acc = np.asarray(torch.as_tensor(acc_per_class, dtype=torch.float64).cpu()).reshape(-1)
    counts = np.asarray(torch.as_tensor(train_counts).cpu()).reshape(-1)
    if acc.shape != counts.shape:
        raise ValueError(f"{acc.size} per-class accuracies but {counts.size} training counts")
    masks = ShotSplit(many_thr, few_thr).masks(counts)
    present = ~np.isnan(acc)
    out: dict[str, float] = {}
    for name in GROUPS:
        sel = acc[masks[name] & present]
        out[name] = float(np.mean(sel)) if sel.size else math.nan  # the original printed 0.0
        out[f"{name}_classes"] = int(sel.size)
    return out


def format_accuracy(value: Optional[float], spec: str = ".2f") -> str:
    """``value`` formatted with ``spec``; "—" for a metric that does not exist (None, as
    metrics.json stores it, or NaN: an empty many/medium/few group, an empty split)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return format(value, spec)


def class_fairness(
    acc_per_class: ArrayLike, train_counts: Optional[ArrayLike] = None, *, many_thr: int = 100, few_thr: int = 20
) -> dict[str, Optional[float]]:
    """How unequal the per-class accuracies are (docs/method.md#metrics), over the classes with
    test samples (NaN entries are skipped).

    Returns (same unit as ``acc_per_class``, except the CV which has none):
        ``worst_class_acc`` (the lowest per-class accuracy), ``class_acc_std`` (population
        standard deviation, ddof 0), ``class_acc_cv`` (std / mean; None when the mean is 0)
        and, with ``train_counts``, ``many_few_gap`` (many minus few; None when either group
        is empty). All None when no class has a test sample.
    """
    acc = np.asarray(torch.as_tensor(acc_per_class, dtype=torch.float64).cpu()).reshape(-1)
    present = acc[~np.isnan(acc)]
    out: dict[str, Optional[float]] = dict.fromkeys(FAIRNESS_KEYS[:3])
    if present.size:
        mean, std = float(present.mean()), float(present.std())
        out.update(worst_class_acc=float(present.min()), class_acc_std=std,
                   class_acc_cv=std / mean if mean > 0 else None)
    if train_counts is not None:
        shots = shot_accuracy_from_class_acc(acc, train_counts, many_thr=many_thr, few_thr=few_thr)
        both = shots["many_classes"] and shots["few_classes"]
        out["many_few_gap"] = shots["many"] - shots["few"] if both else None
    return out


def shot_accuracy(
    preds: ArrayLike, targets: ArrayLike, train_counts: ArrayLike, *, many_thr: int = 100, few_thr: int = 20
) -> dict[str, float]:
    """Many/medium/few accuracy (fractions) of hard predictions, as the original's ``shot_acc``
    (docs/method.md#metrics).

    Args:
        preds: [N] predicted classes (argmax of the logits).
        targets: [N] true classes.
        train_counts: [C] training images per class; ``C`` = ``len(train_counts)``.
    Returns:
        ``{'many', 'medium', 'few'}`` in 0..1 plus ``'{group}_classes'`` sizes.
    """
    counts = np.asarray(torch.as_tensor(train_counts).cpu()).reshape(-1)
    acc, _ = class_accuracy(preds, targets, len(counts))
    return shot_accuracy_from_class_acc(acc, counts, many_thr=many_thr, few_thr=few_thr)


# --------------------------------------------------------------------------- classification meter


_CONF_UNITS = 10 ** 9  # confidences are summed as int64 nano-units: exact and DDP-summable


class ClassificationMeter:
    """Exact, DDP-summable classification counts.

    Keeps per target class: samples, top-1 hits, top-k hits; per predicted class: the
    number of predictions (for precision); and the [C, C] confusion matrix when
    ``C <= confusion_max_classes``. All int64, on the device of the first batch.

    Args:
        num_classes: C.
        topk: the second ``k`` reported (5 for ``top5``); clipped to C.
        confusion_max_classes: keep a confusion matrix only up to this many classes.
        device: where the counts live from the start (default CPU; they move to the
            device of the first batch anyway).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        topk: int = 5,
        confusion_max_classes: int = 100,
        device: Optional[Union[torch.device, str]] = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.topk = int(topk)
        self.keep_confusion = self.num_classes <= confusion_max_classes
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.reset()

    def reset(self) -> None:
        """Zero every count."""
        c = self.num_classes
        kw = dict(dtype=torch.int64, device=self.device)
        self.total = torch.zeros(c, **kw)        # samples per target class
        self.correct1 = torch.zeros(c, **kw)     # top-1 hits per target class
        self.correctk = torch.zeros(c, **kw)     # top-k hits per target class
        self.predicted = torch.zeros(c, **kw)    # top-1 predictions per class
        # reliability bins of the top-1 softmax confidence: samples, hits, confidence sum (nano-units)
        self.calibration = torch.zeros(3, ECE_BINS, **kw)
        self.confusion = torch.zeros(c, c, **kw) if self.keep_confusion else None  # [target, pred]
        self.nonfinite = torch.zeros(1, **kw)  # samples whose logits hold NaN/Inf (a diverged model)
        self._reduced = False

    def _buffers(self) -> list[Tensor]:
        bufs = [self.total, self.correct1, self.correctk, self.predicted, self.calibration, self.nonfinite]
        return bufs + ([self.confusion] if self.confusion is not None else [])

    def _set_buffers(self, bufs: list[Tensor]) -> None:
        self.total, self.correct1, self.correctk, self.predicted, self.calibration, self.nonfinite = bufs[:6]
        if self.confusion is not None:
            self.confusion = bufs[6]

    @torch.no_grad()
    def update(self, logits: Tensor, targets: Tensor) -> None:
        """Add a batch. logits [N, C], targets [N] (class indices)."""
        if self._reduced:
            raise RuntimeError("ClassificationMeter.update after all_reduce: call reset() first")
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be [N, {self.num_classes}], got {tuple(logits.shape)}")
        if targets.is_floating_point():  # .long() would truncate 0.7 to class 0 without a word
            raise ValueError(f"targets must be class indices (an integer tensor), got {targets.dtype}")
        targets = targets.reshape(-1).to(logits.device).long()
        if targets.shape[0] != logits.shape[0]:
            raise ValueError(f"logits have {logits.shape[0]} rows but targets has {targets.shape[0]} entries")
        _check_range(targets, self.num_classes, "targets")
        if self.total.device != logits.device:
            self._set_buffers([b.to(logits.device) for b in self._buffers()])
        c = self.num_classes
        k = min(self.topk, c)
        top = logits.topk(k, dim=1).indices  # same tie-breaking for top-1 and top-k
        pred = top[:, 0]
        self.nonfinite += (~torch.isfinite(logits).all(1)).sum()
        hit1 = pred == targets
        hitk = (top == targets[:, None]).any(1)
        self.total += torch.bincount(targets, minlength=c)
        self.correct1 += torch.bincount(targets[hit1], minlength=c)
        self.correctk += torch.bincount(targets[hitk], minlength=c)
        self.predicted += torch.bincount(pred, minlength=c)
        conf = logits.double().softmax(1).gather(1, pred[:, None]).squeeze(1)
        bins = calibration_bin_index(conf)
        ok = bins >= 0
        b = bins[ok]
        self.calibration[0] += torch.bincount(b, minlength=ECE_BINS)
        self.calibration[1] += torch.bincount(b[hit1[ok]], minlength=ECE_BINS)
        self.calibration[2].index_add_(0, b, (conf[ok] * _CONF_UNITS).round().long())  # per sample: split-exact
        if self.confusion is not None:
            self.confusion += torch.bincount(targets * c + pred, minlength=c * c).view(c, c)

    def all_reduce(self) -> None:
        """Sum the counts over all processes (no-op without an initialised process group).

        Call once, after the last update; a second call would double-count and raises.
        """
        if self._reduced:
            raise RuntimeError("ClassificationMeter.all_reduce called twice (counts would be double-summed)")
        self._set_buffers(all_reduce_counts(self._buffers()))
        self._reduced = True

    def compute(self, train_counts: Optional[ArrayLike] = None, *, many_thr: int = 100, few_thr: int = 20) -> dict:
        """Summary in percent.

        Returns:
            ``num_samples``, ``top1``, ``top5`` (top-``topk``), ``mean_class_acc``,
            ``per_class`` (accuracy = recall per class, NaN where the class has no test
            sample), ``per_class_precision`` (NaN where never predicted),
            ``per_class_recall``, ``ece`` (expected calibration error x 100, 15 bins) and
            ``calibration`` (per bin: count, accuracy, mean confidence); with ``train_counts`` also ``many/medium/few`` (percent,
            NaN for an empty group) and ``many_classes/medium_classes/few_classes``;
            :func:`class_fairness` of the per-class accuracies (``worst_class_acc``,
            ``class_acc_std``, ``class_acc_cv``, with ``train_counts`` ``many_few_gap``) and,
            when the meter keeps one, ``confusion`` ([C][C] counts, rows = target).
        """
        total = self.total.cpu().numpy()
        correct1 = self.correct1.cpu().numpy()
        n = int(total.sum())
        acc = _ratio(correct1, total) * 100.0
        precision = _ratio(correct1, self.predicted.cpu().numpy()) * 100.0
        bad = int(self.nonfinite.sum())
        # No sample, or logits with NaN/Inf (argmax of NaN is arbitrary): no accuracy to report,
        # NaN rather than a 0.0 that reads as a measured value.
        valid = n > 0 and bad == 0
        out: dict = {
            "num_samples": n,
            "top1": 100.0 * float(correct1.sum()) / n if valid else float("nan"),
            "top5": 100.0 * float(self.correctk.sum()) / n if valid else float("nan"),
            "mean_class_acc": float(np.nanmean(acc)) if valid else float("nan"),
        }
        if bad:
            out["nonfinite_logits"] = bad
        cal = self.calibration.cpu().numpy().astype(np.float64)
        binned = cal[0].sum()
        conf_sum = cal[2] / _CONF_UNITS
        # ECE (percent): sum_b |hits_b - confidence_b| / n, 15 equal-width bins (MiSLAS)
        out["ece"] = 100.0 * float(np.abs(cal[1] - conf_sum).sum() / binned) if binned else 0.0
        out["calibration"] = {"bins": ECE_BINS, "count": cal[0].astype(int).tolist(),
                              "accuracy": (_ratio(cal[1], cal[0]) * 100.0).tolist(),
                              "confidence": (_ratio(conf_sum, cal[0]) * 100.0).tolist()}
        if train_counts is not None:
            counts = np.asarray(torch.as_tensor(train_counts).cpu()).reshape(-1)
            if counts.size != self.num_classes:
                raise ValueError(f"train_counts has {counts.size} classes, the meter {self.num_classes}")
            out.update(shot_accuracy_from_class_acc(acc, counts, many_thr=many_thr, few_thr=few_thr))
        out.update(class_fairness(acc, counts if train_counts is not None else None, many_thr=many_thr,
                                  few_thr=few_thr))
        if self.confusion is not None:
            out["confusion"] = self.confusion.cpu().tolist()
        out["per_class"] = acc.tolist()
        out["per_class_precision"] = precision.tolist()
        out["per_class_recall"] = acc.tolist()
        out["per_class_test_count"] = total.astype(int).tolist()
        return out
