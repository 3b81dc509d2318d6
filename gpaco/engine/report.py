"""Per-class report files of an evaluation: per_class.csv and per_class.png."""
from __future__ import annotations

import csv
import math
import os
from typing import Sequence


def write_eval_report(out_dir: str, metrics: dict, train_counts: Sequence[int]) -> None:
    """per_class.csv (class, train count, test count, accuracy) and the accuracy-vs-frequency plot."""
    per_class = metrics.get("per_class") or []
    test_counts = metrics.get("per_class_test_count") or [None] * len(per_class)
    with open(os.path.join(out_dir, "per_class.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "train_count", "test_count", "accuracy"])
        for c, acc in enumerate(per_class):
            w.writerow([c, train_counts[c] if c < len(train_counts) else "", test_counts[c],
                        "" if acc is None or (isinstance(acc, float) and math.isnan(acc)) else f"{acc:.4f}"])
    plot_per_class(per_class, train_counts, os.path.join(out_dir, "per_class.png"))


def plot_per_class(per_class: Sequence[float], train_counts: Sequence[int], path: str) -> None:
    """Per-class test accuracy against the class's training frequency, classes sorted head to tail."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(range(len(per_class)), key=lambda c: -train_counts[c])
    acc = [per_class[c] if per_class[c] is not None else float("nan") for c in order]
    fig, ax1 = plt.subplots(figsize=(7, 3.5), dpi=100)
    ax1.bar(range(len(order)), [train_counts[c] for c in order], color="#c8d6e5", label="train images")
    ax1.set_yscale("log")
    ax1.set_xlabel("class (sorted by training frequency)")
    ax1.set_ylabel("train images")
    ax2 = ax1.twinx()
    ax2.plot(range(len(order)), acc, "o-" if len(order) <= 100 else "-", color="#c0392b", ms=3, lw=1,
             label="test accuracy")
    ax2.set_ylabel("test accuracy (%)")
    ax2.set_ylim(0, 100)
    for thr in (100, 20):  # many / medium / few boundaries
        idx = [i for i, c in enumerate(order) if train_counts[c] > thr] if thr == 100 else \
              [i for i, c in enumerate(order) if train_counts[c] >= thr]
        if idx and idx[-1] + 1 < len(order):
            ax1.axvline(idx[-1] + 0.5, color="gray", ls="--", lw=0.8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
