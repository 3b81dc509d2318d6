"""Your own data as a tree of class folders: ``ROOT/<class>/<image>``, as torchvision's ``ImageFolder``.

The class index is the position of the class folder in sorted order (``ImageFolder``'s rule) and the
folder names are the class names. Every image file (:data:`IMAGE_EXTENSIONS`) below a class folder
counts, sub-folders included; hidden files and folders (``.name``) are skipped.

One split rule serves both ways in (docs/data.md#your-own-data):

* ``gpaco-make-lists ROOT --out DIR`` (:mod:`gpaco.classification.make_lists`) writes ``train.txt``,
  ``val.txt``, ``test.txt`` (``relative/path label`` lines, read by ``--dataset split``) and
  ``classes.txt``: the reproducible record of a split, which stays fixed when the tree changes;
* ``--dataset folder --data-root ROOT`` splits the tree itself at start-up with the same rule and
  the same defaults (:class:`FolderDataset`), so both give the same images to each split.

The rule (:func:`split_class_folders`), per class of ``n`` images, shuffled with its own generator
seeded by ``(seed, CRC-32 of the class name)``: ``t = max(1, round(test_fraction * n))`` images (halves
rounded up, at most ``n - 2``) to test, then ``v`` to val, the rest to train. A class's draw does not
depend on the other classes: adding images to another class, or a class, leaves its test images where
they are (its val images move only if the balanced count ``V`` changes).
Validation is balanced: with ``val_fraction`` every class gives ``V = min over classes of
max(1, floor(val_fraction * n))``; with ``val_per_class N`` every class gives ``N``, or fewer where
that would leave it no training image (the classes short of ``N`` are named). A class keeps at least
one image in each split when it has 3 or more; with 2 images it gives 1 to train and 1 to test (no
val image), with 1 image only train; a class folder without images is an error.
"""
from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .robustness import IMAGE_EXTENSIONS
from .splits import DataError, SplitDataset, _new_counter, class_counts

__all__ = ["ClassTree", "FolderSplit", "FolderDataset", "scan_class_folders", "split_class_folders",
           "write_split_lists", "class_tree_summary", "SPLITS", "CLASSES_FILE", "LIST_NAMES", "DEFAULT_SPLIT_SEED",
           "DEFAULT_VAL_FRACTION", "DEFAULT_TEST_FRACTION"]

SPLITS = ("train", "val", "test")
DEFAULT_SPLIT_SEED = 0
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.2
#: The files :func:`write_split_lists` writes, by split (``classes.txt`` besides).
LIST_NAMES = {split: f"{split}.txt" for split in SPLITS}
#: The class names file, one per line (the reports' ``gpaco.classification.report.CLASSES_FILE``).
CLASSES_FILE = "classes.txt"


@dataclass
class ClassTree:
    """A scanned class-folder tree: ``classes`` (sorted folder names = class names, index order) and
    ``files[c]``, the image paths of class ``c`` relative to ``root`` (sorted, ``/``-separated)."""

    root: str
    classes: List[str]
    files: List[List[str]]

    @property
    def counts(self) -> List[int]:
        return [len(f) for f in self.files]


@dataclass
class FolderSplit:
    """The split of a :class:`ClassTree`: ``samples[split]`` = ``[(relative path, label)]`` in class
    order, each class's images sorted by path; ``notes``: what the rule could not do as asked
    (small classes, a val split that is not balanced), one line each."""

    root: str
    classes: List[str]
    samples: Dict[str, List[Tuple[str, int]]]
    seed: int
    notes: List[str] = field(default_factory=list)

    def counts(self, split: str) -> List[int]:
        return class_counts(self.samples[split], len(self.classes))

    def describe(self) -> str:
        """``455 train / 10 val (1 per class) / 116 test images of 10 classes``."""
        val = self.counts("val")
        present = sorted({c for c in val if c})
        per_class = " (not balanced)" if len(present) > 1 else "" if not present else \
            f" ({present[0]} per class)" if all(val) else f" ({present[0]} per class of 3 or more images)"
        return (f"{len(self.samples['train'])} train / {len(self.samples['val'])} val{per_class} / "
                f"{len(self.samples['test'])} test images of {len(self.classes)} classes")


def _unlistable(name: str) -> Optional[str]:
    """Why a path cannot be one field of a ``relative/path label`` line (None: it can)."""
    if any(ch in name for ch in "\n\r\x00"):
        return "a line break or NUL in the name"
    if name != name.strip():
        return "leading or trailing whitespace in the name"
    return None


