"""The report of a study: ``study.md``, ``study.csv``, ``study_runs.csv`` and figures, from the
finished run folders of its plan.

Per dataset and method, over seeds: mean ± standard deviation (ddof 1) and the 95 % Student-t
interval of the mean of every test metric (classification: top-1, mean class accuracy,
many/medium/few, the per-class fairness figures, ECE; segmentation: mIoU, mAcc, aAcc and each
class's IoU); the paired difference of each method against the baseline over the seeds both
finished, with its interval and how many seeds favour each side. Figures (one set per dataset):
``<dataset>_metrics.png`` (means, intervals and every seed), ``<dataset>_paired.png`` (the
paired differences), ``<dataset>_per_class.png`` (per-class accuracy against training frequency
on a log axis; segmentation: per-class IoU) and ``<dataset>_reliability.png`` (reliability
diagrams side by side, the seeds' test predictions pooled).
"""
from __future__ import annotations

import csv
import math
import os
import platform
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from gpaco.engine.logging import atomic_path
from gpaco.study.plan import Job, final_metric
from gpaco.study.stats import CONFIDENCE, Paired, Summary, paired_difference, summarize, t_quantile

__all__ = ["Metric", "METRICS", "RunResult", "collect", "aggregate", "Row", "write_report", "intervals_note"]


class Metric(NamedTuple):
    key: str
    label: str
    higher_is_better: bool = True
    digits: int = 2
    in_table: bool = True


#: the metrics of a task's report, in table order (``in_table``: also in study.md; all are in study.csv)
METRICS: Dict[str, Tuple[Metric, ...]] = {
    "classification": (
        Metric("top1", "top-1"), Metric("mean_class_acc", "mean class acc"), Metric("many", "many"),
        Metric("medium", "medium"), Metric("few", "few"), Metric("worst_class_acc", "worst class"),
        Metric("class_acc_std", "per-class std", False), Metric("class_acc_cv", "per-class CV", False, 3, False),
        Metric("many_few_gap", "gap many - few", False), Metric("ece", "ECE (x100)", False),
        Metric("top5", "top-5", True, 2, False)),
    "segmentation": (Metric("miou", "mIoU"), Metric("macc", "mAcc"), Metric("aacc", "aAcc")),
}
#: the metrics of the paired-difference table and figure
PAIRED_KEYS = {"classification": ("top1", "many", "medium", "few", "worst_class_acc", "ece"),
               "segmentation": ("miou", "macc")}
#: the metrics of the bar figure (one unit: percent)
FIGURE_KEYS = {"classification": ("top1", "many", "medium", "few"), "segmentation": ("miou", "macc", "aacc")}


class RunResult(NamedTuple):
    """One finished run: its test metrics, per-class values (accuracy or IoU, percent, NaN where
    undefined), class names and training images per class (None: unknown)."""
    dataset: str
    method: str
    seed: int
    folder: str
    metrics: dict
    per_class: List[float]
    class_names: List[str]
    train_counts: Optional[List[int]]


