"""Per-class report files of one evaluation, and the figures of one training run.

``write_eval_report`` writes, into the evaluation's folder:

* ``per_class.csv``: class, train_count, test_count, accuracy, precision, recall (percent;
  empty where undefined: no test sample, never predicted, train counts unknown);
* ``per_class.png``: per-class test accuracy against the class's training frequency (classes
  sorted head to tail; many/medium/few boundaries dashed; a legend, and the mean and worst
  class in the title); class order when the train counts are unknown;
* ``confusion.png`` for up to 100 classes: the row-normalised confusion matrix (rows = true
  class, columns = predicted class);
* ``reliability.png``: accuracy against mean top-1 confidence per confidence bin, with the
  expected calibration error (``metrics['calibration']``, ``metrics['ece']``).

At the end of training :func:`plot_curves` draws ``curves.png`` from the run's ``summary.csv``
(training loss, val top-1 and many/medium/few per epoch), and :func:`fairness_line` prints the
per-class figures of :func:`gpaco.metrics.class_fairness` under a report.

Comparing runs side by side is :mod:`gpaco.classification.compare`.
"""
from __future__ import annotations

import csv
import math
import os
from typing import List, Optional, Sequence

import numpy as np

from gpaco.engine.logging import atomic_path

__all__ = ["write_eval_report", "plot_per_class", "plot_confusion", "plot_reliability", "plot_curves",
           "fairness_line", "CONFUSION_MAX_CLASSES"]

CONFUSION_MAX_CLASSES = 100


