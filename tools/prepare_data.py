#!/usr/bin/env python
"""Prepare segmentation data in the layouts gpaco reads (gpaco/data/seg_datasets.py).

    python tools/prepare_data.py cityscapes --root data/cityscapes
        gtFine/**/*_gtFine_labelIds.png -> *_gtFine_labelTrainIds.png (19 train ids, 255 ignored)
    python tools/prepare_data.py coco_stuff164k --root data/coco_stuff164k
        annotations/{train2017,val2017}/<id>.png (official stuffthingmaps_trainval2017, 0-based
        COCO ids, 255 unlabeled) -> <id>_labelTrainIds.png (171 classes 0..170, 255 ignored)
    python tools/prepare_data.py coco_stuff10k --root data/coco_stuff10k
        official cocostuff-10k-v1.1 (images/*.jpg, annotations/*.mat with 'S', imageLists/{train,test}.txt)
        -> images/{train2014,test2014}/*.jpg, annotations/{...}/*_labelTrainIds.png
        (0 unlabeled, 1..171 classes; the reader reduces the zero label)
    python tools/prepare_data.py demo_seg --out data/demo_seg
        the long-tailed MNIST digit scenes of sh/demo_seg.sh

Conversions skip files already converted (``--overwrite`` redoes them) and report counts.
Pascal-Context-59 is not converted here: its label PNGs come from the Detail API (mmseg's
``tools/convert_datasets/pascal_context.py`` writes SegmentationClassContext/*.png, 0..59).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, List, Sequence, Tuple

import numpy as np
from PIL import Image

# Cityscapes labelId -> trainId (the 19 evaluated classes; everything else 255).
CITYSCAPES_ID_TO_TRAINID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                            25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}

# The 171 COCO-Stuff classes as 1-based COCO ids: 80 things (ids 1-90 minus 11 unused) and 91 stuff (92-182).
_UNUSED_THING_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
COCO_STUFF_IDS = [i for i in range(1, 91) if i not in _UNUSED_THING_IDS] + list(range(92, 183))
assert len(COCO_STUFF_IDS) == 171


def cityscapes_lut() -> np.ndarray:
    lut = np.full(256, 255, np.uint8)
    for label_id, train_id in CITYSCAPES_ID_TO_TRAINID.items():
        lut[label_id] = train_id
    return lut


def coco164k_lut() -> np.ndarray:
    """0-based COCO id (stuffthingmaps value) -> train id 0..170, else 255."""
    lut = np.full(256, 255, np.uint8)
    for train_id, coco_id in enumerate(COCO_STUFF_IDS):
        lut[coco_id - 1] = train_id
    return lut


def coco10k_lut() -> np.ndarray:
    """1-based COCO id (cocostuff-10k .mat value, 0 = unlabeled) -> 1..171, else 0."""
    lut = np.zeros(256, np.uint8)
    for train_id, coco_id in enumerate(COCO_STUFF_IDS):
        lut[coco_id] = train_id + 1
    return lut


def _convert_png(job: Tuple[str, str, np.ndarray]) -> None:
    src, dst, lut = job
    with Image.open(src) as im:
        arr = np.asarray(im)
    if arr.ndim != 2:
        raise ValueError(f"{src}: expected a single-channel label PNG, got shape {arr.shape}")
    tmp = f"{dst}.tmp.png"
    Image.fromarray(lut[arr]).save(tmp)
    os.replace(tmp, dst)


def _run(jobs: List, fn: Callable, workers: int, what: str) -> None:
    t0 = time.time()
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as ex:
            for i, _ in enumerate(ex.map(fn, jobs, chunksize=16), 1):
                if i % 1000 == 0:
                    print(f"  {what}: {i}/{len(jobs)}", flush=True)
    else:
        for i, job in enumerate(jobs, 1):
            fn(job)
            if i % 1000 == 0:
                print(f"  {what}: {i}/{len(jobs)}", flush=True)
    print(f"{what}: converted {len(jobs)} files in {time.time() - t0:.1f}s", flush=True)


def prepare_cityscapes(root: str, *, splits: Sequence[str] = ("train", "val"), overwrite: bool = False,
                       workers: int = 1) -> int:
    lut = cityscapes_lut()
    jobs = []
    for split in splits:
        folder = Path(root) / "gtFine" / split
        if not folder.is_dir():
            raise SystemExit(f"error: {folder} not found (expected the official gtFine_trainvaltest layout under "
                             f"--root {root})")
        srcs = sorted(folder.rglob("*_gtFine_labelIds.png"))
        if not srcs:
            raise SystemExit(f"error: no *_gtFine_labelIds.png under {folder}")
        for src in srcs:
            dst = str(src).replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png")
            if overwrite or not os.path.exists(dst):
                jobs.append((str(src), dst, lut))
    _run(jobs, _convert_png, workers, "cityscapes labelIds -> labelTrainIds")
    return len(jobs)


def prepare_coco_stuff164k(root: str, *, overwrite: bool = False, workers: int = 1) -> int:
    lut = coco164k_lut()
    jobs = []
    for split in ("train2017", "val2017"):
        folder = Path(root) / "annotations" / split
        if not folder.is_dir():
            raise SystemExit(f"error: {folder} not found (unzip stuffthingmaps_trainval2017.zip into "
                             f"{Path(root) / 'annotations'} and the COCO 2017 images into {Path(root) / 'images'})")
        srcs = sorted(p for p in folder.glob("*.png") if not p.name.endswith("_labelTrainIds.png"))
        for src in srcs:
            dst = str(src)[:-4] + "_labelTrainIds.png"
            if overwrite or not os.path.exists(dst):
                jobs.append((str(src), dst, lut))
    _run(jobs, _convert_png, workers, "coco_stuff164k stuffthingmaps -> labelTrainIds")
    return len(jobs)


def _convert_mat(job: Tuple[str, str, str, str, np.ndarray]) -> None:
    try:
        from scipy.io import loadmat
    except ImportError:  # only COCO-Stuff-10k ships .mat labels
        raise SystemExit("error: coco_stuff10k's .mat labels need scipy: pip install -e '.[seg-data]'") from None

    mat_path, img_src, img_dst, dst, lut = job
    seg = np.asarray(loadmat(mat_path)["S"])
    if seg.max() > 255:
        raise ValueError(f"{mat_path}: class id {seg.max()} out of range")
    tmp = f"{dst}.tmp.png"
    Image.fromarray(lut[seg.astype(np.uint8)]).save(tmp)
    os.replace(tmp, dst)
    if not os.path.exists(img_dst):
        shutil.copyfile(img_src, img_dst)


def check_list_name(name: str, list_file, line: int) -> None:
    """Refuse an imageLists entry that would leave --root: the name is joined under
    annotations/ and images/, and the label file is written from it."""
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise SystemExit(f"error: {list_file}:{line}: {name!r} is not a plain image name (absolute or '..' "
                         f"paths would read and write outside --root)")


def prepare_coco_stuff10k(root: str, *, overwrite: bool = False, workers: int = 1) -> int:
    root_p = Path(root)
    lut = coco10k_lut()
    jobs = []
    for list_name, split in (("train", "train2014"), ("test", "test2014")):
        list_file = root_p / "imageLists" / f"{list_name}.txt"
        if not list_file.is_file():
            raise SystemExit(f"error: {list_file} not found (expected the official cocostuff-10k-v1.1 release: "
                             f"images/, annotations/*.mat, imageLists/ under --root {root})")
        (root_p / "images" / split).mkdir(parents=True, exist_ok=True)
        (root_p / "annotations" / split).mkdir(parents=True, exist_ok=True)
        missing = []
        for line, name in enumerate((ln.strip() for ln in list_file.read_text().splitlines()), 1):
            if not name:
                continue
            check_list_name(name, list_file, line)
            mat, img = root_p / "annotations" / f"{name}.mat", root_p / "images" / f"{name}.jpg"
            if not mat.is_file() or not img.is_file():
                missing.append(name)
                continue
            dst = root_p / "annotations" / split / f"{name}_labelTrainIds.png"
            if overwrite or not dst.exists():
                jobs.append((str(mat), str(img), str(root_p / "images" / split / f"{name}.jpg"), str(dst), lut))
        if missing:
            raise SystemExit(f"error: {len(missing)} entries of {list_file} lack annotations/<name>.mat or "
                             f"images/<name>.jpg, e.g. {missing[:5]}")
    _run(jobs, _convert_mat, workers, "coco_stuff10k .mat -> labelTrainIds")
    return len(jobs)


def main(argv=None) -> int:
    from gpaco.engine.cli import add_debug_flag

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_debug_flag(p)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("cityscapes", "coco_stuff164k", "coco_stuff10k"):
        s = sub.add_parser(name)
        s.add_argument("--root", required=True)
        s.add_argument("--overwrite", action="store_true")
        s.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    s = sub.add_parser("demo_seg", help="long-tailed MNIST digit scenes (offline)")
    s.add_argument("--out", required=True)
    s.add_argument("--num-train", type=int, default=600)
    s.add_argument("--num-val", type=int, default=40)
    s.add_argument("--num-test", type=int, default=100)
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--imb-factor", type=float, default=0.01, help="tail/head digit frequency in train")
    s.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.cmd == "cityscapes":
        prepare_cityscapes(args.root, overwrite=args.overwrite, workers=args.workers)
    elif args.cmd == "coco_stuff164k":
        prepare_coco_stuff164k(args.root, overwrite=args.overwrite, workers=args.workers)
    elif args.cmd == "coco_stuff10k":
        prepare_coco_stuff10k(args.root, overwrite=args.overwrite, workers=args.workers)
    else:
        from gpaco.data.demo_seg import build_demo_scenes

        t0 = time.time()
        meta = build_demo_scenes(args.out, num_train=args.num_train, num_val=args.num_val, num_test=args.num_test,
                                 size=args.size, imb_factor=args.imb_factor, seed=args.seed)
        state = "already built, nothing written" if meta["skipped"] else f"built in {time.time() - t0:.1f}s"
        print(f"demo scenes in {args.out} ({state}): {meta['scenes']} scenes of {args.size}x{args.size}")
        print(f"  train digits per class (0..9): {meta['digits']['train']}")
        print(f"  train pixels per class (0..9, background): {meta['pixels']['train']}")
    return 0


if __name__ == "__main__":
    from gpaco.engine.cli import run_cli

    sys.exit(run_cli(main))
