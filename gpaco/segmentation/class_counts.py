"""Image-level class counts of a segmentation training set (CeCo's and RR's priors):
``counts[c]`` = how many training images contain at least one pixel of class ``c``.

``tools/class_counts_seg.py`` writes them as one integer per line (the format of the
original's ``stats/ade20k_image_label_stats.txt``, read back by
:func:`gpaco.losses.rr.read_class_counts`); ``tools/train_seg.py`` counts them at start when
a method needs them and ``--class-counts`` names no file.

gpaco ships ADE20K's (:data:`SHIPPED_CLASS_COUNTS`, ``gpaco/data/stats/``): the 150 values of
the original's file, line c = ADE20K training images that contain class c (41 to 11588),
the CeCo and RR recipes' default ``--class-counts``. ``tools/class_counts_seg.py --dataset
ade20k`` on a local copy of the dataset writes the same file (compare them with ``diff``).
"""
from __future__ import annotations

import argparse
import os
import time
from importlib.resources import files
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from gpaco.data.seg_datasets import SEG_DATASETS, SegDataset, build_seg_dataset
from gpaco.data.seg_transforms import IGNORE_INDEX
from gpaco.engine.args import FlagError
from gpaco.engine.cli import add_debug_flag, run_cli
from gpaco.engine.logging import print_main
from gpaco.engine.preemption import ignore_stop_signals
from gpaco.losses.rr import classes_present, read_class_counts, write_class_counts

__all__ = ["dataset_image_class_counts", "class_counts_for_training", "shipped_class_counts", "SHIPPED_CLASS_COUNTS",
           "build_parser", "main", "cli"]

#: dataset -> the file of its image-level class counts that gpaco ships (in ``gpaco/data/stats/``)
SHIPPED_CLASS_COUNTS = {"ade20k": "ade20k_image_label_stats.txt"}


def shipped_class_counts(dataset: str) -> Path:
    """The path of the class-count file gpaco ships for ``dataset`` (:data:`SHIPPED_CLASS_COUNTS`),
    as installed: pass it as ``--class-counts``."""
    if dataset not in SHIPPED_CLASS_COUNTS:
        raise KeyError(f"gpaco ships image-level class counts for {sorted(SHIPPED_CLASS_COUNTS)} only, not "
                       f"{dataset!r}; tools/class_counts_seg.py counts them from the training masks")
    return Path(str(files("gpaco.data").joinpath("stats").joinpath(SHIPPED_CLASS_COUNTS[dataset])))


class _Presence(Dataset):
    """Item i: [C] bool, the classes present in ``dataset``'s raw label i."""

    def __init__(self, dataset: SegDataset, num_classes: int, ignore_index: int):
        self.dataset, self.num_classes, self.ignore_index = dataset, num_classes, ignore_index

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> torch.Tensor:
        return classes_present(self.dataset.load_label(i), self.num_classes, ignore_index=self.ignore_index,
                               where=str(self.dataset.pairs[i][1]))


def dataset_image_class_counts(dataset: SegDataset, *, num_classes: int, ignore_index: int = IGNORE_INDEX,
                               workers: int = 0) -> List[int]:
    """``num_classes`` integers: the number of images of ``dataset`` (raw labels, no
    augmentation) in which each class occurs. Reads only the label files."""
    loader = DataLoader(_Presence(dataset, num_classes, ignore_index), batch_size=64, num_workers=workers,
                        worker_init_fn=ignore_stop_signals)
    counts = torch.zeros(num_classes, dtype=torch.int64)
    for present in loader:
        counts += present.sum(0)
    return counts.tolist()


def class_counts_for_training(*, path: Optional[str], dataset: SegDataset, num_classes: int,
                              workers: int = 0) -> List[int]:
    """The counts of ``path`` (``--class-counts``; its errors name the flag, file and line) or,
    when ``path`` is None, counted from ``dataset``'s masks."""
    if path:
        try:
            return read_class_counts(path, num_classes=num_classes)
        except (OSError, ValueError) as e:
            raise FlagError(f"--class-counts: {e}") from None
    t0 = time.time()
    counts = dataset_image_class_counts(dataset, num_classes=num_classes, workers=workers)
    print_main(f"image-level class counts of {len(dataset)} training masks ({time.time() - t0:.0f}s): "
               f"min {min(counts)}, max {max(counts)}; --class-counts FILE skips this")
    if sum(counts) == 0:
        raise FlagError(f"no training mask of {getattr(dataset, 'name', 'the dataset')} has a labelled pixel: "
                        f"cannot compute the class prior")
    return counts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/class_counts_seg.py", description="Write the image-level class counts "
                                "of a segmentation split (one integer per line: line c = images containing class c), "
                                "the --class-counts file of the ceco, cecol and rr methods.")
    p.add_argument("--dataset", required=True, choices=sorted(SEG_DATASETS))
    p.add_argument("--data-root", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--workers", "-j", type=int, default=4, help="processes reading the masks")
    add_debug_flag(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> List[int]:
    args = build_parser().parse_args(argv)
    info = SEG_DATASETS[args.dataset]
    dataset = build_seg_dataset(args.dataset, args.data_root, args.split, transform=None)
    counts = dataset_image_class_counts(dataset, num_classes=info.num_classes, workers=args.workers)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    write_class_counts(args.out, counts)
    print(f"wrote {args.out}: {info.num_classes} classes over {len(dataset)} {args.split} images "
          f"(min {min(counts)}, max {max(counts)})", flush=True)
    return counts


def cli(argv: Optional[Sequence[str]] = None) -> None:
    run_cli(main, argv)
