#!/usr/bin/env python
"""Side-by-side table of several runs' test metrics (metrics.json), as Markdown, plus a plot.

    python tools/summarize_runs.py runs/demo/ce runs/demo/balanced_ce runs/demo/gpaco \
        --out runs/demo/summary.md --plot runs/demo/summary.png
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys

import torch


#: the test metrics the table shows (training's and tools/eval.py's metrics.json hold them)
TABLE_KEYS = ("top1", "top5", "many", "medium", "few")
GROUP_KEYS = ("many", "medium", "few")


def load_metrics(run_dir: str) -> dict:
    from gpaco.classification.compare import load_metrics_json
    from gpaco.data.splits import DataError

    path = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(path):
        raise SystemExit(f"error: {path} not found (did the run finish?)")
    m = load_metrics_json(path)
    # checked here so that a partial file is one line naming it, not a KeyError in the table
    # many/medium/few may be null: an empty group (CIFAR-10-LT has no few-shot class)
    bad = [k for k in TABLE_KEYS if not (isinstance(m.get(k), (int, float)) or (k in GROUP_KEYS and m.get(k) is None))
           or isinstance(m.get(k), bool)]
    if bad:
        raise DataError(f"{path}: no numeric {', '.join(bad)} (expected the test metrics of a finished run)")
    return m


def markdown_table(rows) -> str:
    from gpaco.metrics import format_accuracy

    lines = ["| method | top-1 | top-5 | many | medium | few | test images | selected epoch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in rows:
        cells = " | ".join(format_accuracy(m[k]) for k in TABLE_KEYS)
        lines.append(f"| {name} | {cells} | {m['num_samples']} | {m.get('selected_epoch', '')} |")
    return "\n".join(lines)


def machine() -> str:
    return (f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, {'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'}")


def plot(rows, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = ["top1", "many", "medium", "few"]
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    width = 0.8 / len(rows)
    for i, (name, m) in enumerate(rows):
        ax.bar([g + i * width for g in range(len(groups))], [math.nan if m[k] is None else m[k] for k in groups], width, label=name)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], ["top-1", "many", "medium", "few"])
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    from gpaco.engine.cli import add_debug_flag

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_debug_flag(p)
    p.add_argument("runs", nargs="+", help="run folders holding metrics.json")
    p.add_argument("--out", default=None, help="write the table (and the machine) to this Markdown file")
    p.add_argument("--plot", default=None, help="write a bar chart PNG")
    args = p.parse_args(argv)
    rows = [(os.path.basename(os.path.normpath(r)), load_metrics(r)) for r in args.runs]
    table = markdown_table(rows)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"{table}\n\nMachine: {machine()}\n")
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    from gpaco.engine.cli import run_cli

    sys.exit(run_cli(main))