def _number(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def load_result(job: Job, task: str) -> RunResult:
    """The results of a finished job's run folder."""
    folder = job.folder
    if task == "classification":
        from gpaco.classification.compare import load_run

        run = load_run(folder)
        metrics, per_class, train = run["metrics"], [_number(v) for v in run["per_class"]], run["train_counts"]
    else:
        from gpaco.classification.compare import load_metrics_json

        metrics = load_metrics_json(os.path.join(folder, "metrics.json"))
        per_class, train = [_number(v) for v in metrics.get("per_class_iou") or []], None
        counts = os.path.join(folder, "class_counts.txt")  # image-level counts, written by the methods that use them
        if os.path.isfile(counts):
            try:
                train = [int(x) for x in open(counts, encoding="utf-8").read().split()]
            except ValueError:
                train = None
    names = metrics.get("class_names")
    names = [str(n) for n in names] if isinstance(names, list) and len(names) == len(per_class) else \
        [str(c) for c in range(len(per_class))]
    if train is not None and len(train) != len(per_class):
        train = None
    return RunResult(job.dataset, job.method, job.seed, folder, metrics, per_class, names, train)


def collect(jobs: Sequence[Job], task: str) -> List[RunResult]:
    """The :class:`RunResult` of every finished job (the others are left out)."""
    return [load_result(j, task) for j in jobs if final_metric(j.folder, task) is not None]


class Row(NamedTuple):
    """One (dataset, method, metric) of study.csv: the values per seed, their summary and the
    paired comparison with the baseline (None for the baseline itself)."""
    dataset: str
    method: str
    metric: str
    label: str
    higher_is_better: bool
    values: Dict[int, float]
    summary: Summary
    paired: Optional[Paired]


def _metric_values(results: Sequence[RunResult], task: str) -> List[Tuple[Metric, Dict[Tuple[str, str, int], float]]]:
    """(metric, {(dataset, method, seed): value}) for the task's metrics, then one per class."""
    out = [(m, {(r.dataset, r.method, r.seed): _number(r.metrics.get(m.key)) for r in results})
           for m in METRICS[task]]
    unit = "acc" if task == "classification" else "iou"
    names: List[str] = []
    for r in results:
        names += [n for n in r.class_names if n not in names]
    for name in names:
        values = {}
        for r in results:
            if name in r.class_names:
                values[(r.dataset, r.method, r.seed)] = r.per_class[r.class_names.index(name)]
        out.append((Metric(f"class_{unit}:{name}", f"{unit} {name}", True, 2, False), values))
    return out


def aggregate(results: Sequence[RunResult], task: str, methods: Sequence[str], baseline: str) -> List[Row]:
    """Every :class:`Row` of the study: per dataset (in order of appearance), metric and method (in
    ``methods`` order)."""
    datasets = list(dict.fromkeys(r.dataset for r in results))
    rows = []
    for metric, values in _metric_values(results, task):
        for dataset in datasets:
            per_method = {m: {s: v for (d, mm, s), v in values.items() if d == dataset and mm == m} for m in methods}
            base = per_method.get(baseline, {})
            for m in methods:
                if not per_method[m]:  # no finished run of it here (study.md lists the missing runs)
                    continue
                paired = None if m == baseline else paired_difference(per_method[m], base,
                                                                      higher_is_better=metric.higher_is_better)
                rows.append(Row(dataset, m, metric.key, metric.label, metric.higher_is_better, per_method[m],
                                summarize(list(per_method[m].values())), paired))
    return rows


# ----------------------------------------------------------------------------- text


def _f(x: float, digits: int = 2, sign: bool = False) -> str:
    if x is None or math.isnan(x):
        return "—"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def mean_std(s: Summary, digits: int = 2) -> str:
    if s.n == 0:
        return "—"
    if s.n == 1:
        return f"{_f(s.mean, digits)} (1 seed)"
    return f"{_f(s.mean, digits)} ± {_f(s.std, digits)}"


def interval(s: Summary, digits: int = 2, sign: bool = False) -> str:
    return "—" if s.n < 2 else f"[{_f(s.low, digits, sign)}, {_f(s.high, digits, sign)}]"


def intervals_note(n_seeds: Sequence[int]) -> str:
    """The sentence on what the intervals can and cannot support, for the smallest seed count."""
    n = min((k for k in n_seeds if k >= 2), default=0)
    if not n_seeds:
        return "No run has finished yet: there is nothing to compare."
    if n == 0:
        return ("With one seed per method there is no interval: a single run cannot separate a method's effect "
                "from seed-to-seed noise, so no ranking below is supported; add seeds (--seeds 0 1 2).")
    factor = t_quantile(0.5 + CONFIDENCE / 2, n - 1) / math.sqrt(n)
    return (f"With {n} seeds the 95 % t-interval of a mean is ±{factor:.2f} standard deviations wide "
            f"(t({n - 1}) = {t_quantile(0.5 + CONFIDENCE / 2, n - 1):.2f}), and it covers only seed-to-seed variation "
            f"of this setup on this data (not other data, splits or hyperparameters): a paired interval that excludes "
            f"0 supports a difference here, while overlapping intervals or a paired interval that includes 0 do not "
            f"show that two methods are equal, only that these seeds cannot tell them apart.")


def _rows_of(rows: Sequence[Row], dataset: str, key: str) -> Dict[str, Row]:
    return {r.method: r for r in rows if r.dataset == dataset and r.metric == key}


def markdown(rows: Sequence[Row], results: Sequence[RunResult], task: str, methods: Sequence[str], baseline: str, *,
             jobs: Sequence[Job], figures: Dict[str, List[str]], commands: Dict[str, str], seeds: Sequence[int]) -> str:
    """study.md's text."""
    datasets = list(dict.fromkeys(j.dataset for j in jobs))
    done = {r.folder for r in results}
    missing = [j for j in jobs if j.folder not in done]
    metrics = [m for m in METRICS[task] if m.in_table]
    model = ("the checkpoint each run selected (`selection` in its metrics.json)" if task == "classification" else
             "the last iteration's model")
    out = [f"# Study: {len(methods)} method(s) x {len(seeds)} seed(s) on {', '.join(datasets)} ({task})", "",
           f"Runs: `<out>/<dataset>/<method>/seed<k>` (ordinary run folders), {len(done)} of {len(jobs)} finished"
           + (f"; not finished: {', '.join(j.name for j in missing)}" if missing else "")
           + f". Seeds {', '.join(map(str, seeds))}. Test split, {model}.", ""]
    sizes = []
    for dataset in datasets:
        table_rows = {m.key: _rows_of(rows, dataset, m.key) for m in metrics}
        better = ("higher is better except for the per-class std, the many - few gap and ECE"
                  if task == "classification" else "higher is better")
        out += [f"## {dataset}", "", f"Mean ± standard deviation over seeds ({better}):", ""]
        out.append("| method | seeds | " + " | ".join(m.label for m in metrics) + " |")
        out.append("|---|---:|" + "---:|" * len(metrics))
        for method in methods:
            first = table_rows[metrics[0].key].get(method)
            if first is None:
                continue
            sizes.append(first.summary.n)
            cells = [mean_std(table_rows[m.key][method].summary, m.digits) if method in table_rows[m.key] else "—"
                     for m in metrics]
            out.append(f"| {method} | {first.summary.n} | " + " | ".join(cells) + " |")
        out += ["", f"{CONFIDENCE * 100:.0f} % intervals of the mean over seeds (Student t, seeds - 1 degrees of "
                    f"freedom):", ""]
        out.append("| method | " + " | ".join(m.label for m in metrics) + " |")
        out.append("|---|" + "---:|" * len(metrics))
        for method in methods:
            if method not in table_rows[metrics[0].key]:
                continue
            cells = [interval(table_rows[m.key][method].summary, m.digits) if method in table_rows[m.key] else "—"
                     for m in metrics]
            out.append(f"| {method} | " + " | ".join(cells) + " |")
        others = [m for m in methods if m != baseline and m in table_rows[metrics[0].key]]
        if others:
            out += ["", f"Paired differences against {baseline}, seed by seed (method - {baseline} over the seeds both "
                        f"finished; better / worse / tied: seeds where the method is better than {baseline}, worse, "
                        f"equal):", "",
                    "| method | metric | difference | 95 % interval | better / worse / tied |",
                    "|---|---|---:|---:|---:|"]
            for method in others:
                for key in PAIRED_KEYS[task]:
                    row = _rows_of(rows, dataset, key).get(method)
                    if row is None or row.paired is None or row.paired.diff.n == 0:
                        continue
                    p = row.paired
                    better = "" if row.higher_is_better else " (lower is better)"
                    out.append(f"| {method} | {row.label}{better} | {_f(p.diff.mean, 2, True)} | "
                               f"{interval(p.diff, 2, True)} | {p.method_better} / {p.baseline_better} / {p.tied} |")
        if task == "segmentation":
            out += ["", "Per-class test IoU, mean ± standard deviation over seeds:", "",
                    "| class | " + " | ".join(m for m in methods if m in table_rows[metrics[0].key]) + " |",
                    "|---|" + "---:|" * len([m for m in methods if m in table_rows[metrics[0].key]])]
            class_rows = [r for r in rows if r.dataset == dataset and r.metric.startswith("class_iou:")]
            for name in dict.fromkeys(r.metric.split(":", 1)[1] for r in class_rows):
                by_method = {r.method: r for r in class_rows if r.metric == f"class_iou:{name}"}
                out.append(f"| {name} | " + " | ".join(mean_std(by_method[m].summary) if m in by_method else "—"
                                                         for m in methods if m in table_rows[metrics[0].key]) + " |")
        out.append("")
        for path in figures.get(dataset, []):
            out += [f"![{os.path.splitext(path)[0]}]({path})", ""]
    out += ["**What the intervals support.** " + intervals_note(sizes), "",
            "## Commands", "", "Each run (shown for the first seed; the others differ in `--seed` and `--output-dir`):",
            ""]
    out += [f"* {label}: `{cmd}`" for label, cmd in commands.items()]
    out += ["", f"Machine: {' '.join(filter(None, (platform.machine(), platform.processor())))}, "
                f"{os.cpu_count()} CPUs, Python "
                f"{platform.python_version()}; per-run numbers in `study_runs.csv`, every metric in `study.csv`.", ""]
    return "\n".join(out)


def write_csv(rows: Sequence[Row], baseline: str, path: str) -> None:
    """study.csv: one line per (dataset, method, metric)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "method", "metric", "higher_is_better", "seeds", "mean", "std", "ci95_low", "ci95_high",
                    "baseline", "diff_mean", "diff_std", "diff_ci95_low", "diff_ci95_high", "paired_seeds",
                    "seeds_method_better", "seeds_baseline_better", "seeds_tied", "values"])
        for r in rows:
            s, p = r.summary, r.paired
            diff = ([_csv(p.diff.mean), _csv(p.diff.std), _csv(p.diff.low), _csv(p.diff.high), p.diff.n,
                     p.method_better, p.baseline_better, p.tied] if p is not None else [""] * 8)
            w.writerow([r.dataset, r.method, r.metric, int(r.higher_is_better), s.n, _csv(s.mean), _csv(s.std),
                        _csv(s.low), _csv(s.high), baseline, *diff,
                        ";".join(f"{seed}:{_csv(v)}" for seed, v in sorted(r.values.items()))])


def _csv(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.6g}"


def write_runs_csv(results: Sequence[RunResult], task: str, path: str) -> None:
    """study_runs.csv: one line per finished run with its metrics."""
    keys = [m.key for m in METRICS[task]]
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "method", "seed", "folder", *keys])
        for r in results:
            w.writerow([r.dataset, r.method, r.seed, r.folder, *(_csv(_number(r.metrics.get(k))) for k in keys)])


# ----------------------------------------------------------------------------- figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str) -> None:
    try:
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)


def _colors(n: int):
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def plot_metrics(rows: Sequence[Row], dataset: str, task: str, methods: Sequence[str], path: str) -> None:
    """Bars of the mean, the 95 % interval as error bars and each seed as a dot, per metric and method."""
    plt = _pyplot()
    keys = FIGURE_KEYS[task]
    labels = {m.key: m.label for m in METRICS[task]}
    present = [m for m in methods if _rows_of(rows, dataset, keys[0]).get(m) is not None]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(keys) * max(1, len(present)) / 2.5), 3.8), dpi=100)
    width = 0.8 / max(1, len(present))
    for i, (method, color) in enumerate(zip(present, _colors(len(present)))):
        for g, key in enumerate(keys):
            row = _rows_of(rows, dataset, key).get(method)
            if row is None or row.summary.n == 0:
                continue
            x = g + (i - (len(present) - 1) / 2) * width
            s = row.summary
            err = [[s.mean - s.low], [s.high - s.mean]] if s.n >= 2 else None
            ax.bar(x, s.mean, width * 0.9, color=color, alpha=0.55, label=method if g == 0 else None)
            if err is not None:
                ax.errorbar(x, s.mean, yerr=err, color="black", capsize=3, lw=1)
            vals = [v for v in row.values.values() if not math.isnan(v)]
            ax.plot([x] * len(vals), vals, "o", color="black", ms=2.5)
    ax.set_xticks(range(len(keys)), [labels[k] for k in keys])
    ax.set_ylabel("test accuracy (%)" if task == "classification" else "test score (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{dataset}: mean over seeds, 95 % t-interval (bars) and each seed (dots)", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    _save(plt, fig, path)


def plot_paired(rows: Sequence[Row], dataset: str, task: str, methods: Sequence[str], baseline: str,
                path: str) -> bool:
    """Each method's paired difference against the baseline per metric: the mean, its 95 %
    interval and each seed's difference. False (nothing written) when there is no other method."""
    items = []
    for method in methods:
        for key in PAIRED_KEYS[task]:
            row = _rows_of(rows, dataset, key).get(method)
            if row is not None and row.paired is not None and row.paired.diff.n:
                items.append((method, row))
    if not items:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.32 * len(items)), dpi=100)
    colors = dict(zip([m for m in methods if m != baseline], _colors(len(methods))))
    for y, (method, row) in enumerate(reversed(items)):
        p = row.paired
        d = p.diff
        if d.n >= 2:
            ax.plot([d.low, d.high], [y, y], "-", color=colors[method], lw=2)
        ax.plot([d.mean], [y], "D", color=colors[method], ms=5)
        diffs = [row.values[s] - _rows_of(rows, dataset, row.metric)[baseline].values[s] for s in p.seeds]
        ax.plot(diffs, [y] * len(diffs), "o", mfc="none", color="black", ms=4)
    ax.axvline(0, color="gray", lw=1, ls="--")
    from matplotlib.lines import Line2D

    ax.legend(handles=[Line2D([], [], marker="D", color="black", ls="none", label="mean"),
                       Line2D([], [], color="black", lw=2, label="95 % t-interval"),
                       Line2D([], [], marker="o", mfc="none", color="black", ls="none", label="seeds")],
              fontsize=7, loc="best")
    ax.set_yticks(range(len(items)), [f"{m}: {r.label}" + ("" if r.higher_is_better else " (lower better)")
                                      for m, r in reversed(items)], fontsize=8)
    ax.set_xlabel(f"method - {baseline} (points)")
    ax.set_title(f"{dataset}: paired differences against {baseline}, seed by seed", fontsize=10)
    _save(plt, fig, path)
    return True


