"""Semantic-segmentation datasets in their standard on-disk layouts (docs/method.md#data-and-augmentation).

Every reader lists (image, label) pairs, checks that each image has its label and each
label its image, and raises :class:`SegDataError` naming what is missing. Labels are
single-channel PNGs of train ids; ``reduce_zero_label`` datasets store 0 = "other" and
1..C = classes, which become 255 (ignored) and 0..C-1 on loading.

=================  =========================================================  =====  ======
name               layout under ``--data-root``                               C      reduce
=================  =========================================================  =====  ======
ade20k             ``ADEChallengeData2016/``: images/{training,validation}/    150    yes
                   *.jpg, annotations/{training,validation}/*.png
cityscapes         leftImg8bit/{train,val}/<city>/*_leftImg8bit.png,           19     no
                   gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png
                   (``tools/prepare_data.py cityscapes`` makes them from the
                   official *_gtFine_labelIds.png)
coco_stuff10k      images/{train2014,test2014}/*.jpg,                          171    yes
                   annotations/{train2014,test2014}/*_labelTrainIds.png
                   (``tools/prepare_data.py coco_stuff10k``; 0 = unlabeled)
coco_stuff164k     images/{train2017,val2017}/*.jpg,                           171    no
                   annotations/{train2017,val2017}/*_labelTrainIds.png
                   (``tools/prepare_data.py coco_stuff164k``; 255 = unlabeled)
pascal_context59   VOC2010: JPEGImages/*.jpg, SegmentationClassContext/*.png    59     yes
                   (converted 0..59 PNGs), ImageSets/SegmentationContext/
                   {train,val}.txt
demo               images/{train,val,test}/*.png, labels/{...}/*.png           11     no
                   (``tools/prepare_data.py demo_seg``)
=================  =========================================================  =====  ======
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .seg_transforms import IGNORE_INDEX
from .splits import DataError

__all__ = [
    "SegDataError", "SegDatasetInfo", "SEG_DATASETS", "SegDataset", "SyntheticSegDataset",
    "list_pairs", "build_seg_dataset", "reduce_zero_label", "CITYSCAPES_CLASSES", "ADE20K_CLASSES",
    "PASCAL_CONTEXT59_CLASSES", "COCO_STUFF_CLASSES", "DEMO_SEG_CLASSES",
]

Pair = Tuple[str, str]


class SegDataError(DataError):
    """The data root does not hold the expected layout; the message says what is missing
    (a :class:`~gpaco.data.splits.DataError`, so the tools report it as one error line)."""


CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)

PASCAL_CONTEXT59_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building",
    "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog",
    "door", "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike",
    "mountain", "mouse", "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves",
    "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall",
    "water", "window", "wood",
)

# The 80 COCO things then the 91 stuff classes, in train-id order.
COCO_STUFF_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush", "banner", "blanket", "branch", "bridge", "building-other",
    "bush", "cabinet", "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes",
    "clouds", "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
    "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light", "mat", "metal",
    "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other",
    "plastic", "platform", "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug",
    "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone",
    "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable", "wall-brick",
    "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "waterdrops", "window-blind", "window-other", "wood",
)

DEMO_SEG_CLASSES = tuple(str(d) for d in range(10)) + ("background",)


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """0 -> 255 (ignored), k -> k-1 for 1..254, 255 stays 255."""
    out = label.astype(np.int64) - 1
    out[label == 0] = IGNORE_INDEX
    out[label == IGNORE_INDEX] = IGNORE_INDEX
    return out


# --------------------------------------------------------------------------- pair listing


def _files(folder: Path, suffix: str) -> List[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob(f"*{suffix}") if p.is_file())


def _missing_message(what: str, missing: Sequence[str], total: int, hint: str = "") -> str:
    shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
    return f"{len(missing)} of {total} {what}: {shown}{hint}"


def _pair_by_stem(name: str, root: Path, img_dir: Path, ann_dir: Path, img_suffix: str, ann_suffix: str,
                  hint: str = "") -> List[Pair]:
    """Pair every ``img_dir/**/<stem><img_suffix>`` with ``ann_dir/**/<stem><ann_suffix>`` (same subfolder)."""
    for folder, what in ((img_dir, "image"), (ann_dir, "label")):
        if not folder.is_dir():
            raise SegDataError(f"{name}: {what} folder {folder} not found under --data-root {root}{hint}")
    images = {p.relative_to(img_dir).as_posix()[: -len(img_suffix)]: p for p in _files(img_dir, img_suffix)}
    labels = {p.relative_to(ann_dir).as_posix()[: -len(ann_suffix)]: p for p in _files(ann_dir, ann_suffix)}
    if not images:
        raise SegDataError(f"{name}: no *{img_suffix} images in {img_dir}")
    no_label = sorted(k for k in images if k not in labels)
    no_image = sorted(k for k in labels if k not in images)
    problems = []
    if no_label:
        problems.append(_missing_message(
            f"images in {img_dir} have no label {ann_dir}/<name>{ann_suffix}",
            [f"{k}{ann_suffix}" for k in no_label], len(images)))
    if no_image:
        problems.append(_missing_message(
            f"labels in {ann_dir} have no image {img_dir}/<name>{img_suffix}",
            [f"{k}{img_suffix}" for k in no_image], len(labels)))
    if problems:
        raise SegDataError(f"{name}: images and labels do not pair up: " + "; ".join(problems) + hint)
    return [(str(images[k]), str(labels[k])) for k in sorted(images)]


def _pairs_from_list(name: str, root: Path, list_file: Path, img_dir: Path, ann_dir: Path, img_suffix: str,
                     ann_suffix: str, hint: str = "") -> List[Pair]:
    if not list_file.is_file():
        raise SegDataError(f"{name}: split file {list_file} not found under --data-root {root}{hint}")
    ids = [ln.strip() for ln in list_file.read_text().splitlines() if ln.strip()]
    if not ids:
        raise SegDataError(f"{name}: split file {list_file} is empty")
    pairs = [(img_dir / f"{i}{img_suffix}", ann_dir / f"{i}{ann_suffix}") for i in ids]
    no_img = [p.name for p, _ in pairs if not p.is_file()]
    no_lab = [a.name for _, a in pairs if not a.is_file()]
    problems = []
    if no_img:
        problems.append(_missing_message(f"images listed in {list_file.name} are missing from {img_dir}",
                                         no_img, len(ids)))
    if no_lab:
        problems.append(_missing_message(f"labels listed in {list_file.name} are missing from {ann_dir}",
                                         no_lab, len(ids)))
    if problems:
        raise SegDataError(f"{name}: " + "; ".join(problems) + hint)
    return [(str(p), str(a)) for p, a in pairs]


def _ade20k(root: Path, split: str) -> List[Pair]:
    sub = {"train": "training", "val": "validation"}[split]
    base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
    return _pair_by_stem("ade20k", root, base / "images" / sub, base / "annotations" / sub, ".jpg", ".png")


def _cityscapes(root: Path, split: str) -> List[Pair]:
    hint = ""
    ann = root / "gtFine" / split
    if ann.is_dir() and not _files(ann, "_gtFine_labelTrainIds.png") and _files(ann, "_gtFine_labelIds.png"):
        hint = (f" (found *_gtFine_labelIds.png only: convert them with "
                f"`python tools/prepare_data.py cityscapes --root {root}`)")
    return _pair_by_stem("cityscapes", root, root / "leftImg8bit" / split, ann, "_leftImg8bit.png",
                         "_gtFine_labelTrainIds.png", hint)


def _coco_stuff10k(root: Path, split: str) -> List[Pair]:
    sub = {"train": "train2014", "val": "test2014"}[split]
    hint = " (build the layout with `python tools/prepare_data.py coco_stuff10k --root ROOT`)"
    return _pair_by_stem("coco_stuff10k", root, root / "images" / sub, root / "annotations" / sub, ".jpg",
                         "_labelTrainIds.png", hint)


def _coco_stuff164k(root: Path, split: str) -> List[Pair]:
    sub = {"train": "train2017", "val": "val2017"}[split]
    hint = " (make the label PNGs with `python tools/prepare_data.py coco_stuff164k --root ROOT`)"
    return _pair_by_stem("coco_stuff164k", root, root / "images" / sub, root / "annotations" / sub, ".jpg",
                         "_labelTrainIds.png", hint)


def _pascal_context59(root: Path, split: str) -> List[Pair]:
    base = root / "VOC2010" if (root / "VOC2010").is_dir() else root
    hint = (" (expected VOC2010 with JPEGImages/, SegmentationClassContext/ holding the converted 0..59 "
            "label PNGs, and ImageSets/SegmentationContext/{train,val}.txt)")
    return _pairs_from_list("pascal_context59", root, base / "ImageSets" / "SegmentationContext" / f"{split}.txt",
                            base / "JPEGImages", base / "SegmentationClassContext", ".jpg", ".png", hint)


def _demo(root: Path, split: str) -> List[Pair]:
    hint = " (generate it with `python tools/prepare_data.py demo_seg --out ROOT`)"
    return _pair_by_stem("demo", root, root / "images" / split, root / "labels" / split, ".png", ".png", hint)


@dataclass(frozen=True)
class SegDatasetInfo:
    """A dataset's fixed facts and the original's pipeline settings for it."""

    name: str
    num_classes: int
    class_names: Tuple[str, ...]
    reduce_zero_label: bool
    img_scale: Tuple[int, int]           # (W, H) of the train rescale and the test resize
    crop_size: Tuple[int, int]           # (h, w)
    splits: Tuple[str, ...]
    lister: Callable[[Path, str], List[Pair]] = field(repr=False)
    test_mode: str = "whole"             # 'whole' or 'slide'
    test_crop: Optional[Tuple[int, int]] = None
    test_stride: Optional[Tuple[int, int]] = None


SEG_DATASETS: Dict[str, SegDatasetInfo] = {
    "ade20k": SegDatasetInfo("ade20k", 150, ADE20K_CLASSES, True, (2048, 512), (512, 512), ("train", "val"),
                             _ade20k),
    "cityscapes": SegDatasetInfo("cityscapes", 19, CITYSCAPES_CLASSES, False, (2048, 1024), (512, 1024),
                                 ("train", "val"), _cityscapes),
    "coco_stuff10k": SegDatasetInfo("coco_stuff10k", 171, COCO_STUFF_CLASSES, True, (2048, 512), (512, 512),
                                    ("train", "val"), _coco_stuff10k),
    "coco_stuff164k": SegDatasetInfo("coco_stuff164k", 171, COCO_STUFF_CLASSES, False, (2048, 512), (512, 512),
                                     ("train", "val"), _coco_stuff164k),
    "pascal_context59": SegDatasetInfo("pascal_context59", 59, PASCAL_CONTEXT59_CLASSES, True, (520, 520),
                                       (480, 480), ("train", "val"), _pascal_context59, "slide", (480, 480),
                                       (320, 320)),
    "demo": SegDatasetInfo("demo", 11, DEMO_SEG_CLASSES, False, (64, 64), (64, 64), ("train", "val", "test"),
                           _demo),
}

for _info in SEG_DATASETS.values():
    assert len(_info.class_names) == _info.num_classes, _info.name


def list_pairs(dataset: str, root: Union[str, os.PathLike], split: str) -> List[Pair]:
    """(image path, label path) pairs of ``split``, validated; raises :class:`SegDataError`."""
    if dataset not in SEG_DATASETS:
        raise SegDataError(f"unknown segmentation dataset {dataset!r}; choose one of {sorted(SEG_DATASETS)}")
    info = SEG_DATASETS[dataset]
    if split not in info.splits:
        raise SegDataError(f"{dataset} has splits {info.splits}, not {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise SegDataError(f"{dataset}: --data-root {root} does not exist")
    return info.lister(root, split)


def _read_image(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _read_label(path: str) -> np.ndarray:
    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16"):
            raise SegDataError(f"label {path} has mode {im.mode}; expected a single-channel PNG of class ids")
        return np.asarray(im)


def _check_label_values(label: np.ndarray, path: str, num_classes: int, reduced: bool) -> None:
    """Every value of a raw label must be a class id or the ignore index 255 (with
    ``reduce_zero_label`` the file holds 0 = ignored and 1..C)."""
    top = num_classes + 1 if reduced else num_classes  # first value that is neither
    if label.size and int(label.max()) >= top:
        bad = np.unique(label[(label >= top) & (label != IGNORE_INDEX)])
        if bad.size:
            ids = f"1..{num_classes} (0: ignored)" if reduced else f"0..{num_classes - 1}"
            raise SegDataError(f"label {path} holds the value {int(bad[0])}"
                               + (f" (and {bad.size - 1} other bad values)" if bad.size > 1 else "")
                               + f": expected class ids {ids} or the ignore index {IGNORE_INDEX}")


def _size_of(path: str) -> Tuple[int, int]:
    with Image.open(path) as im:  # reads the header only
        return im.size


def check_pair_sizes(pairs: Sequence[Pair], jobs: int = 8) -> None:
    """Every image and its label have the same size, read from the file headers (nothing is
    decoded; 0.6 ms a pair measured with cached files, threads overlap the file-system waits)."""
    paths = [p for pair in pairs for p in pair]
    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        sizes = list(pool.map(_size_of, paths, chunksize=64))
    bad = [(img, ann, sizes[2 * i], sizes[2 * i + 1]) for i, (img, ann) in enumerate(pairs)
           if sizes[2 * i] != sizes[2 * i + 1]]
    if bad:
        img, ann, (iw, ih), (lw, lh) = bad[0]
        more = f" ({len(bad) - 1} more pairs differ)" if len(bad) > 1 else ""
        raise SegDataError(f"{img} is {iw}x{ih} but its label {ann} is {lw}x{lh}{more}")


class SegDataset(Dataset):
    """Image/label pairs with a transform ``(img, label, rng) -> (img, label)``.

    ``dataset[i]`` uses the seed ``i``; ``dataset[(i, seed)]`` the given seed (the
    training sampler passes one per draw, so augmentations are reproducible and
    resumable). Items are ``(img, label, index)``.
    """

    def __init__(self, pairs: Sequence[Pair], *, num_classes: int, transform: Callable,
                 reduce_zero_label: bool = False, class_names: Optional[Sequence[str]] = None, name: str = ""):
        self.pairs = list(pairs)
        self.num_classes = int(num_classes)
        self.transform = transform
        self.reduce_zero_label = reduce_zero_label
        self.class_names = tuple(class_names) if class_names else tuple(str(c) for c in range(num_classes))
        self.name = name

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Raw (RGB uint8 HWC image, int64 HW label with reductions applied)."""
        img_path, ann_path = self.pairs[index]
        img, label = _read_image(img_path), _read_label(ann_path)
        if img.shape[:2] != label.shape:
            raise SegDataError(f"{img_path} is {img.shape[1]}x{img.shape[0]} but its label {ann_path} is "
                               f"{label.shape[1]}x{label.shape[0]}")
        _check_label_values(label, ann_path, self.num_classes, self.reduce_zero_label)
        label = reduce_zero_label(label) if self.reduce_zero_label else label.astype(np.int64)
        return img, label

    def load_label(self, index: int) -> np.ndarray:
        """The raw int64 HW label of ``index`` with reductions applied (the image is not read)."""
        label = _read_label(self.pairs[index][1])
        _check_label_values(label, self.pairs[index][1], self.num_classes, self.reduce_zero_label)
        return reduce_zero_label(label) if self.reduce_zero_label else label.astype(np.int64)

    def check_labelled(self) -> None:
        """Refuse a training set in which no mask has a labelled pixel (every pixel the ignore
        label, e.g. annotations of 0 = "other" under ``reduce_zero_label``, or masks written as
        255): it would train with loss 0 and exit as if it had learned. Masks are read until
        one has a labelled pixel, so a usable set costs one read."""
        for i in range(len(self)):
            if (self.load_label(i) != IGNORE_INDEX).any():
                return
        if len(self):
            zero = " (0 = ignored: the dataset's labels are reduced by one)" if self.reduce_zero_label else ""
            raise SegDataError(f"{self.name or 'segmentation set'}: none of its {len(self)} masks (first: "
                               f"{self.pairs[0][1]}) has a labelled pixel, only the ignore label {IGNORE_INDEX}"
                               f"{zero}; training on it would have loss 0 and learn nothing")

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, key)
        img, label = self.load(index)
        rng = np.random.default_rng(seed)
        img, label = self.transform(img, label, rng)
        return img, label, index


