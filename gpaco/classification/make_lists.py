"""``gpaco-make-lists`` (tools/make_lists.py): split lists and class names for a tree of class folders.

    gpaco-make-lists data/mine --out data/mine_lists            # seed 0, val 10 %, test 20 %
    gpaco-make-lists data/mine --out data/mine_lists --val-per-class 5 --test-fraction 0.3 --seed 1

writes ``train.txt``, ``val.txt``, ``test.txt`` (``relative/path label`` lines, paths relative to
the tree, read by ``--dataset split``) and ``classes.txt`` (the sorted folder names, line i = class i),
with the seeded, stratified, val-balanced rule of :mod:`gpaco.data.folder`, which ``--dataset folder``
also applies at start-up (the same defaults give the same split). It prints the split per class, what
the rule could not do as asked (classes of fewer than 3 images, a val split that is not balanced) and
the training command that reads the lists.
"""
from __future__ import annotations

import argparse
import os
import shlex
from typing import Optional, Sequence

from gpaco.data.folder import (
    DEFAULT_SPLIT_SEED, DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION, LIST_NAMES, class_tree_summary,
    scan_class_folders, split_class_folders, write_split_lists,
)
from gpaco.engine.args import FlagError, RawHelpFormatter
from gpaco.engine.cli import add_debug_flag, run_cli

__all__ = ["build_parser", "main", "cli"]


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/make_lists.py", description=__doc__, formatter_class=RawHelpFormatter)
    p.add_argument("root", metavar="DIR", help="the tree of class folders, DIR/<class>/<image> (sub-folders of a "
                                               "class count as that class)")
    p.add_argument("--out", default=None, metavar="OUTDIR",
                   help="where the lists and classes.txt go (default: DIR itself)")
    p.add_argument("--seed", type=int, default=DEFAULT_SPLIT_SEED,
                   help="the split's seed (--dataset folder's --split-seed)")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-per-class", type=_positive, default=None, metavar="N",
                     help="N val images per class (fewer where a class would keep no training image; those "
                          "classes are named)")
    val.add_argument("--val-fraction", type=_fraction, default=None, metavar="F",
                     help=f"balanced val: every class gives the least max(1, floor(F x n)) over the classes "
                          f"(default {DEFAULT_VAL_FRACTION} unless --val-per-class)")
    p.add_argument("--test-fraction", type=_fraction, default=DEFAULT_TEST_FRACTION, metavar="F",
                   help="test images per class: max(1, round(F x n))")
    p.add_argument("--overwrite", action="store_true", help="replace lists already in OUTDIR")
    add_debug_flag(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    out = args.out if args.out is not None else args.root
    tree = scan_class_folders(args.root)
    split = split_class_folders(tree, seed=args.seed, val_per_class=args.val_per_class,
                                val_fraction=args.val_fraction, test_fraction=args.test_fraction)
    try:
        paths = write_split_lists(split, out, overwrite=args.overwrite)
    except FileExistsError as e:
        raise FlagError(str(e)) from None
    print(f"{args.root}: {split.describe()} (seed {args.seed})")
    print(f"  {'':>3} {'class':<{max(len(n) for n in split.classes)}}  {'images':>6} -> {'train':>6} / "
          f"{'val':>4} / {'test':>5}")
    for line in class_tree_summary(split):
        print(line)
    for note in split.notes:
        print(f"note: {note}")
    print(f"wrote {', '.join(paths.values())}")
    q = shlex.quote
    lists = {s: q(os.path.join(out, name)) for s, name in LIST_NAMES.items()}
    print(f"train on them: python tools/train.py --data-root {q(args.root)} --train-list {lists['train']} "
          f"--val-list {lists['val']} --test-list {lists['test']} ... (docs/data.md#your-own-data)")
    return {"paths": paths, "counts": {s: split.counts(s) for s in LIST_NAMES}, "classes": split.classes,
            "notes": split.notes}


def cli(argv: Optional[Sequence[str]] = None) -> None:
    """tools/make_lists.py and the ``gpaco-make-lists`` command (one ``error: ...`` line, exit 2)."""
    run_cli(main, argv)