def _per_class_stats(results: Sequence[RunResult], dataset: str, method: str):
    runs = [r for r in results if r.dataset == dataset and r.method == method]
    if not runs:
        return None
    names = runs[0].class_names
    stats = [summarize([r.per_class[c] for r in runs if c < len(r.per_class)]) for c in range(len(names))]
    return names, stats


def plot_per_class(results: Sequence[RunResult], dataset: str, task: str, methods: Sequence[str], path: str) -> bool:
    """Per-class accuracy (mean ± std over seeds) against the class's training images on a log axis
    (class order when the counts are unknown); segmentation: per-class IoU bars by class."""
    present = [m for m in methods if _per_class_stats(results, dataset, m)]
    if not present:
        return False
    train = next((r.train_counts for r in results if r.dataset == dataset and r.train_counts), None)
    names = _per_class_stats(results, dataset, present[0])[0]
    if not names:
        return False
    plt = _pyplot()
    unit = "accuracy" if task == "classification" else "IoU"
    fig, ax = plt.subplots(figsize=(7.5, 4.0), dpi=100)
    colors = _colors(len(present))
    if task == "classification" and train is not None:
        order = sorted(range(len(names)), key=lambda c: train[c])
        for i, (method, color) in enumerate(zip(present, colors)):
            _, stats = _per_class_stats(results, dataset, method)
            shift = 1.0 + 0.04 * (i - (len(present) - 1) / 2)  # side by side on the log axis
            xs = [max(train[c], 0.5) * shift for c in order]
            ax.errorbar(xs, [stats[c].mean for c in order],
                        yerr=[0 if math.isnan(stats[c].std) else stats[c].std for c in order],
                        fmt="o-", color=color, ms=4, lw=1, capsize=2, label=method)
        ax.set_xscale("log")
        ax.set_xlabel("training images of the class (log scale)")
        if len(names) <= 20:  # the class names above the axis (classes of one count share a label)
            at: Dict[int, List[str]] = {}
            for c in order:
                at.setdefault(train[c], []).append(names[c])
            for count, group in at.items():
                ax.annotate(",".join(group), (max(count, 0.5), 101), fontsize=7, ha="center", va="bottom",
                            annotation_clip=False)
    else:
        order = sorted(range(len(names)), key=lambda c: -train[c]) if train is not None else list(range(len(names)))
        width = 0.8 / len(present)
        for i, (method, color) in enumerate(zip(present, colors)):
            _, stats = _per_class_stats(results, dataset, method)
            xs = [k + (i - (len(present) - 1) / 2) * width for k in range(len(order))]
            ax.bar(xs, [stats[c].mean for c in order], width * 0.9, color=color, label=method,
                   yerr=[0 if math.isnan(stats[c].std) else stats[c].std for c in order], capsize=2,
                   error_kw={"lw": 0.8})
        if len(order) <= 40:
            ax.set_xticks(range(len(order)), [names[c] + (f"\n{train[c]}" if train is not None else "")
                                              for c in order], fontsize=7)
        ax.set_xlabel("class" + (" (sorted by training images; count below)" if train is not None else ""))
    ax.set_ylabel(f"test {unit} (%), mean ± std over seeds")
    ax.set_ylim(0, 100)
    title = f"{dataset}: per-class test {unit}"
    ax.set_title(title + (" against training frequency" if task == "classification" and train else ""),
                 fontsize=10, pad=14 if task == "classification" and train and len(names) <= 20 else 6)
    ax.legend(fontsize=8, loc="best")
    _save(plt, fig, path)
    return True


