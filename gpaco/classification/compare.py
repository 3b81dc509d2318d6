"""Comparing evaluated runs: many/medium/few, fairness and robustness side by side, and the
per-class accuracies of two or more runs.

``tools/compare_runs.py`` uses :func:`load_run`, :func:`compare_table` (two runs),
:func:`side_by_side_table` (any number), :func:`per_class_table`, :func:`plot_per_class_difference`
(two runs) and :func:`plot_per_class_runs` (more); :func:`per_class_problem` says why runs
cannot be compared class by class (a run without a test split, another number of classes).
Classes are named when the runs have names (:func:`gpaco.classification.report.run_class_names`).
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from gpaco.classification.report import (  # the per-run figures' helpers
    _pyplot, _save_figure, _set_class_ticks, _shot_boundaries, check_class_names, class_label, run_class_names,
)
from gpaco.data.splits import DataError
from gpaco.metrics import format_accuracy

__all__ = ["load_run", "load_metrics_json", "has_test_metrics", "compare_table", "side_by_side_table",
           "per_class_table", "per_class_problem", "shared_class_names", "plot_per_class_difference",
           "plot_per_class_runs", "PER_CLASS_TABLE_MAX", "EVAL_HINT"]

#: The per-class table is printed up to this many classes (the figure shows any number).
PER_CLASS_TABLE_MAX = 30
#: What to do about a run without test metrics.
EVAL_HINT = "tools/eval.py --checkpoint RUN/best.pth --test-list LIST writes them to RUN/eval, which is read next time"


def load_metrics_json(path: str) -> dict:
    """The JSON object in ``path``; :class:`DataError` naming the file if it is not one (a run
    killed while writing it, a file of another tool)."""
    try:
        with open(path, "rb") as f:
            metrics = json.loads(f.read().decode("utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"{path}: not a valid metrics.json ({type(e).__name__}: {e}); "
                        f"re-run tools/eval.py to rewrite it") from None
    if not isinstance(metrics, dict):
        raise DataError(f"{path}: expected a JSON object of metrics, got a {type(metrics).__name__}")
    return metrics


def has_test_metrics(metrics: dict) -> bool:
    """Whether a metrics.json holds the metrics of a split: a run trained without ``--test-list``
    writes only its selection (``selection``, ``selected_epoch``)."""
    return any(k in metrics for k in ("top1", "num_samples", "per_class"))


def load_run(path: str) -> dict:
    """A run's numbers from a run folder, an evaluation folder or a metrics.json.

    Returns ``{'path', 'metrics', 'source' (the metrics.json read), 'per_class' [C] (percent,
    NaN undefined; [] without a test split), 'train_counts' ([C] or None), 'test_counts',
    'class_names' ([C] or None), 'notes' (what the reader should know)}``.
    ``per_class.csv`` next to ``metrics.json`` supplies the train counts (training's
    metrics.json does not hold them). A run folder whose own metrics.json has no test metrics
    (trained without ``--test-list``) is read from its ``eval/`` folder when tools/eval.py
    wrote one there (its default).
    """
    path = os.fspath(path)
    mpath = os.path.join(path, "metrics.json") if os.path.isdir(path) else path
    if not os.path.isfile(mpath):
        raise FileNotFoundError(f"{path}: no metrics.json (give a run folder, an evaluation folder or the file)")
    metrics = load_metrics_json(mpath)
    notes: List[str] = []
    evaluated = os.path.join(os.path.dirname(mpath), "eval", "metrics.json")
    if not has_test_metrics(metrics) and os.path.isfile(evaluated):
        later = load_metrics_json(evaluated)
        if has_test_metrics(later):
            notes.append(f"{path}: test metrics from {evaluated} (the run had no --test-list)")
            metrics, mpath = later, evaluated
    folder = os.path.dirname(mpath)
    try:
        per_class = [float("nan") if v is None else float(v) for v in metrics.get("per_class") or []]
    except (TypeError, ValueError):
        raise DataError(f"{mpath}: 'per_class' must be a list of numbers (a corrupt or foreign metrics.json?)") \
            from None
    train = test = None
    csv_path = os.path.join(folder, "per_class.csv")
    if os.path.isfile(csv_path):
        # a truncated or hand-edited CSV: one line naming it, not a traceback
        try:
            with open(csv_path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            if rows and all(r.get("train_count") for r in rows):
                train = [int(r["train_count"]) for r in rows]
            if rows and all(r.get("test_count") for r in rows):
                test = [int(r["test_count"]) for r in rows]
            if not per_class:
                per_class = [float(r["accuracy"]) if r.get("accuracy") else float("nan") for r in rows]
        except (ValueError, TypeError, csv.Error) as e:
            raise DataError(f"{csv_path}: cannot read the per-class table ({type(e).__name__}: {e}); expected "
                            f"tools/eval.py's per_class.csv") from None
    test = test or metrics.get("per_class_test_count")
    try:  # names that do not fit are said, not fatal: the numbers can still be compared
        names = run_class_names(folder, num_classes=len(per_class) or None, metrics=metrics)
    except DataError as e:
        names = None
        notes.append(f"class indices shown for {path}: {e}")
    return {"path": path, "metrics": metrics, "source": mpath, "per_class": per_class, "train_counts": train,
            "test_counts": test, "class_names": names, "notes": notes}


def _shot_means(per_class: Sequence[float], train: Optional[Sequence[int]]) -> Dict[str, Optional[float]]:
    if train is None:
        return {}
    from gpaco.metrics import ShotSplit

    groups = ShotSplit().groups(train)
    out = {}
    for g in ("many", "medium", "few"):
        vals = [v for v, gg in zip(per_class, groups) if gg == g and not math.isnan(v)]
        out[g] = float(np.mean(vals)) if vals else None
        out[g + "_classes"] = int(sum(1 for gg in groups if gg == g))
    return out


# class_fairness's figures in the comparison tables (training's and eval's metrics.json hold them)
FAIRNESS_LABELS = (("worst_class_acc", "worst class acc"), ("class_acc_std", "per-class std"),
                   ("class_acc_cv", "per-class CV"), ("many_few_gap", "gap many - few"))


def compare_table(a: dict, b: dict, names: Sequence[str] = ("A", "B")) -> str:
    """Top-1/top-5, many/medium/few (with class counts), mean class accuracy, the per-class
    fairness figures and, when both have them, the robustness figures, side by side with the difference B - A."""
    ma, mb = a["metrics"], b["metrics"]
    sa = {**_shot_means(a["per_class"], a["train_counts"]), **{k: ma[k] for k in ("many", "medium", "few",
                                                                                   "many_classes", "medium_classes",
                                                                                   "few_classes") if k in ma}}
    sb = {**_shot_means(b["per_class"], b["train_counts"]), **{k: mb[k] for k in ("many", "medium", "few",
                                                                                   "many_classes", "medium_classes",
                                                                                   "few_classes") if k in mb}}
    rows = []
    for key, label in (("top1", "top-1"), ("top5", "top-5")):
        rows.append((label, ma.get(key), mb.get(key)))
    for g in ("many", "medium", "few"):
        na, nb = sa.get(g + "_classes"), sb.get(g + "_classes")
        cls = f" ({na} cls)" if na == nb and na is not None else \
            f" ({_count(na)}/{_count(nb)} cls)" if na is not None or nb is not None else ""
        rows.append((f"{g}{cls}", sa.get(g), sb.get(g)))
    rows.append(("mean class acc", ma.get("mean_class_acc"), mb.get("mean_class_acc")))
    for key, label in FAIRNESS_LABELS:
        if ma.get(key) is not None or mb.get(key) is not None:
            rows.append((label, ma.get(key), mb.get(key)))
    if ma.get("ece") is not None or mb.get("ece") is not None:
        rows.append(("ECE (x100, 15 bins)", ma.get("ece"), mb.get("ece")))
    ca, cb = ma.get("corruption") or {}, mb.get("corruption") or {}
    for key, label in (("mce_unnormalised", "mCE (unnormalised)"), ("mce_alexnet_normalised", "rel. mCE (AlexNet)"),
                       ("mce_baseline_normalised", "mCE / baseline")):
        if ca.get(key) is not None or cb.get(key) is not None:
            rows.append((label, ca.get(key), cb.get(key)))
    for key, label in (("imagenet_r", "ImageNet-R top-1"), ("imagenet_sketch", "ImageNet-Sketch top-1")):
        if (ma.get(key) or {}).get("top1") is not None or (mb.get(key) or {}).get("top1") is not None:
            rows.append((label, (ma.get(key) or {}).get("top1"), (mb.get(key) or {}).get("top1")))
    wa = max(10, len(names[0]))
    wb = max(10, len(names[1]))
    width = max(len(r[0]) for r in rows) + 2
    out = [f"{'':<{width}s}{names[0]:>{wa}s} {names[1]:>{wb}s} {'B - A':>8s}"]

    def f(v, w):
        return format_accuracy(v if isinstance(v, (int, float)) else None).rjust(w)

    for label, va, vb in rows:
        d = vb - va if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None
        out.append(f"{label:<{width}s}{f(va, wa)} {f(vb, wb)} {f(d, 8)}")
    n_a, n_b = ma.get("num_samples"), mb.get("num_samples")
    missing = [n for n, m in zip(names, (ma, mb)) if not has_test_metrics(m)]
    if missing:
        out.append(f"note: {' and '.join(missing)} {'has' if len(missing) == 1 else 'have'} no test metrics "
                   f"(trained without --test-list): {EVAL_HINT}")
    elif n_a != n_b:
        out.append(f"note: the runs were evaluated on different numbers of images ({n_a} vs {n_b})")
    return "\n".join(out)


def _count(n: Optional[int]) -> str:
    return "—" if n is None else str(n)


def side_by_side_table(runs: Sequence[dict], names: Sequence[str]) -> str:
    """Top-1, many/medium/few, mean class accuracy, worst class, per-class std and ECE of any number of runs,
    one column each ("—" where a run has no such figure, e.g. no test split)."""
    cols = []
    for r in runs:
        m = r["metrics"]
        shots = {**_shot_means(r["per_class"], r["train_counts"]), **{k: m[k] for k in ("many", "medium", "few")
                                                                        if k in m}}
        cols.append({"top-1": m.get("top1"), "many": shots.get("many"), "medium": shots.get("medium"),
                     "few": shots.get("few"), "mean class acc": m.get("mean_class_acc"),
                     "worst class acc": m.get("worst_class_acc"), "per-class std": m.get("class_acc_std"),
                     "ECE (x100)": m.get("ece")})
    width = max(10, *(len(n) for n in names))
    out = [f"{'':<16s}" + " ".join(f"{n:>{width}s}" for n in names)]
    for label in cols[0]:
        cells = [c[label] for c in cols]
        out.append(f"{label:<16s}" + " ".join(format_accuracy(v if isinstance(v, (int, float)) else None).rjust(width)
                                             for v in cells))
    missing = [n for n, r in zip(names, runs) if not has_test_metrics(r["metrics"])]
    if missing:
        out.append(f"note: no test metrics for {', '.join(missing)} (trained without --test-list): {EVAL_HINT}")
    return "\n".join(out)


def per_class_problem(runs: Sequence[dict], names: Sequence[str]) -> Optional[str]:
    """Why ``runs`` cannot be compared class by class (a run without per-class accuracies, runs
    with different numbers of classes), or None when they can."""
    without = [n for n, r in zip(names, runs) if not r["per_class"]]
    if without:
        return f"{', '.join(without)} {'has' if len(without) == 1 else 'have'} no per-class accuracies (no test split)"
    sizes = {len(r["per_class"]) for r in runs}
    if len(sizes) > 1:
        return "the runs have different numbers of classes: " + ", ".join(
            f"{n} {len(r['per_class'])}" for n, r in zip(names, runs))
    return None


def shared_class_names(runs: Sequence[dict]) -> Optional[List[str]]:
    """The class names of the runs (the first run's that has them; runs of one dataset share them)."""
    return next((r["class_names"] for r in runs if r.get("class_names")), None)


def _head_to_tail(runs: Sequence[dict]) -> tuple:
    """(class order head to tail by the first run's train counts that are known, those counts or None)."""
    n = len(runs[0]["per_class"])
    train = next((r["train_counts"] for r in runs if r["train_counts"] is not None and len(r["train_counts"]) == n),
                 None)
    order = sorted(range(n), key=lambda c: -train[c]) if train is not None else list(range(n))
    return order, train


def per_class_table(runs: Sequence[dict], names: Sequence[str], class_names: Optional[Sequence[str]] = None) -> str:
    """One row per class, head to tail: the class (name when known), its training images and each
    run's accuracy; with two runs also B - A. ValueError (:func:`per_class_problem`) when the runs
    cannot be compared class by class."""
    problem = per_class_problem(runs, names)
    if problem:
        raise ValueError(problem)
    order, train = _head_to_tail(runs)
    class_names = check_class_names(class_names if class_names is not None else shared_class_names(runs), len(order))
    labels = [class_label(c, class_names) for c in order]
    first = max(5, *(len(x) for x in labels))
    width = max(8, *(len(n) for n in names))
    head = f"{'class':<{first}s} {'train':>6s} " + " ".join(f"{n:>{width}s}" for n in names)
    out = [head + (f" {'B - A':>8s}" if len(runs) == 2 else "")]
    for label, c in zip(labels, order):
        cells = [r["per_class"][c] for r in runs]
        line = f"{label:<{first}s} {'' if train is None else train[c]:>6} " + " ".join(
            format_accuracy(v).rjust(width) for v in cells)
        if len(runs) == 2:
            d = cells[1] - cells[0]
            line += " " + format_accuracy(d).rjust(8)
        out.append(line)
    return "\n".join(out)


def plot_per_class_difference(a: dict, b: dict, path: str, names: Sequence[str] = ("A", "B"), *,
                              class_names: Optional[Sequence[str]] = None) -> None:
    """Bar per class of accuracy(B) - accuracy(A), classes sorted head to tail by A's train counts
    (B's when A has none), labelled by name (``class_names``, else the runs') up to 30 classes.
    ValueError (:func:`per_class_problem`) when the runs cannot be compared class by class."""
    problem = per_class_problem([a, b], names)
    if problem:
        raise ValueError(problem)
    plt = _pyplot()
    order, train = _head_to_tail([a, b])
    n = len(order)
    class_names = check_class_names(class_names if class_names is not None else shared_class_names([a, b]), n)
    diff = [b["per_class"][c] - a["per_class"][c] for c in order]
    fig, ax = plt.subplots(figsize=(7, 3.5 if class_names is None or n > 30 else 4.2), dpi=100)
    colors = ["#27ae60" if (d == d and d >= 0) else "#c0392b" for d in diff]
    ax.bar(range(n), [0 if d != d else d for d in diff], color=colors, width=1.0 if n > 100 else 0.8)
    ax.axhline(0, color="black", lw=0.6)
    if n <= 30:
        _set_class_ticks(ax, "x", order, class_names)
    if train is not None:
        for x in _shot_boundaries(order, train):
            ax.axvline(x, color="gray", ls="--", lw=0.8)
        ax.set_xlabel("class (sorted by training frequency; dashed: many | medium | few)")
    else:
        ax.set_xlabel("class")
    ax.set_ylabel(f"accuracy {names[1]} - {names[0]} (points)")
    ax.set_title(f"per-class accuracy difference: {names[1]} vs {names[0]}", fontsize=10)
    fig.tight_layout()
    _save_figure(plt, fig, path)


def plot_per_class_runs(runs: Sequence[dict], path: str, names: Sequence[str], *,
                        class_names: Optional[Sequence[str]] = None) -> None:
    """Per-class test accuracy of every run (one line each), classes sorted head to tail, the
    training images per class behind them (log axis) when known. ValueError
    (:func:`per_class_problem`) when the runs cannot be compared class by class."""
    problem = per_class_problem(runs, names)
    if problem:
        raise ValueError(problem)
    plt = _pyplot()
    order, train = _head_to_tail(runs)
    n = len(order)
    class_names = check_class_names(class_names if class_names is not None else shared_class_names(runs), n)
    fig, ax1 = plt.subplots(figsize=(7.5, 3.8 if class_names is None or n > 30 else 4.5), dpi=100)
    if train is not None:
        ax1.bar(range(n), [train[c] for c in order], color="#dfe6ee", width=1.0 if n > 100 else 0.8,
                label="train images")
        ax1.set_yscale("log")
        ax1.set_ylabel("train images (log)")
        ax1.set_xlabel("class (sorted by training frequency; dashed: many | medium | few)")
        for x in _shot_boundaries(order, train):
            ax1.axvline(x, color="gray", ls="--", lw=0.8)
        ax2 = ax1.twinx()
    else:
        ax1.set_xlabel("class")
        ax2 = ax1
    style = "o-" if n <= 100 else "-"
    for name, r in zip(names, runs):
        ax2.plot(range(n), [r["per_class"][c] for c in order], style, ms=3, lw=1, label=name)
    ax2.set_ylabel("test accuracy (%)")
    ax2.set_ylim(0, 100)
    if n <= 30:
        _set_class_ticks(ax1, "x", order, class_names)
    handles = [h for ax in dict.fromkeys((ax1, ax2)) for h in ax.get_legend_handles_labels()[0]]
    ax2.legend(handles=handles, loc="best", fontsize=8)
    ax1.set_title(f"per-class test accuracy of {len(runs)} runs", fontsize=10)
    fig.tight_layout()
    _save_figure(plt, fig, path)
