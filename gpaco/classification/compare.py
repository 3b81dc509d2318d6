"""Comparing evaluated runs: many/medium/few, fairness and robustness side by side, and the
per-class accuracy difference of two runs.

``tools/compare_runs.py`` uses :func:`load_run`, :func:`compare_table`,
:func:`side_by_side_table` and :func:`plot_per_class_difference`.
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Dict, Optional, Sequence

import numpy as np

from gpaco.classification.report import _pyplot, _shot_boundaries  # the per-run figures' helpers
from gpaco.data.splits import DataError
from gpaco.metrics import format_accuracy

__all__ = ["load_run", "load_metrics_json", "compare_table", "side_by_side_table", "plot_per_class_difference"]


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


def load_run(path: str) -> dict:
    """A run's numbers from a run folder, an evaluation folder or a metrics.json.

    Returns ``{'path', 'metrics', 'per_class' [C] (percent, NaN undefined), 'train_counts'
    ([C] or None), 'test_counts'}``. ``per_class.csv`` next to ``metrics.json`` supplies the
    train counts (training's metrics.json does not hold them).
    """
    path = os.fspath(path)
    mpath = os.path.join(path, "metrics.json") if os.path.isdir(path) else path
    if not os.path.isfile(mpath):
        raise FileNotFoundError(f"{path}: no metrics.json (give a run folder, an evaluation folder or the file)")
    metrics = load_metrics_json(mpath)
    folder = os.path.dirname(mpath)
    try:
        per_class = [float("nan") if v is None else float(v) for v in metrics.get("per_class") or []]
    except (TypeError, ValueError):
        raise DataError(f"{mpath}: 'per_class' must be a list of numbers (a corrupt or foreign metrics.json?)") from None
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
    return {"path": path, "metrics": metrics, "per_class": per_class, "train_counts": train, "test_counts": test}


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
        cls = f" ({na} cls)" if na == nb and na is not None else f" ({na}/{nb} cls)" if na or nb else ""
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
    if n_a != n_b:
        out.append(f"note: the runs were evaluated on different numbers of images ({n_a} vs {n_b})")
    return "\n".join(out)


def side_by_side_table(runs: Sequence[dict], names: Sequence[str]) -> str:
    """Top-1, many/medium/few, mean class accuracy, worst class, per-class std and ECE of any number of runs,
    one column each."""
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
    return "\n".join(out)


def plot_per_class_difference(a: dict, b: dict, path: str, names: Sequence[str] = ("A", "B")) -> None:
    """Bar per class of accuracy(B) - accuracy(A), classes sorted head to tail by A's train counts."""
    if len(a["per_class"]) != len(b["per_class"]):
        raise ValueError(f"the runs have {len(a['per_class'])} and {len(b['per_class'])} classes")
    plt = _pyplot()
    n = len(a["per_class"])
    train = a["train_counts"] or b["train_counts"]
    order = sorted(range(n), key=lambda c: -train[c]) if train is not None else list(range(n))
    diff = [b["per_class"][c] - a["per_class"][c] for c in order]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    colors = ["#27ae60" if (d == d and d >= 0) else "#c0392b" for d in diff]
    ax.bar(range(n), [0 if d != d else d for d in diff], color=colors, width=1.0 if n > 100 else 0.8)
    ax.axhline(0, color="black", lw=0.6)
    if n <= 30:
        ax.set_xticks(range(n), [str(c) for c in order])
    if train is not None:
        for x in _shot_boundaries(order, train):
            ax.axvline(x, color="gray", ls="--", lw=0.8)
        ax.set_xlabel("class (sorted by training frequency; dashed: many | medium | few)")
    else:
        ax.set_xlabel("class")
    ax.set_ylabel(f"accuracy {names[1]} - {names[0]} (points)")
    ax.set_title(f"per-class accuracy difference: {names[1]} vs {names[0]}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