def pooled_calibration(calibrations: Sequence[dict]) -> Optional[dict]:
    """The seeds' reliability bins summed: per bin the image count and the count-weighted accuracy
    and confidence (None in an empty bin). None when the runs have no (or different) bins."""
    cals = [c for c in calibrations if isinstance(c, dict) and c.get("bins")]
    if not cals or len({int(c["bins"]) for c in cals}) != 1:
        return None
    n = int(cals[0]["bins"])
    count, acc, conf = [0] * n, [0.0] * n, [0.0] * n
    for c in cals:
        for b in range(n):
            k = int(c["count"][b] or 0)
            if k:
                count[b] += k
                acc[b] += k * float(c["accuracy"][b])
                conf[b] += k * float(c["confidence"][b])
    return {"bins": n, "count": count, "accuracy": [a / k if k else None for a, k in zip(acc, count)],
            "confidence": [x / k if k else None for x, k in zip(conf, count)]}


def plot_reliability(rows: Sequence[Row], results: Sequence[RunResult], dataset: str, methods: Sequence[str],
                     path: str) -> bool:
    """Reliability diagrams side by side, one per method, the seeds' test predictions pooled; empty
    bins stay empty. False when no run has calibration bins."""
    panels = []
    for method in methods:
        cal = pooled_calibration([r.metrics.get("calibration") for r in results
                                  if r.dataset == dataset and r.method == method])
        if cal is not None:
            panels.append((method, cal, _rows_of(rows, dataset, "ece").get(method)))
    if not panels:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels) + 0.6, 3.5), dpi=100, squeeze=False)
    for ax, (method, cal, ece) in zip(axes[0], panels):
        n = cal["bins"]
        width = 100.0 / n
        filled = [b for b in range(n) if cal["count"][b]]
        centers = [width * (b + 0.5) for b in filled]
        acc = [cal["accuracy"][b] for b in filled]
        conf = [cal["confidence"][b] for b in filled]
        ax.bar(centers, acc, width=width, color="#2e86de", edgecolor="black", lw=0.5, label="accuracy")
        # the gap between accuracy and confidence, hatched: above the bar (over-confident) or inside it
        ax.bar(centers, [abs(c - a) for c, a in zip(conf, acc)], bottom=[min(c, a) for c, a in zip(conf, acc)],
               width=width, fill=False, hatch="///", edgecolor="#c0392b", lw=0.5, label="gap to confidence")
        ax.plot([0, 100], [0, 100], "--", color="gray", lw=1)
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.set_xlabel("top-1 confidence (%)")
        ax.set_ylabel("accuracy (%)")
        ece_text = f"ECE {mean_std(ece.summary)}" if ece is not None and ece.summary.n else "ECE —"
        ax.set_title(f"{method}\n{ece_text}", fontsize=9)
    axes[0][0].legend(loc="upper left", fontsize=7)
    fig.suptitle(f"{dataset}: reliability (test predictions of all seeds pooled; empty bins left blank)", fontsize=10)
    _save(plt, fig, path)
    return True


