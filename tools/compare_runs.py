#!/usr/bin/env python
"""Compare evaluated runs: many/medium/few side by side and their per-class accuracies.

    python tools/compare_runs.py runs/demo/ce runs/demo/gpaco [--names CE GPaCo] [--plot compare.png]
    python tools/compare_runs.py runs/demo/ce runs/demo/reslt runs/demo/mislas   # three or more: one column each

RUN is a run folder or an evaluation folder (with metrics.json, and per_class.csv for the
training counts), or a metrics.json file; a run trained without --test-list is read from its
eval/ folder when tools/eval.py wrote one there, else shown as "—" with a note. Two runs:
top-1/top-5, many/medium/few (with the number of classes in each group), mean class accuracy,
the per-class figures and, when both have them, the robustness figures, with B - A; the plot
is accuracy(B) - accuracy(A) per class, head to tail. More runs: one column per run (top-1,
many/medium/few, mean class accuracy, worst class, ECE) and a plot of every run's per-class
accuracy. Up to 30 classes a per-class table follows. Classes are named when the runs have
names (their metrics.json, per_class.csv, the classes.txt beside their split lists, or the
checkpoint). Runs that cannot be compared class by class (no test split, another number of
classes) get the tables and a note saying why there is no plot.
"""
import argparse
import os


def build_parser() -> argparse.ArgumentParser:
    from gpaco.engine.cli import add_debug_flag

    p = argparse.ArgumentParser(prog="tools/compare_runs.py", description=__doc__.split("\n\n")[0])
    add_debug_flag(p)
    p.add_argument("runs", nargs="+", metavar="RUN", help="two runs (A B: the difference table and plot) or more")
    p.add_argument("--names", nargs="+", default=None, help="column names, one per run (default: folder names)")
    p.add_argument("--plot", default=None,
                   help="the per-class figure (default: compare_<A>_vs_<B>[_vs_<C>...].png in the last run's folder)")
    return p


def _name(path: str) -> str:
    path = os.path.abspath(path)
    if os.path.isfile(path):
        path = os.path.dirname(path)
    base = os.path.basename(path)
    return f"{os.path.basename(os.path.dirname(path))}/{base}" if base.startswith("eval") else base


def default_plot_path(runs, names) -> str:
    """Beside the runs (the last run's folder), never into whatever folder the shell is in."""
    last = runs[-1]
    folder = last if os.path.isdir(last) else os.path.dirname(os.path.abspath(last))
    stem = "compare_" + "_vs_".join(n.replace("/", "_") for n in names)
    if len(stem) > 120:  # many runs: a name the file system takes
        stem = f"compare_{names[0].replace('/', '_')}_and_{len(names) - 1}_runs"
    return os.path.join(folder, stem + ".png")


def main(argv=None) -> str:
    args = build_parser().parse_args(argv)
    from gpaco.classification.compare import (
        PER_CLASS_TABLE_MAX, compare_table, load_run, per_class_problem, per_class_table, plot_per_class_difference,
        plot_per_class_runs, side_by_side_table,
    )

    if len(args.runs) < 2:
        raise SystemExit("error: give at least two runs (RUN RUN ...)")
    if args.names is not None and len(args.names) != len(args.runs):
        raise SystemExit(f"error: --names needs one name per run ({len(args.runs)}), got {len(args.names)}")
    try:
        runs = [load_run(r) for r in args.runs]
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    names = args.names or [_name(r) for r in args.runs]
    for run in runs:
        for note in run["notes"]:
            print(f"note: {note}")
    table = side_by_side_table(runs, names) if len(runs) > 2 else compare_table(runs[0], runs[1], names)
    print(table)
    problem = per_class_problem(runs, names)
    if problem:
        print(f"note: no per-class table or plot: {problem}")
        return table
    if len(runs[0]["per_class"]) <= PER_CLASS_TABLE_MAX:
        print()
        print(per_class_table(runs, names))
    plot = args.plot or default_plot_path(args.runs, names)
    if len(runs) == 2:
        plot_per_class_difference(runs[0], runs[1], plot, names)
    else:
        plot_per_class_runs(runs, plot, names)
    print(f"wrote {plot}")
    return table


if __name__ == "__main__":
    from gpaco.engine.cli import run_cli

    run_cli(main)  # our errors: one line, exit 2
