"""Per-class report files of one evaluation, and the figures of one training run.

``write_eval_report`` writes, into the evaluation's folder:

* ``per_class.csv``: class, name (when the class names are known), train_count, test_count,
  accuracy, precision, recall (percent; empty where undefined: no test sample, never
  predicted, train counts unknown);
* ``per_class.png``: per-class test accuracy against the class's training frequency (classes
  sorted head to tail; many/medium/few boundaries dashed; a legend, and the mean and worst
  class in the title); class order when the train counts are unknown;
* ``confusion.png`` for up to 100 classes: the row-normalised confusion matrix (rows = true
  class, columns = predicted class);
* ``reliability.png``: accuracy against mean top-1 confidence per confidence bin, with the
  expected calibration error (``metrics['calibration']``, ``metrics['ece']``); a bin without
  a sample is left blank.

Class names: every function takes ``class_names`` (index order; None: the class indices are
shown). A run's names come from its ``classes.txt`` (one name per line, line ``i`` = class
``i``, written next to the split lists by the data tools), which :func:`read_class_names`
reads and :func:`class_names_beside` finds.

At the end of training :func:`plot_curves` draws ``curves.png`` from the run's ``summary.csv``
(training loss, val top-1 and many/medium/few per epoch), and :func:`fairness_line` prints the
per-class figures of :func:`gpaco.metrics.class_fairness` under a report.

Comparing runs side by side is :mod:`gpaco.classification.compare`.
"""
from __future__ import annotations

import csv
import math
import os
from typing import Iterable, List, Optional, Sequence

import numpy as np

from gpaco.data.splits import DataError
from gpaco.engine.logging import atomic_path

__all__ = ["write_eval_report", "plot_per_class", "plot_confusion", "plot_reliability", "plot_curves",
           "fairness_line", "read_class_names", "class_names_beside", "run_class_names", "find_class_names",
           "checkpoint_class_names", "check_class_names", "class_label", "CONFUSION_MAX_CLASSES", "CLASSES_FILE"]

CONFUSION_MAX_CLASSES = 100
#: The file of a dataset's class names: one per line, line i = class i, next to its split lists.
CLASSES_FILE = "classes.txt"
#: Tick labels are names up to this many characters (longer ones are cut with an ellipsis).
_TICK_CHARS = 18


# --------------------------------------------------------------------------- class names