def scan_class_folders(root: str) -> ClassTree:
    """Every class folder of ``root`` and the image files below each (sub-folders included).

    Raises:
        DataError: ``root`` is not a folder, has no class folders, a class folder holds no image,
            or a name cannot be written to a split list (a line break, surrounding whitespace).
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DataError(f"{root}: no such folder (expected a tree of class folders, <root>/<class>/<image>)")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders (expected <root>/<class>/<image>, one folder per class)")
    files: List[List[str]] = []
    empty = []
    for name in classes:
        problem = _unlistable(name)
        if problem:
            raise DataError(f"{os.path.join(root, name)!r}: class folder refused ({problem}); rename it")
        found: List[str] = []
        seen = set()  # real paths of the folders walked: a link back up the tree is not followed twice
        for folder, dirs, names in os.walk(os.path.join(root, name), followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:
                dirs[:] = []
                continue
            seen.add(real)
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            rel_folder = os.path.relpath(folder, root)
            for n in names:
                if n.startswith(".") or not n.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                rel = os.path.join(rel_folder, n).replace(os.sep, "/")
                problem = _unlistable(n)
                if problem:
                    raise DataError(f"{os.path.join(root, rel)!r}: image refused ({problem}); rename it")
                found.append(rel)
        if not found:
            empty.append(name)
        files.append(sorted(found))
    if empty:
        raise DataError(f"{root}: class folder(s) without images ({', '.join(IMAGE_EXTENSIONS)}): "
                        f"{', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''}; every class needs training "
                        f"images: add some, or remove the folder")
    return ClassTree(root, classes, files)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def split_class_folders(tree: ClassTree, *, seed: int = DEFAULT_SPLIT_SEED, val_per_class: Optional[int] = None,
                        val_fraction: Optional[float] = None,
                        test_fraction: float = DEFAULT_TEST_FRACTION) -> FolderSplit:
    """The seeded, stratified train/val/test split of ``tree`` (the rule of the module docstring).

    Args:
        seed: the split's seed (not the training seed: runs of several seeds share one split).
        val_per_class: ``N`` >= 1 val images per class (fewer where a class cannot spare them).
        val_fraction: in (0, 1); the balanced ``V`` is the least ``max(1, floor(val_fraction * n))``
            over the classes of 3 or more images. Default :data:`DEFAULT_VAL_FRACTION` when
            ``val_per_class`` is not given; giving both is a ValueError.
        test_fraction: in (0, 1); ``max(1, round(test_fraction * n))`` test images per class.
    """
    if val_per_class is not None and val_fraction is not None:
        raise ValueError("give val_per_class or val_fraction, not both")
    if val_per_class is not None and val_per_class < 1:
        raise ValueError(f"val_per_class must be >= 1, got {val_per_class}")
    if val_per_class is None and val_fraction is None:
        val_fraction = DEFAULT_VAL_FRACTION
    if val_fraction is not None and not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    counts = tree.counts
    # test first, at least 1 and at most n - 2 (one image each left for val and train)
    test = [min(max(1, _round_half_up(test_fraction * n)), n - 2) if n >= 3 else (1 if n == 2 else 0)
            for n in counts]
    spare = [max(0, n - t - 1) if n >= 3 else 0 for n, t in zip(counts, test)]  # val may take, train keeps 1
    if val_per_class is not None:
        want = val_per_class
    else:
        big = [n for n in counts if n >= 3]
        want = min((max(1, math.floor(val_fraction * n)) for n in big), default=0)
    val = [min(want, s) for s in spare]
    notes = []
    for c, n in enumerate(counts):
        if n < 3:
            kept = "its image goes to train (no val or test image)" if n == 1 else \
                "1 image to train, 1 to test, none to val"
            notes.append(f"class {tree.classes[c]!r} has {n} image{'s' if n > 1 else ''}: {kept}")
    short = [f"{tree.classes[c]!r} ({val[c]})" for c, n in enumerate(counts) if n >= 3 and val[c] < want]
    if short:
        notes.append(f"val is not balanced: {len(short)} class(es) cannot spare {want} val images and keep a "
                     f"training image: {', '.join(short[:10])}{' ...' if len(short) > 10 else ''}")
    samples: Dict[str, List[Tuple[str, int]]] = {s: [] for s in SPLITS}
    for c, (name, paths) in enumerate(zip(tree.classes, tree.files)):
        rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
        order = [paths[i] for i in rng.permutation(len(paths))]
        t, v = test[c], val[c]
        for split, part in (("test", order[:t]), ("val", order[t:t + v]), ("train", order[t + v:])):
            samples[split] += [(p, c) for p in sorted(part)]
    return FolderSplit(tree.root, list(tree.classes), samples, seed, notes)


def write_split_lists(split: FolderSplit, out_dir: str, *, overwrite: bool = False) -> Dict[str, str]:
    """``train.txt``, ``val.txt``, ``test.txt`` (``relative/path label``, paths relative to the tree's
    root) and ``classes.txt`` (one class name per line) in ``out_dir``; ``{name: path}``. Existing
    files are refused (``FileExistsError`` naming them) unless ``overwrite``. Each file is written
    under a temporary name and renamed, so a stopped run leaves no half-written list."""
    out_dir = os.fspath(out_dir)
    contents = {LIST_NAMES[s]: "".join(f"{p} {c}\n" for p, c in split.samples[s]) for s in SPLITS}
    contents[CLASSES_FILE] = "".join(f"{n}\n" for n in split.classes)
    paths = {name: os.path.join(out_dir, name) for name in contents}
    present = [p for p in paths.values() if os.path.exists(p)]
    if present and not overwrite:
        raise FileExistsError(f"{', '.join(present)} already exist(s); --overwrite replaces them")
    os.makedirs(out_dir, exist_ok=True)
    for name, text in contents.items():
        tmp = paths[name] + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, paths[name])
    return paths


class FolderDataset(SplitDataset):
    """One split of a class-folder tree (``--dataset folder``), split at construction with
    :func:`split_class_folders` (``seed``; the default fractions, as ``gpaco-make-lists``):
    ``dataset[i] -> (transform(rgb image), label)`` like :class:`~gpaco.data.splits.SplitDataset`,
    whose reading rules it keeps (unreadable images, symbolic links out of the root, 16-bit images).

    Attributes besides SplitDataset's: ``class_names`` (the sorted folder names), ``split``,
    ``split_seed``, ``folder_split`` (the whole :class:`FolderSplit`); ``list_path`` is None and
    ``name`` says which split of which tree (messages, the ranks' agreement check).
    """

    def __init__(self, root: str, split: str = "train", transform=None, *, seed: int = DEFAULT_SPLIT_SEED,
                 num_classes: Optional[int] = None, allow_outside_root: bool = False, skip_bad_images: bool = False,
                 follow_symlinks: bool = False, folder_split: Optional[FolderSplit] = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.data_root = os.fspath(root)
        self.folder_split = folder_split or split_class_folders(scan_class_folders(self.data_root), seed=seed)
        self.split, self.split_seed = split, self.folder_split.seed
        self.class_names = list(self.folder_split.classes)
        found = len(self.class_names)
        if num_classes is not None and num_classes < found:
            raise DataError(f"{self.data_root}: {found} class folders, more than the {num_classes} classes asked for "
                            f"(--num-classes); the class index is the sorted folder position")
        self.num_classes = num_classes if num_classes is not None else found
        self.list_path = None
        self.name = f"{self.data_root} ({split} split of the class folders, seed {self.split_seed})"
        self._real_root = None if follow_symlinks or allow_outside_root else os.path.realpath(self.data_root)
        rel = self.folder_split.samples[split]
        root = os.path.abspath(self.data_root)
        self.samples = [(os.path.join(root, p), c) for p, c in rel]
        self._lines = None
        self.list_crc = zlib.crc32("\n".join(f"{p} {c}" for p, c in rel).encode())
        self.targets = [c for _, c in self.samples]
        self.class_counts = class_counts(self.samples, self.num_classes)
        self.transform = transform
        self.skip_bad_images = skip_bad_images
        self._skips = _new_counter()
        self._local_skips = 0

    def where(self, index: int) -> str:
        return f"{self.name}, image {index}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={self.data_root!r}, split={self.split!r}, samples={len(self)}, " \
               f"num_classes={self.num_classes})"


def class_tree_summary(split: FolderSplit) -> Sequence[str]:
    """One line per class: ``name: n images -> train / val / test`` (the lists tool prints them)."""
    tr, va, te = (split.counts(s) for s in SPLITS)
    width = max(len(n) for n in split.classes)
    return [f"  {c:>3} {name:<{width}}  {tr[c] + va[c] + te[c]:>6} -> {tr[c]:>6} / {va[c]:>4} / {te[c]:>5}"
            for c, name in enumerate(split.classes)]