# ----------------------------------------------------------------------------- the report


def write_report(jobs: Sequence[Job], task: str, methods: Sequence[str], baseline: str, out: str, *,
                 seeds: Sequence[int], commands: Dict[str, str]) -> Dict[str, object]:
    """study.md, study.csv, study_runs.csv and the figures into ``out``; returns ``{"rows",
    "results", "paths"}``."""
    os.makedirs(out, exist_ok=True)
    results = collect(jobs, task)
    rows = aggregate(results, task, methods, baseline)
    paths, figures = [], {}
    for dataset in dict.fromkeys(j.dataset for j in jobs):
        figures[dataset] = []
        if not any(r.dataset == dataset for r in results):
            continue
        for name, draw in (
                ("metrics", lambda p: plot_metrics(rows, dataset, task, methods, p) or True),
                ("paired", lambda p: plot_paired(rows, dataset, task, methods, baseline, p)),
                ("per_class", lambda p: plot_per_class(results, dataset, task, methods, p)),
                ("reliability", lambda p: plot_reliability(rows, results, dataset, methods, p))):
            file = f"{dataset}_{name}.png"
            if draw(os.path.join(out, file)):
                figures[dataset].append(file)
                paths.append(os.path.join(out, file))
    for name, write in (("study.csv", lambda p: write_csv(rows, baseline, p)),
                        ("study_runs.csv", lambda p: write_runs_csv(results, task, p))):
        write(os.path.join(out, name))
        paths.append(os.path.join(out, name))
    text = markdown(rows, results, task, methods, baseline, jobs=jobs, figures=figures, commands=commands, seeds=seeds)
    with atomic_path(os.path.join(out, "study.md")) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    paths.insert(0, os.path.join(out, "study.md"))
    return {"rows": rows, "results": results, "paths": paths, "markdown": text}