def read_class_names(path: str, *, num_classes: Optional[int] = None) -> List[str]:
    """The class names of a ``classes.txt``: one name per line, line ``i`` = class ``i``.

    Surrounding whitespace is stripped and a trailing blank line ignored; an empty line
    between names, a repeated name, or (with ``num_classes``) another count of names is a
    :class:`DataError` naming the file and line.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig: an editor's byte-order mark is not part of name 0
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e}); expected one class name per line") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the class names ({e.strerror or e})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names: List[str] = []
    seen = {}
    for i, line in enumerate(lines, 1):
        name = line.strip()
        if not name:
            raise DataError(f"{path}:{i}: empty line; expected one class name per line, line i naming class i - 1")
        if name in seen:
            raise DataError(f"{path}:{i}: class name {name!r} repeats line {seen[name]}; each class needs its own name")
        seen[name] = i
        names.append(name)
    if not names:
        raise DataError(f"{path}: no class names (expected one name per line)")
    if num_classes is not None and len(names) != num_classes:
        raise DataError(f"{path}: {len(names)} class names for {num_classes} classes; expected one name per class, "
                        f"in label order")
    return names


def class_names_beside(paths: Iterable[Optional[str]], *, num_classes: Optional[int] = None) -> Optional[List[str]]:
    """The names of the first ``classes.txt`` found in the folder of one of ``paths`` (split
    lists, or folders such as the data root), in that order; None when there is none. A file
    that is found but does not fit (``num_classes``) is a :class:`DataError` naming it."""
    for path in paths:
        if not path:
            continue
        folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        candidate = os.path.join(folder, CLASSES_FILE)
        if os.path.isfile(candidate):
            return read_class_names(candidate, num_classes=num_classes)
    return None


def run_class_names(folder: str, *, num_classes: Optional[int] = None, metrics: Optional[dict] = None
                    ) -> Optional[List[str]]:
    """The class names of a run folder or an evaluation folder, from the first that has them:

    1. its ``metrics.json``'s ``class_names`` (``metrics``: that file's content, already read);
    2. the ``name`` column of its ``per_class.csv``;
    3. the ``classes.txt`` beside the split lists (or in the data root) of the run's
       ``args.yaml`` (an evaluation folder: the run of ``metrics['checkpoint']``);
    4. the ``class_names`` the checkpoint keeps (``best.pth``, ``checkpoint.pth``, or the
       evaluated checkpoint).

    None when none has them. Names that do not fit ``num_classes`` are a :class:`DataError`.
    """
    folder = os.fspath(folder)
    if metrics is None:
        metrics = _read_json(os.path.join(folder, "metrics.json")) or {}
    names = metrics.get("class_names")
    if isinstance(names, list) and names:
        return check_class_names(names, num_classes, os.path.join(folder, "metrics.json"))
    names = _csv_names(os.path.join(folder, "per_class.csv"))
    if names:
        return check_class_names(names, num_classes, os.path.join(folder, "per_class.csv"))
    checkpoints = [os.path.join(folder, n) for n in ("best.pth", "checkpoint.pth")]
    evaluated = metrics.get("checkpoint")
    evaluated = [evaluated] if isinstance(evaluated, str) else evaluated if isinstance(evaluated, list) else []
    run_folders = [folder] + [os.path.dirname(os.path.abspath(p)) for p in evaluated if isinstance(p, str)]
    for run in run_folders:
        args = _read_yaml(os.path.join(run, "args.yaml"))
        if args:
            names = class_names_beside([args.get(k) for k in ("train_list", "val_list", "test_list", "data_root")],
                                       num_classes=num_classes)
            if names:
                return names
    for path in [p for p in evaluated if isinstance(p, str)] + checkpoints:
        names = checkpoint_class_names(path)
        if names:
            return check_class_names(names, num_classes, path)
    return None


def find_class_names(*, checkpoint: Optional[str] = None, checkpoint_meta: Optional[dict] = None,
                     paths: Iterable[Optional[str]] = (), num_classes: Optional[int] = None) -> Optional[List[str]]:
    """The class names to show for a checkpoint's predictions, from the first that has them:
    the checkpoint's own ``class_names`` (``checkpoint_meta``, else read off the file), a
    ``classes.txt`` beside ``paths`` (:func:`class_names_beside`: the split lists, the data
    root), the checkpoint's run folder (:func:`run_class_names`). None when none has them;
    names that do not fit ``num_classes`` are a :class:`DataError` naming their source."""
    names = (checkpoint_meta or {}).get("class_names")
    if not names and checkpoint is not None:
        names = checkpoint_class_names(checkpoint)
    if names:
        return check_class_names(names, num_classes, checkpoint or "the checkpoint")
    names = class_names_beside(paths, num_classes=num_classes)
    if names is None and checkpoint is not None:
        names = run_class_names(os.path.dirname(os.path.abspath(checkpoint)), num_classes=num_classes)
    return names


def checkpoint_class_names(path: str) -> Optional[List[str]]:
    """The ``class_names`` a checkpoint file keeps, None when it keeps none or cannot be read
    as ours (tensors memory-mapped: the weights are not read)."""
    if not os.path.isfile(path):
        return None
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError):
        return None  # not ours (the original's pickles, safetensors): they keep no names
    names = obj.get("class_names") if isinstance(obj, dict) else None
    return [str(n) for n in names] if isinstance(names, (list, tuple)) and names else None


def _read_json(path: str) -> Optional[dict]:
    import json

    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _read_yaml(path: str) -> Optional[dict]:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            obj = yaml.safe_load(f)
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return obj if isinstance(obj, dict) else None


def _csv_names(path: str) -> Optional[List[str]]:
    """The ``name`` column of a per_class.csv (None: no file, or no such column)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, ValueError, csv.Error):
        return None
    names = [r.get("name") for r in rows]
    return names if rows and all(names) else None


def check_class_names(class_names: Optional[Sequence[str]], num_classes: Optional[int],
                      source: str = "class_names") -> Optional[List[str]]:
    """``class_names`` as a list of strings (None stays None); a :class:`DataError` (a
    ValueError) naming ``source`` when they are not ``num_classes`` names."""
    if class_names is None:
        return None
    names = [str(n) for n in class_names]
    if num_classes is not None and len(names) != num_classes:
        raise DataError(f"{source}: {len(names)} class names for {num_classes} classes")
    return names


def class_label(c: int, class_names: Optional[Sequence[str]] = None, *, short: bool = False) -> str:
    """Class ``c``'s name (cut to a tick label's length with ``short``), else its index."""
    if class_names is None:
        return str(c)
    name = str(class_names[c])
    return name[:_TICK_CHARS - 1] + "…" if short and len(name) > _TICK_CHARS else name


