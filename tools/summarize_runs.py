#!/usr/bin/env python
"""Side-by-side table of several runs' test metrics (metrics.json), as Markdown, plus a plot.

    python tools/summarize_runs.py runs/demo/ce runs/demo/balanced_ce runs/demo/gpaco \
        --out runs/demo/summary.md --plot runs/demo/summary.png

A run trained without --test-list has no test metrics: its row is read from RUN/eval/metrics.json
when tools/eval.py wrote one there (its default folder), else shown as "—" with a note.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
from typing import List, Optional, Sequence, Tuple

import torch


#: the test metrics the table shows (training's and tools/eval.py's metrics.json hold them)
TABLE_KEYS = ("top1", "top5", "many", "medium", "few")
GROUP_KEYS = ("many", "medium", "few")


def load_metrics(run_dir: str) -> Tuple[dict, Optional[str]]:
    """(the run's metrics.json, a note or None). A run without a test split gives its selection
    only (``selected_epoch``; its test cells "—") unless tools/eval.py evaluated it into ``RUN/eval``."""
    from gpaco.classification.compare import has_test_metrics, load_metrics_json
    from gpaco.data.splits import DataError

    path = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(path):
        raise SystemExit(f"error: {path} not found (did the run finish?)")
    m = load_metrics_json(path)
    note = None
    if not has_test_metrics(m):
        evaluated = os.path.join(run_dir, "eval", "metrics.json")
        later = load_metrics_json(evaluated) if os.path.isfile(evaluated) else {}
        if has_test_metrics(later):
            m, path, note = later, evaluated, f"{run_dir}: test metrics from {evaluated}"
        else:
            return m, (f"{run_dir}: no test metrics (trained without --test-list); tools/eval.py --checkpoint "
                        f"{os.path.join(run_dir, 'best.pth')} --test-list LIST writes them to "
                        f"{os.path.join(run_dir, 'eval')}, which this tool then reads")
    # checked here so that a partial file is one line naming it, not a KeyError in the table
    # many/medium/few may be null: an empty group (CIFAR-10-LT has no few-shot class)
    bad = [k for k in TABLE_KEYS if not (isinstance(m.get(k), (int, float)) or (k in GROUP_KEYS and m.get(k) is None))
           or isinstance(m.get(k), bool)]
    if bad:
        raise DataError(f"{path}: no numeric {', '.join(bad)} (expected the test metrics of a finished run)")
    return m, note


def markdown_table(rows: Sequence[Tuple[str, dict]]) -> str:
    from gpaco.metrics import format_accuracy

    lines = ["| method | top-1 | top-5 | many | medium | few | test images | selected epoch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in rows:
        cells = " | ".join(format_accuracy(m.get(k)) for k in TABLE_KEYS)
        lines.append(f"| {name} | {cells} | {m.get('num_samples', '—')} | {m.get('selected_epoch', '')} |")
    return "\n".join(lines)


def machine() -> str:
    device = f"CUDA {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "CPU"
    return (f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{device}")


def plot(rows: Sequence[Tuple[str, dict]], path: str) -> None:
    """Grouped bars: top-1 and many/medium/few of every run (a run without test metrics: no bars,
    "(no test split)" in the legend)."""
    from gpaco.classification.compare import has_test_metrics
    from gpaco.classification.report import _pyplot, _save_figure

    plt = _pyplot()
    groups = ["top1", "many", "medium", "few"]
    fig, ax = plt.subplots(figsize=(6.5, 3.4), dpi=100)
    width = 0.8 / len(rows)
    for i, (name, m) in enumerate(rows):
        values = [math.nan if m.get(k) is None else m[k] for k in groups]
        ax.bar([g + i * width for g in range(len(groups))], values, width,
               label=name if has_test_metrics(m) else f"{name} (no test split)")
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], ["top-1", "many", "medium", "few"])
    ax.set_xlabel("test metric (many/medium/few: mean accuracy of the classes in each group)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"test accuracy of {len(rows)} run{'s' if len(rows) != 1 else ''}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save_figure(plt, fig, path)


def main(argv=None) -> int:
    from gpaco.engine.cli import add_debug_flag

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_debug_flag(p)
    p.add_argument("runs", nargs="+", help="run folders holding metrics.json")
    p.add_argument("--out", default=None, help="write the table (and the machine) to this Markdown file")
    p.add_argument("--plot", default=None, help="write a bar chart PNG")
    args = p.parse_args(argv)
    rows: List[Tuple[str, dict]] = []
    notes: List[str] = []
    for r in args.runs:
        m, note = load_metrics(r)
        rows.append((os.path.basename(os.path.normpath(r)), m))
        notes += [note] if note else []
    table = markdown_table(rows)
    print(table)
    for note in notes:
        print(f"note: {note}")
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"{table}\n\n" + "".join(f"Note: {n}\n\n" for n in notes) + f"Machine: {machine()}\n")
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    from gpaco.engine.cli import run_cli

    sys.exit(run_cli(main))
