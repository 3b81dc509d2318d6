"""Robustness benchmark data: ImageNet-C-style corruption trees, ImageNet-R, ImageNet-Sketch folders.

Folder layouts read here (all ``ImageFolder``-like: one folder per class):

* **ImageNet-C**: ``ROOT/<corruption>/<severity 1..5>/<wnid>/<image>``; the 15 corruptions of
  :data:`gpaco.metrics.CORRUPTIONS`. Class index = position of the wnid folder in sorted
  order (torchvision ``ImageFolder``), so all 1000 folders must be there.
* **Our corrupted trees** (:func:`make_corrupted_tree`, ``tools/make_corrupted.py``): the same
  ``ROOT/<corruption>/<severity>/<class>/<image>`` but the class folders are named by the
  **label index** of the split list (``0``, ``1``, ... ``999``), so any subset of classes works.
  ``ROOT/meta.json`` records how the tree was made, ``ROOT/subset.txt`` the source images in
  our split-list format (evaluate the same images uncorrupted with ``--test-list``).
* **ImageNet-R**: ``ROOT/<wnid>/<image>``, the 200 ImageNet-R classes; sorted folder ``i`` is
  column ``IMAGENET_R_INDICES[i]`` of the 1000-way head (the argmax is over those 200 columns).
* **ImageNet-Sketch**: ``ROOT/<wnid>/<image>``, 1000 classes, the full head.

A folder tree whose class folders are all decimal integers is read as label-index named;
otherwise as sorted wnids.

The benchmark constants (the 15 corruptions, AlexNet's errors for the normalised mCE, the
ImageNet-R columns) live here; the evaluation is :mod:`gpaco.classification.robustness`.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .splits import to_rgb

__all__ = [
    "IMAGE_EXTENSIONS", "SEVERITIES", "TREE_FORMAT_VERSION", "CORRUPTIONS", "ALEXNET_ERRORS", "IMAGENET_R_INDICES",
    "ImageFolderDataset", "find_corruption_tree", "select_subset", "make_corrupted_tree",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
SEVERITIES = (1, 2, 3, 4, 5)
TREE_FORMAT_VERSION = 1

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
    "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
    "elastic_transform", "pixelate", "jpeg_compression",
)

#: AlexNet top-1 error per corruption, averaged over severities 1..5 (Hendrycks & Dietterich).
ALEXNET_ERRORS: dict[str, float] = dict(zip(CORRUPTIONS, (
    0.886428, 0.894468, 0.922640, 0.819880, 0.826268, 0.785948, 0.798360, 0.866816,
    0.826572, 0.819324, 0.564592, 0.853204, 0.646056, 0.717840, 0.606500,
)))


#: ImageNet-1k class indices (sorted wnids) of the 200 ImageNet-R classes (docs/method.md#metrics).
IMAGENET_R_INDICES: tuple[int, ...] = (
    1, 2, 4, 6, 8, 9, 11, 13, 22, 23, 26, 29, 31, 39, 47, 63, 71, 76, 79, 84, 90, 94, 96, 97, 99,
    100, 105, 107, 113, 122, 125, 130, 132, 144, 145, 147, 148, 150, 151, 155, 160, 161, 162, 163,
    171, 172, 178, 187, 195, 199, 203, 207, 208, 219, 231, 232, 234, 235, 242, 245, 247, 250, 251,
    254, 259, 260, 263, 265, 267, 269, 276, 277, 281, 288, 289, 291, 292, 293, 296, 299, 301, 308,
    309, 310, 311, 314, 315, 319, 323, 327, 330, 334, 335, 337, 338, 340, 341, 344, 347, 353, 355,
    361, 362, 365, 366, 367, 368, 372, 388, 390, 393, 397, 401, 407, 413, 414, 425, 428, 430, 435,
    437, 441, 447, 448, 457, 462, 463, 469, 470, 471, 472, 476, 483, 487, 515, 546, 555, 558, 570,
    579, 583, 587, 593, 594, 596, 609, 613, 617, 621, 629, 637, 657, 658, 701, 717, 724, 763, 768,
    774, 776, 779, 780, 787, 805, 812, 815, 820, 824, 833, 847, 852, 866, 875, 883, 889, 895, 907,
    928, 931, 932, 933, 934, 936, 937, 943, 945, 947, 948, 949, 951, 953, 954, 957, 963, 965, 967,
    980, 981, 983, 988,
)
assert len(IMAGENET_R_INDICES) == 200 and list(IMAGENET_R_INDICES) == sorted(set(IMAGENET_R_INDICES))


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>`` (images sorted by name within a class).

    Class index: ``int(folder)`` when every class folder is a decimal integer (our label-index
    trees), else the folder's position in sorted order (torchvision ``ImageFolder``, ImageNet
    wnids). ``num_classes`` (when given) bounds the label-index case and must equal the
    number of folders in the sorted case, where a missing folder would shift every index.
    """

    def __init__(self, root: str, transform: Optional[Callable] = None, *, num_classes: Optional[int] = None,
                 expect_classes: Optional[int] = None) -> None:
        self.root, self.transform = os.fspath(root), transform
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"{self.root}: image folder not found (expected <root>/<class>/<image>)")
        classes = sorted(e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise FileNotFoundError(f"{self.root}: no class folders (expected <root>/<class>/<image>)")
        self.label_index_named = all(c.isascii() and c.isdigit() for c in classes)
        if self.label_index_named:
            index = {c: int(c) for c in classes}
            top = max(index.values())
            if num_classes is not None and top >= num_classes:
                raise ValueError(f"{self.root}: class folder {top} is out of range for a {num_classes}-class model")
        else:
            want = expect_classes if expect_classes is not None else num_classes
            if want is not None and len(classes) != want:
                raise ValueError(
                    f"{self.root}: {len(classes)} class folders, expected {want}: with wnid-named folders the class "
                    f"index is the sorted folder position, so every class folder must be present (or name the "
                    f"folders by label index, as tools/make_corrupted.py does)")
            index = {c: i for i, c in enumerate(classes)}
        self.classes = classes
        self.class_to_idx = index
        self.samples: List[Tuple[str, int]] = []
        for c in classes:
            folder = os.path.join(self.root, c)
            names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
            self.samples += [(os.path.join(folder, n), index[c]) for n in names]
        if not self.samples:
            raise FileNotFoundError(f"{self.root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders")
        self.targets = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            with Image.open(path) as img:
                img = to_rgb(img)
        except (OSError, ValueError, SyntaxError) as exc:
            raise OSError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
        return (self.transform(img) if self.transform else img), target


# --------------------------------------------------------------------------- ImageNet-C-style trees


def find_corruption_tree(root: str) -> Tuple[Dict[str, Dict[int, str]], List[str]]:
    """``({corruption: {severity: folder}}, notes)`` of the known corruptions under ``root``.

    Folders that are not one of the 15 corruptions are skipped and named in the notes.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"--corrupted-root {root}: no such folder (expected <root>/<corruption>/<1..5>/...)")
    notes: List[str] = []
    tree: Dict[str, Dict[int, str]] = {}
    present = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    extra = [p for p in present if p not in CORRUPTIONS]
    if extra:
        notes.append(f"ignored folders that are not one of the 15 corruptions: {', '.join(extra)}")
    for c in CORRUPTIONS:
        if c not in present:
            continue
        sev = {}
        for s in SEVERITIES:
            folder = os.path.join(root, c, str(s))
            if os.path.isdir(folder):
                sev[s] = folder
        if sev:
            tree[c] = sev
    if not tree:
        raise FileNotFoundError(f"--corrupted-root {root}: none of the corruption folders "
                                f"({', '.join(CORRUPTIONS[:3])}, ...) with severity folders 1..5")
    missing = [c for c in CORRUPTIONS if c not in tree]
    if missing:
        notes.append(f"missing corruptions (the means cover only the {len(tree)} present): {', '.join(missing)}")
    partial = [f"{c} ({sorted(set(SEVERITIES) - set(s))})" for c, s in tree.items() if len(s) != len(SEVERITIES)]
    if partial:
        notes.append(f"missing severities: {', '.join(partial)}")
    return tree, notes


@contextlib.contextmanager
def _seeded_skimage_noise():
    """corrupt-tta's impulse_noise calls skimage's random_noise without a generator (fresh OS
    entropy each call); give it one drawn from NumPy's seeded global RNG so trees are reproducible."""
    import corrupt_tta.corruptions as cc

    original = cc.random_noise

    def seeded(image, *args, **kwargs):
        kwargs.setdefault("rng", np.random.default_rng(np.random.randint(0, 2 ** 31 - 1)))
        return original(image, *args, **kwargs)

    cc.random_noise = seeded
    try:
        yield
    finally:
        cc.random_noise = original


def _fit(img: Image.Image, size: Optional[int], resize_size: Optional[int]) -> Image.Image:
    if not size:
        return img
    from torchvision.transforms import functional as TF

    img = TF.resize(img, resize_size or size, interpolation=TF.InterpolationMode.BILINEAR)
    return TF.center_crop(img, size)


def _corrupt_one(job) -> int:
    """Write every corruption/severity of one source image; returns the number of files."""
    (i, path, label, out_dir, corruptions, severities, seed, size, resize_size) = job
    import corrupt_tta

    with Image.open(path) as im:
        img = _fit(to_rgb(im), size, resize_size)
    x = np.asarray(img, dtype=np.uint8)
    stem = os.path.splitext(os.path.basename(path))[0]
    n = 0
    with _seeded_skimage_noise():
        for c in corruptions:
            ci = CORRUPTIONS.index(c)
            for s in severities:
                state = np.random.SeedSequence([seed, i, ci, s]).generate_state(1)[0]
                np.random.seed(int(state))
                y = corrupt_tta.corrupt(x, severity=s, corruption_name=c)
                y = np.uint8(np.clip(np.rint(np.asarray(y, dtype=np.float64)), 0, 255))
                folder = os.path.join(out_dir, c, str(s), str(label))
                os.makedirs(folder, exist_ok=True)
                Image.fromarray(y).save(os.path.join(folder, f"{i:06d}_{stem}.png"))
                n += 1
    return n


def select_subset(samples: Sequence[Tuple[str, int]], per_class: Optional[int]) -> List[int]:
    """Indices of the first ``per_class`` samples of every class, in list order (all when None)."""
    if not per_class:
        return list(range(len(samples)))
    seen: Dict[int, int] = {}
    keep = []
    for i, (_, label) in enumerate(samples):
        if seen.get(label, 0) < per_class:
            seen[label] = seen.get(label, 0) + 1
            keep.append(i)
    return keep


def make_corrupted_tree(
    list_path: str,
    data_root: str,
    out_dir: str,
    *,
    corruptions: Iterable[str] = CORRUPTIONS,
    severities: Iterable[int] = SEVERITIES,
    per_class: Optional[int] = None,
    size: Optional[int] = None,
    resize_size: Optional[int] = None,
    seed: int = 0,
    workers: int = 0,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Write ``out_dir/<corruption>/<severity>/<label>/<index>_<name>.png`` for a split list.

    Uses ``corrupt-tta`` (the ImageNet-C corruption functions) on each image, optionally
    first resized (shorter side ``resize_size``, default ``size``) and center-cropped to
    ``size`` (ImageNet-C corrupts 224x224 crops; corrupt at the model's input size). Each
    (image, corruption, severity) has its own seed from ``seed``, so the tree is the same
    with any number of ``workers``. ``per_class``: only the first N images of every class
    (list order). Also writes ``subset.txt`` (the source lines used, split-list format) and,
    last, ``meta.json``. An existing complete tree with the same parameters is kept as is.

    Returns the meta dict (``skipped`` True when nothing had to be written).
    """
    from gpaco.data.splits import read_split

    corruptions = list(corruptions)
    severities = [int(s) for s in severities]
    unknown = [c for c in corruptions if c not in CORRUPTIONS]
    if unknown:
        raise ValueError(f"unknown corruptions {unknown}; choose from {', '.join(CORRUPTIONS)}")
    if any(s not in SEVERITIES for s in severities):
        raise ValueError(f"severities must be in 1..5, got {severities}")
    samples = read_split(list_path, data_root)
    keep = select_subset(samples, per_class)
    params = {"version": TREE_FORMAT_VERSION, "source_list": os.path.abspath(list_path),
              "data_root": os.path.abspath(data_root), "corruptions": corruptions, "severities": severities,
              "per_class": per_class, "size": size, "resize_size": resize_size, "seed": seed}
    meta_path = os.path.join(out_dir, "meta.json")
    if os.path.isfile(meta_path):
        try:
            with open(meta_path) as f:
                old = json.load(f)
        except ValueError:
            old = {}
        if old.get("params") == params:
            return {**old, "skipped": True}
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not overwrite:
            raise FileExistsError(f"{out_dir} exists and is not a tree made with these parameters; pass "
                                  f"--overwrite to replace it (only its corruption folders, subset.txt and "
                                  f"meta.json are removed)")
        for name in list(CORRUPTIONS) + ["subset.txt", "meta.json"]:
            p = os.path.join(out_dir, name)
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.remove(p)
    os.makedirs(out_dir, exist_ok=True)
    jobs = [(i, samples[i][0], samples[i][1], out_dir, corruptions, severities, seed, size, resize_size)
            for i in keep]
    t0 = time.time()
    written = 0
    if workers and workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            for n in pool.map(_corrupt_one, jobs, chunksize=max(1, len(jobs) // (8 * workers))):
                written += n
    else:
        for k, job in enumerate(jobs):
            written += _corrupt_one(job)
            if (k + 1) % 500 == 0:
                log(f"  {k + 1}/{len(jobs)} images ({time.time() - t0:.0f}s)")
    root = os.path.abspath(data_root)
    with open(os.path.join(out_dir, "subset.txt"), "w") as f:
        for i in keep:
            f.write(f"{os.path.relpath(samples[i][0], root)} {samples[i][1]}\n")
    labels = [samples[i][1] for i in keep]
    counts = np.bincount(labels, minlength=max(labels) + 1 if labels else 0).tolist()
    meta = {"params": params, "num_images": len(keep), "files": written, "class_counts": counts,
            "layout": "<corruption>/<severity>/<label index>/<list index>_<name>.png",
            "seconds": round(time.time() - t0, 1)}
    tmp = meta_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, meta_path)
    return {**meta, "skipped": False}