def _set_class_ticks(ax, axis: str, order: Sequence[int], class_names: Optional[Sequence[str]]) -> None:
    """Class tick labels along ``axis`` ('x' or 'y'): names (smaller, slanted on x) or indices."""
    labels = [class_label(c, class_names, short=True) for c in order]
    style = {} if class_names is None else {"fontsize": 8}
    if axis == "x":
        if class_names is not None:
            style.update(rotation=45, ha="right", rotation_mode="anchor")
        ax.set_xticks(range(len(labels)), labels, **style)
    else:
        ax.set_yticks(range(len(labels)), labels, **style)


def _fmt(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{float(x):.4f}"


def write_eval_report(out_dir: str, metrics: dict, train_counts: Optional[Sequence[int]] = None, *,
                      confusion=None, class_names: Optional[Sequence[str]] = None) -> List[str]:
    """per_class.csv, per_class.png, (<= 100 classes) confusion.png and reliability.png into ``out_dir``.

    Args:
        metrics: :meth:`gpaco.metrics.ClassificationMeter.compute` output (``per_class``,
            ``per_class_precision``, ``per_class_recall``, ``per_class_test_count``); a
            ``confusion`` entry there is used when the argument is not given, a
            ``class_names`` entry when ``class_names`` is not.
        train_counts: training images per class (None: unknown; the columns stay empty).
        confusion: [C, C] counts, rows = target, columns = prediction.
        class_names: [C] names in class order (None: the CSV has no ``name`` column and the
            figures show class indices).
    Returns:
        the paths written.
    """
    per_class = list(metrics.get("per_class") or [])
    n = len(per_class)
    names = check_class_names(class_names if class_names is not None else metrics.get("class_names"), n) if n else None
    test_counts = metrics.get("per_class_test_count") or [None] * n
    precision = metrics.get("per_class_precision") or [None] * n
    recall = metrics.get("per_class_recall") or per_class
    train = list(train_counts) if train_counts is not None else None
    written = []
    path = os.path.join(out_dir, "per_class.csv")
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:  # a full disk keeps the old one
        w = csv.writer(f)
        w.writerow(["class", *(["name"] if names else []), "train_count", "test_count", "accuracy", "precision",
                    "recall"])
        for c in range(n):
            w.writerow([c, *([names[c]] if names else []), train[c] if train is not None and c < len(train) else "",
                        "" if test_counts[c] is None else test_counts[c],
                        _fmt(per_class[c]), _fmt(precision[c]), _fmt(recall[c])])
    written.append(path)
    path = os.path.join(out_dir, "per_class.png")
    plot_per_class(per_class, train, path, class_names=names)
    written.append(path)
    if confusion is None:
        confusion = metrics.get("confusion")
    if confusion is not None and 0 < len(confusion) <= CONFUSION_MAX_CLASSES:
        path = os.path.join(out_dir, "confusion.png")
        plot_confusion(confusion, path, class_names=names)
        written.append(path)
    if metrics.get("calibration"):
        path = os.path.join(out_dir, "reliability.png")
        plot_reliability(metrics["calibration"], metrics.get("ece"), path)
        written.append(path)
    return written


def fairness_line(metrics: dict) -> str:
    """``per class: worst 0.00 (cat) | std 40.82 | CV 0.82 | many - few 50.00`` (what is known of
    it; the worst class named when ``metrics`` holds ``class_names``)."""
    parts = []
    for key, label, fmt in (("worst_class_acc", "worst", ".2f"), ("class_acc_std", "std", ".2f"),
                            ("class_acc_cv", "CV", ".3f"), ("many_few_gap", "many - few", ".2f")):
        value = metrics.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            parts.append(f"{label} {value:{fmt}}")
            if key == "worst_class_acc":
                parts[-1] += _worst_class_name(metrics)
    return "per class: " + " | ".join(parts) if parts else "per class: no class has a test sample"


def _worst_class_name(metrics: dict) -> str:
    """`` (cat)``: the class of the lowest per-class accuracy, when the names are known."""
    names, per_class = metrics.get("class_names"), metrics.get("per_class")
    if not names or not per_class or len(names) != len(per_class):
        return ""
    known = [(a, c) for c, a in enumerate(per_class) if a is not None and a == a]
    return f" ({names[min(known)[1]]})" if known else ""


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
    """Reliability diagram: per confidence bin, accuracy (bars) against the diagonal, the gap to
    the bin's mean confidence outlined; ``calibration`` as ClassificationMeter.compute's (per
    bin ``count``, ``accuracy``, ``confidence``). A bin without a sample is left blank: it has
    neither an accuracy nor a confidence to draw."""
    plt = _pyplot()
    n = int(calibration["bins"])
    width = 100.0 / n
    centers = [width * (b + 0.5) for b in range(n)]
    counts = calibration.get("count") or [None] * n  # older metrics.json files: no counts, NaN marks empty

    def known(v) -> bool:
        return v is not None and v == v

    filled = [b for b in range(n) if known(calibration["accuracy"][b]) and known(calibration["confidence"][b])
              and (counts[b] is None or counts[b] > 0)]
    x = [centers[b] for b in filled]
    acc = [float(calibration["accuracy"][b]) for b in filled]
    conf = [float(calibration["confidence"][b]) for b in filled]
    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=100)
    ax.bar(x, acc, width=width, color="#2e86de", edgecolor="black", lw=0.5, label="accuracy")
    ax.bar(x, [c - a for c, a in zip(conf, acc)], bottom=acc, width=width, color="#e74c3c", alpha=0.3,
           edgecolor="#c0392b", lw=0.5, label="gap to confidence")
    ax.plot([0, 100], [0, 100], "--", color="gray", lw=1)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("top-1 confidence (%)")
    ax.set_ylabel("accuracy (%)")
    title = f"reliability, ECE {ece:.2f}" if ece is not None else "reliability"
    if len(filled) < n:
        title += f" ({n - len(filled)} of {n} bins empty)"
    ax.set_title(title, fontsize=10)
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


