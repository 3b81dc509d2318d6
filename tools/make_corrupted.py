#!/usr/bin/env python
"""Write an ImageNet-C-style corrupted copy of any split list (15 corruptions x 5 severities).

    python tools/make_corrupted.py --data-root data/demo_mnist_lt --list data/demo_mnist_lt/test.txt \\
        --out data/demo_mnist_lt_c --per-class 20 --size 32

Output (evaluate it with ``tools/eval.py --corrupted-root OUT``)::

    OUT/<corruption>/<severity 1..5>/<label index>/<list index>_<name>.png
    OUT/subset.txt     the source images used, as a split list (relative to --data-root)
    OUT/meta.json      parameters and counts (written last: its presence marks a complete tree)

Class folders are named by the split list's **label index** (not wnids), so any subset of
classes keeps its labels. The corruptions are corrupt-tta's ImageNet-C functions; each
(image, corruption, severity) is seeded from --seed, so the tree is reproducible.
"""
import argparse
import os
import sys
import time


def build_parser() -> argparse.ArgumentParser:
    from gpaco.data.robustness import CORRUPTIONS

    p = argparse.ArgumentParser(prog="tools/make_corrupted.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True, help="folder the split list's paths are relative to")
    p.add_argument("--list", required=True, help="split list ('relative/path label' lines) to corrupt")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--per-class", type=int, default=None,
                   help="only the first N images of every class (list order); default: all")
    p.add_argument("--size", type=int, default=None,
                   help="resize (shorter side) and center-crop to SIZE before corrupting, as ImageNet-C corrupts "
                        "224x224 crops; use the model's input size. Default: the images as they are")
    p.add_argument("--resize-size", type=int, default=None, help="shorter side before the --size crop (default SIZE)")
    p.add_argument("--corruptions", default="all", help=f"comma-separated subset of {','.join(CORRUPTIONS)}")
    p.add_argument("--severities", default="1,2,3,4,5", help="comma-separated subset of 1..5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="processes (0: this one)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing tree made with other parameters")
    from gpaco.engine.cli import add_debug_flag

    add_debug_flag(p)
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    from gpaco.data.splits import DataError
    from gpaco.data.robustness import make_corrupted_tree
    from gpaco.data.robustness import CORRUPTIONS

    corruptions = list(CORRUPTIONS) if args.corruptions == "all" else [c.strip() for c in args.corruptions.split(",")]
    try:
        severities = [int(s) for s in args.severities.split(",")]
    except ValueError:
        raise SystemExit(f"error: --severities {args.severities!r}: expected comma-separated integers 1..5") from None
    t0 = time.time()
    try:
        meta = make_corrupted_tree(args.list, args.data_root, args.out, corruptions=corruptions,
                                   severities=severities, per_class=args.per_class, size=args.size,
                                   resize_size=args.resize_size, seed=args.seed, workers=args.workers,
                                   overwrite=args.overwrite)
    except (DataError, ValueError, FileExistsError, OSError) as e:
        raise SystemExit(f"error: {e}") from None
    if meta.get("skipped"):
        print(f"{args.out}: already complete with these parameters ({meta['files']} images); nothing written")
    else:
        print(f"wrote {meta['files']} images ({meta['num_images']} source images x {len(corruptions)} corruptions x "
              f"{len(severities)} severities) to {args.out} in {time.time() - t0:.1f}s")
    print(f"evaluate: python tools/eval.py --checkpoint RUN/best.pth --corrupted-root {args.out} "
          f"[--test-list {os.path.join(args.out, 'subset.txt')} --data-root {args.data_root}]")
    return meta


if __name__ == "__main__":
    from gpaco.engine.cli import run_cli

    sys.exit(0 if run_cli(main) is not None else 1)