def _fmt(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{float(x):.4f}"


def write_eval_report(out_dir: str, metrics: dict, train_counts: Optional[Sequence[int]] = None, *,
                      confusion=None) -> List[str]:
    """per_class.csv, per_class.png and (<= 100 classes) confusion.png into ``out_dir``.

    Args:
        metrics: :meth:`gpaco.metrics.ClassificationMeter.compute` output (``per_class``,
            ``per_class_precision``, ``per_class_recall``, ``per_class_test_count``); a
            ``confusion`` entry there is used when the argument is not given.
        train_counts: training images per class (None: unknown; the columns stay empty).
        confusion: [C, C] counts, rows = target, columns = prediction.
    Returns:
        the paths written.
    """
    per_class = list(metrics.get("per_class") or [])
    n = len(per_class)
    test_counts = metrics.get("per_class_test_count") or [None] * n
    precision = metrics.get("per_class_precision") or [None] * n
    recall = metrics.get("per_class_recall") or per_class
    train = list(train_counts) if train_counts is not None else None
    written = []
    path = os.path.join(out_dir, "per_class.csv")
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:  # a full disk keeps the previous report
        w = csv.writer(f)
        w.writerow(["class", "train_count", "test_count", "accuracy", "precision", "recall"])
        for c in range(n):
            w.writerow([c, train[c] if train is not None and c < len(train) else "",
                        "" if test_counts[c] is None else test_counts[c],
                        _fmt(per_class[c]), _fmt(precision[c]), _fmt(recall[c])])
    written.append(path)
    path = os.path.join(out_dir, "per_class.png")
    plot_per_class(per_class, train, path)
    written.append(path)
    if confusion is None:
        confusion = metrics.get("confusion")
    if confusion is not None and 0 < len(confusion) <= CONFUSION_MAX_CLASSES:
        path = os.path.join(out_dir, "confusion.png")
        plot_confusion(confusion, path)
        written.append(path)
    if metrics.get("calibration"):
        path = os.path.join(out_dir, "reliability.png")
        plot_reliability(metrics["calibration"], metrics.get("ece"), path)
        written.append(path)
    return written


def fairness_line(metrics: dict) -> str:
    """``per class: worst 0.00 | std 40.82 | CV 0.82 | many - few 50.00`` (what is known of it)."""
    parts = []
    for key, label, fmt in (("worst_class_acc", "worst", ".2f"), ("class_acc_std", "std", ".2f"),
                            ("class_acc_cv", "CV", ".3f"), ("many_few_gap", "many - few", ".2f")):
        value = metrics.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            parts.append(f"{label} {value:{fmt}}")
    return "per class: " + " | ".join(parts) if parts else "per class: no class has a test sample"


def _floats(rows: Sequence[dict], key: str) -> List[float]:
    out = []
    for r in rows:
        try:
            out.append(float(r.get(key) or "nan"))
        except ValueError:
            out.append(float("nan"))
    return out


def plot_curves(rows: Sequence[dict], path: str) -> bool:
    """``curves.png``: training loss (left) and val top-1 with many/medium/few (right) per epoch,
    from the rows of ``summary.csv`` (:func:`gpaco.engine.logging.read_summary`). Returns False
    (nothing written) when there is no row."""
    steps = _floats(rows, "epoch")
    if not rows or all(math.isnan(x) for x in steps):
        return False
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5), dpi=100)
    marker = "o-" if len(rows) <= 50 else "-"
    ax1.plot(steps, _floats(rows, "train_loss"), marker, color="#2e86de", ms=3, lw=1, label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.set_title("training loss", fontsize=10)
    styles = (("val_top1", "top-1", "black", 1.6), ("val_many", "many", "#2e86de", 1.0),
              ("val_medium", "medium", "#27ae60", 1.0), ("val_few", "few", "#c0392b", 1.0))
    drawn = False
    for key, label, color, lw in styles:
        pts = [(x, y) for x, y in zip(steps, _floats(rows, key)) if not math.isnan(y)]
        if pts:
            ax2.plot(*zip(*pts), marker, color=color, ms=3, lw=lw, label=label)
            drawn = True
    ax2.set_xlabel("epoch")
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.set_ylabel("val accuracy (%)")
    ax2.set_ylim(0, 100)
    ax2.set_title("validation" if drawn else "validation (no --val-list)", fontsize=10)
    if drawn:
        ax2.legend(loc="best", fontsize=8)
    fig.tight_layout()
    _save_figure(plt, fig, path)
    return True


def plot_reliability(calibration: dict, ece: Optional[float], path: str) -> None:
    """Reliability diagram: per confidence bin, accuracy (bars) against the diagonal, gaps to
    the bin's mean confidence outlined; ``calibration`` as ClassificationMeter.compute's."""
    plt = _pyplot()
    n = int(calibration["bins"])
    width = 100.0 / n
    centers = [width * (b + 0.5) for b in range(n)]
    acc = [0.0 if a is None or a != a else a for a in calibration["accuracy"]]
    conf = [c if c == c else centers[b] for b, c in enumerate(calibration["confidence"])]
    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=100)
    ax.bar(centers, acc, width=width, color="#2e86de", edgecolor="black", lw=0.5, label="accuracy")
    ax.bar(centers, [c - a for c, a in zip(conf, acc)], bottom=acc, width=width, color="#e74c3c", alpha=0.3,
           edgecolor="#c0392b", lw=0.5, label="gap to confidence")
    ax.plot([0, 100], [0, 100], "--", color="gray", lw=1)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("top-1 confidence (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"reliability, ECE {ece:.2f}" if ece is not None else "reliability", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    _save_figure(plt, fig, path)


def _save_figure(plt, fig, path: str) -> None:
    """``fig`` into ``path`` through a temporary file (a full disk keeps the previous image, not
    an empty one), then closed either way."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _shot_boundaries(order: Sequence[int], train_counts: Sequence[int]) -> List[float]:
    """x positions between many|medium and medium|few in a head-to-tail class order."""
    from gpaco.metrics import shot_groups

    groups = shot_groups(train_counts)
    out = []
    for upper in (("many",), ("many", "medium")):
        idx = [i for i, c in enumerate(order) if groups[c] in upper]
        if idx and idx[-1] + 1 < len(order):
            out.append(idx[-1] + 0.5)
    return out


def plot_per_class(per_class: Sequence[float], train_counts: Optional[Sequence[int]], path: str) -> None:
    """Per-class test accuracy against the class's training frequency, classes sorted head to tail
    (class order when ``train_counts`` is None)."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    n = len(per_class)
    if train_counts is not None:
        order = sorted(range(n), key=lambda c: -train_counts[c])
    else:
        order = list(range(n))
    acc = [per_class[c] if per_class[c] is not None else float("nan") for c in order]
    fig, ax1 = plt.subplots(figsize=(7, 3.5), dpi=100)
    if train_counts is not None:
        ax1.bar(range(n), [train_counts[c] for c in order], color="#c8d6e5", label="train images")
        ax1.set_yscale("log")
        ax1.set_xlabel("class (sorted by training frequency)")
        ax1.set_ylabel("train images")
        ax2 = ax1.twinx()
        for x in _shot_boundaries(order, train_counts):
            ax1.axvline(x, color="gray", ls="--", lw=0.8)
    else:
        ax1.set_xlabel("class (train counts unknown: pass --train-list)")
        ax2 = ax1
    ax2.plot(range(n), acc, "o-" if n <= 100 else "-", color="#c0392b", ms=3, lw=1, label="test accuracy")
    ax2.set_ylabel("test accuracy (%)")
    ax2.set_ylim(0, 100)
    if n <= 30:
        ax1.set_xticks(range(n), [str(c) for c in order])
    handles = [h for ax in dict.fromkeys((ax1, ax2)) for h in ax.get_legend_handles_labels()[0]]
    if train_counts is not None and _shot_boundaries(order, train_counts):
        handles.append(Line2D([], [], color="gray", ls="--", lw=0.8, label="many | medium | few"))
    ax2.legend(handles=handles, loc="upper right", fontsize=8)
    known = [a for a in acc if a == a]
    title = "per-class test accuracy"
    if known:
        title += f": mean {np.mean(known):.1f}, worst {min(known):.1f}"
    ax1.set_title(title, fontsize=10)
    fig.tight_layout()
    _save_figure(plt, fig, path)


def plot_confusion(confusion, path: str) -> None:
    """Row-normalised confusion matrix (percent of each true class); counts annotated up to 20 classes."""
    plt = _pyplot()
    cm = np.asarray(confusion, dtype=np.float64)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0) * 100.0
    c = cm.shape[0]
    side = min(12.0, max(5.5, 3.0 + 0.12 * c))
    fig, ax = plt.subplots(figsize=(side, side * 0.85), dpi=100)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="% of the true class")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if c <= 20:
        ax.set_xticks(range(c))
        ax.set_yticks(range(c))
        for i in range(c):
            for j in range(c):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 50 else "black")
    ax.set_title("confusion (colour: row %; numbers: counts)" if c <= 20 else "confusion (row-normalised)",
                 fontsize=10)
    fig.tight_layout()
    _save_figure(plt, fig, path)
