#!/usr/bin/env python
"""Compare evaluated runs: many/medium/few side by side and the per-class accuracy difference.

    python tools/compare_runs.py runs/demo/ce runs/demo/gpaco [--names CE GPaCo] [--plot compare.png]
    python tools/compare_runs.py runs/demo/ce runs/demo/reslt runs/demo/mislas   # three or more: one table

RUN is a run folder or an evaluation folder (with metrics.json, and per_class.csv for the
training counts), or a metrics.json file. Prints top-1/top-5, many/medium/few (with the number
of classes in each group), mean class accuracy and, when both have them, the robustness
figures, with B - A; plots accuracy(B) - accuracy(A) per class, head to tail. With more than two
runs: one column per run (top-1, many/medium/few, mean class accuracy, ECE), no plot.
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
                   help="per-class difference plot (default: compare_<A>_vs_<B>.png in run B's folder)")
    return p


def _name(path: str) -> str:
    path = os.path.abspath(path)
    if os.path.isfile(path):
        path = os.path.dirname(path)
    base = os.path.basename(path)
    return f"{os.path.basename(os.path.dirname(path))}/{base}" if base.startswith("eval") else base


def main(argv=None) -> str:
    args = build_parser().parse_args(argv)
    from gpaco.classification.compare import compare_table, load_run, plot_per_class_difference, side_by_side_table

    if len(args.runs) < 2:
        raise SystemExit("error: give at least two runs (RUN RUN ...)")
    if args.names is not None and len(args.names) != len(args.runs):
        raise SystemExit(f"error: --names needs one name per run ({len(args.runs)}), got {len(args.names)}")
    try:
        runs = [load_run(r) for r in args.runs]
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    names = args.names or [_name(r) for r in args.runs]
    if len(runs) > 2:
        table = side_by_side_table(runs, names)
        print(table)
        return table
    a, b = runs
    table = compare_table(a, b, names)
    print(table)
    # by default beside the runs (run B's folder), never into whatever folder the shell is in
    folder = args.runs[1] if os.path.isdir(args.runs[1]) else os.path.dirname(os.path.abspath(args.runs[1]))
    plot = args.plot or os.path.join(folder, f"compare_{names[0].replace('/', '_')}_vs_"
                                             f"{names[1].replace('/', '_')}.png")
    try:
        plot_per_class_difference(a, b, plot, names)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {plot}")
    return table


if __name__ == "__main__":
    from gpaco.engine.cli import run_cli

    run_cli(main)  # our errors: one line, exit 2