class SyntheticSegDataset(SegDataset):
    """Random images with blocky labels: the ``--dry-run`` stand-in when the data root is absent."""

    def __init__(self, num_samples: int, num_classes: int, size: Tuple[int, int], *, transform: Callable,
                 class_names: Optional[Sequence[str]] = None, seed: int = 0):
        super().__init__([("synthetic", "synthetic")] * num_samples, num_classes=num_classes, transform=transform,
                         class_names=class_names, name="synthetic")
        self.size = tuple(size)
        self.seed = seed

    def load(self, index: int):
        rng = np.random.default_rng(self.seed + index)
        h, w = self.size
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        blocks = rng.integers(0, self.num_classes, (max(h // 16, 1) + 1, max(w // 16, 1) + 1))
        label = np.kron(blocks, np.ones((16, 16), np.int64))[:h, :w]
        label[rng.random((h, w)) < 0.02] = IGNORE_INDEX
        return img, label

    def load_label(self, index: int) -> np.ndarray:
        return self.load(index)[1]


def build_seg_dataset(dataset: str, root, split: str, transform: Callable) -> SegDataset:
    info = SEG_DATASETS[dataset]
    pairs = list_pairs(dataset, root, split)
    check_pair_sizes(pairs)
    return SegDataset(pairs, num_classes=info.num_classes, transform=transform,
                      reduce_zero_label=info.reduce_zero_label, class_names=info.class_names,
                      name=f"{dataset}/{split}")