def plot_per_class(per_class: Sequence[float], train_counts: Optional[Sequence[int]], path: str, *,
                   class_names: Optional[Sequence[str]] = None) -> None:
    """Per-class test accuracy against the class's training frequency, classes sorted head to tail
    (class order when ``train_counts`` is None); up to 30 classes are labelled by name
    (``class_names``) or index, the worst class is named in the title."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    n = len(per_class)
    names = check_class_names(class_names, n)
    if train_counts is not None:
        order = sorted(range(n), key=lambda c: -train_counts[c])
    else:
        order = list(range(n))
    acc = [per_class[c] if per_class[c] is not None else float("nan") for c in order]
    fig, ax1 = plt.subplots(figsize=(7, 3.5 if names is None or n > 30 else 4.2), dpi=100)
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
        _set_class_ticks(ax1, "x", order, names)
    handles = [h for ax in dict.fromkeys((ax1, ax2)) for h in ax.get_legend_handles_labels()[0]]
    if train_counts is not None and _shot_boundaries(order, train_counts):
        handles.append(Line2D([], [], color="gray", ls="--", lw=0.8, label="many | medium | few"))
    ax2.legend(handles=handles, loc="upper right", fontsize=8)
    known = [(a, order[i]) for i, a in enumerate(acc) if a == a]
    title = "per-class test accuracy"
    if known:
        worst, worst_class = min(known)
        title += f": mean {np.mean([a for a, _ in known]):.1f}, worst {worst:.1f}"
        if names is not None:
            title += f" ({class_label(worst_class, names, short=True)})"
    ax1.set_title(title, fontsize=10)
    fig.tight_layout()
    _save_figure(plt, fig, path)


def plot_confusion(confusion, path: str, *, class_names: Optional[Sequence[str]] = None) -> None:
    """Row-normalised confusion matrix (percent of each true class); up to 20 classes the cells
    hold the counts and the axes the class names (``class_names``) or indices."""
    plt = _pyplot()
    cm = np.asarray(confusion, dtype=np.float64)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0) * 100.0
    c = cm.shape[0]
    names = check_class_names(class_names, c)
    side = min(12.0, max(5.5, 3.0 + 0.12 * c)) + (1.0 if names is not None and c <= 20 else 0.0)
    fig, ax = plt.subplots(figsize=(side, side * 0.85), dpi=100)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="% of the true class")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if c <= 20:
        _set_class_ticks(ax, "x", range(c), names)
        _set_class_ticks(ax, "y", range(c), names)
        for i in range(c):
            for j in range(c):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 50 else "black")
    ax.set_title("confusion (colour: row %; numbers: counts)" if c <= 20 else "confusion (row-normalised)",
                 fontsize=10)
    fig.tight_layout()
    _save_figure(plt, fig, path)
