"""Segmentation data pipeline: the mmseg-0.x training transforms, re-implemented
(docs/method.md#data-and-augmentation).

Training, in this order (one ``numpy.random.Generator`` drives every random choice, so
a sample's augmentation is a pure function of its seed):

1. :class:`RandomRescale`: pick ``r ~ U(ratio_range)``, target ``(r*W_s, r*H_s)`` for the
   recipe's scale ``(W_s, H_s)``, resize keeping the aspect ratio so the long edge fits
   ``r*max(scale)`` and the short edge ``r*min(scale)`` (image bilinear, label nearest).
2. :class:`RandomCrop`: up to 10 tries for a crop whose most frequent labelled class
   covers less than ``cat_max_ratio`` (0.75) of the crop's labelled pixels.
3. :class:`RandomFlip` (p 0.5, horizontal).
4. :class:`PhotoMetricDistortion`: brightness (±32), contrast (x0.5-1.5) before or after
   saturation (x0.5-1.5) and hue (±18 on OpenCV's 0-180 scale), each with probability 0.5.
5. Normalisation with the ImageNet RGB mean/std in 0-255 units.
6. Padding to the crop size: image 0, label ``ignore_index`` (255).

Images are HWC ``uint8`` RGB numpy arrays until normalisation; labels HW ``uint8``/int.
Resizing uses ``torch.nn.functional.interpolate`` (bilinear without antialiasing, like
OpenCV's ``INTER_LINEAR`` that mmcv uses).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "SEG_MEAN", "SEG_STD", "IGNORE_INDEX", "rescale_size", "resize_image", "resize_label",
    "RandomRescale", "RandomCrop", "RandomFlip", "PhotoMetricDistortion", "SegTrainTransform",
    "SegEvalTransform", "rgb_to_hsv", "hsv_to_rgb",
]

SEG_MEAN = (123.675, 116.28, 103.53)
SEG_STD = (58.395, 57.12, 57.375)
IGNORE_INDEX = 255


def rescale_size(h: int, w: int, scale: Sequence[float]) -> Tuple[int, int]:
    """New (h, w) after a keep-ratio rescale to ``scale`` (mmcv ``imrescale`` rule).

    The factor is ``min(max(scale) / long_edge, min(scale) / short_edge)``; sizes round
    half up.
    """
    long_s, short_s = max(scale), min(scale)
    factor = min(long_s / max(h, w), short_s / min(h, w))
    return max(int(h * factor + 0.5), 1), max(int(w * factor + 0.5), 1)


def resize_image(img: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """HWC image (any dtype) -> float32 HWC of ``size`` = (h, w), bilinear."""
    if img.shape[:2] == tuple(size):
        return img.astype(np.float32, copy=False)
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None]
    out = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return out[0].permute(1, 2, 0).numpy()


def resize_label(label: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """HW label -> HW label of ``size`` = (h, w), nearest neighbour."""
    if label.shape == tuple(size):
        return label
    t = torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))[None, None].float()
    out = F.interpolate(t, size=size, mode="nearest")
    return out[0, 0].numpy().astype(label.dtype)


@dataclass
class RandomRescale:
    """Keep-ratio resize to ``ratio * scale`` with ``ratio ~ U(ratio_range)``; ``scale`` = (W, H)."""

    scale: Tuple[int, int]
    ratio_range: Tuple[float, float] = (0.5, 2.0)

    def __call__(self, img, label, rng: np.random.Generator):
        lo, hi = self.ratio_range
        r = rng.uniform(lo, hi) if hi > lo else lo
        target = (int(self.scale[0] * r), int(self.scale[1] * r))
        size = rescale_size(img.shape[0], img.shape[1], target)
        return resize_image(img, size), resize_label(label, size)


@dataclass
class RandomCrop:
    """Crop ``crop_size`` = (h, w) (smaller images are kept whole and padded later).

    With ``cat_max_ratio < 1``, up to 10 crops are drawn until the most frequent labelled
    class covers less than that share of the labelled pixels and at least two classes are
    present; otherwise the last draw is kept.
    """

    crop_size: Tuple[int, int]
    cat_max_ratio: float = 0.75
    ignore_index: int = IGNORE_INDEX

    def _bbox(self, h: int, w: int, rng: np.random.Generator):
        ch, cw = self.crop_size
        y = int(rng.integers(0, max(h - ch, 0) + 1))
        x = int(rng.integers(0, max(w - cw, 0) + 1))
        return y, min(y + ch, h), x, min(x + cw, w)

    def __call__(self, img, label, rng: np.random.Generator):
        h, w = label.shape
        box = self._bbox(h, w, rng)
        if self.cat_max_ratio < 1.0:
            for _ in range(10):
                y0, y1, x0, x1 = box
                crop = label[y0:y1, x0:x1]
                _, counts = np.unique(crop[crop != self.ignore_index], return_counts=True)
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                box = self._bbox(h, w, rng)
        y0, y1, x0, x1 = box
        return img[y0:y1, x0:x1], label[y0:y1, x0:x1]


@dataclass
class RandomFlip:
    prob: float = 0.5

    def __call__(self, img, label, rng: np.random.Generator):
        if rng.random() < self.prob:
            return img[:, ::-1], label[:, ::-1]
        return img, label


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """float RGB in [0, 255] -> HSV with H in degrees [0, 360), S in [0, 1], V in [0, 255]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    c = v - rgb.min(-1)
    s = np.where(v > 0, c / np.maximum(v, 1e-12), 0.0)
    safe_c = np.maximum(c, 1e-12)
    h = np.where(v == r, (g - b) / safe_c, np.where(v == g, 2.0 + (b - r) / safe_c, 4.0 + (r - g) / safe_c))
    h = np.where(c > 0, (h * 60.0) % 360.0, 0.0)
    return np.stack([h, s, v], -1).astype(np.float32)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hsv`."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    hp = (h % 360.0) / 60.0
    c = v * s
    x = c * (1 - np.abs(hp % 2 - 1))
    m = v - c
    z = np.zeros_like(h)
    sector = np.floor(hp).astype(np.int64) % 6
    choices_r = [c, x, z, z, x, c]
    choices_g = [x, c, c, x, z, z]
    choices_b = [z, z, x, c, c, x]
    r = np.choose(sector, choices_r)
    g = np.choose(sector, choices_g)
    b = np.choose(sector, choices_b)
    return (np.stack([r, g, b], -1) + m[..., None]).astype(np.float32)


@dataclass
class PhotoMetricDistortion:
    """mmseg's photometric distortion on a float RGB image in [0, 255]."""

    brightness_delta: int = 32
    contrast_range: Tuple[float, float] = (0.5, 1.5)
    saturation_range: Tuple[float, float] = (0.5, 1.5)
    hue_delta: int = 18  # OpenCV hue units (0-180), i.e. 2 degrees each

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        img = img.astype(np.float32, copy=True)
        if rng.integers(2):
            img = np.clip(img + rng.uniform(-self.brightness_delta, self.brightness_delta), 0, 255)
        contrast_first = bool(rng.integers(2))

        def contrast(x):
            if rng.integers(2):
                x = np.clip(x * rng.uniform(*self.contrast_range), 0, 255)
            return x

        if contrast_first:
            img = contrast(img)
        sat = rng.uniform(*self.saturation_range) if rng.integers(2) else None
        hue = int(rng.integers(-self.hue_delta, self.hue_delta)) if rng.integers(2) else None
        if sat is not None or hue is not None:
            hsv = rgb_to_hsv(img)
            if sat is not None:
                hsv[..., 1] = np.clip(hsv[..., 1] * sat, 0, 1)
            if hue is not None:
                hsv[..., 0] = (hsv[..., 0] + 2.0 * hue) % 360.0
            img = np.clip(hsv_to_rgb(hsv), 0, 255)
        if not contrast_first:
            img = contrast(img)
        return img


def _normalize(img: np.ndarray, mean, std) -> np.ndarray:
    return (img.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


class SegTrainTransform:
    """The whole training pipeline: ``(img uint8 HWC, label HW, rng) -> (img [3,h,w] float, label [h,w] int64)``.

    Args:
        scale: the recipe's ``img_scale`` as (W, H), e.g. (2048, 512) for ADE20K.
        crop_size: (h, w), e.g. (512, 512); the output is always this size (padded).
        ratio_range: random rescale range (0.5, 2.0).
        cat_max_ratio: RandomCrop's category ratio limit (0.75).
        photometric: apply :class:`PhotoMetricDistortion`.
    """

    def __init__(self, scale: Tuple[int, int], crop_size: Tuple[int, int], *,
                 ratio_range: Tuple[float, float] = (0.5, 2.0), cat_max_ratio: float = 0.75,
                 flip_prob: float = 0.5, photometric: bool = True, mean=SEG_MEAN, std=SEG_STD,
                 ignore_index: int = IGNORE_INDEX):
        self.rescale = RandomRescale(tuple(scale), tuple(ratio_range))
        self.crop = RandomCrop(tuple(crop_size), cat_max_ratio, ignore_index)
        self.flip = RandomFlip(flip_prob)
        self.photo = PhotoMetricDistortion() if photometric else None
        self.crop_size = tuple(crop_size)
        self.mean, self.std = mean, std
        self.ignore_index = ignore_index

    def __call__(self, img: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        img, label = self.rescale(img, label, rng)
        img, label = self.crop(img, label, rng)
        img, label = self.flip(img, label, rng)
        if self.photo is not None:
            img = self.photo(img, rng)
        img = _normalize(img, self.mean, self.std)
        ch, cw = self.crop_size
        h, w = label.shape
        out_img = np.zeros((max(ch, h), max(cw, w), 3), np.float32)
        out_lab = np.full((max(ch, h), max(cw, w)), self.ignore_index, np.int64)
        out_img[:h, :w] = img
        out_lab[:h, :w] = label
        return torch.from_numpy(out_img).permute(2, 0, 1).contiguous(), torch.from_numpy(out_lab)


class SegEvalTransform:
    """Evaluation input: the raw image as a uint8 [3, H, W] tensor and the label at full size.

    Resizing (per test scale), normalisation and flipping happen on the device in
    :func:`gpaco.segmentation.train.inference`, so one loaded image serves every augmentation.
    """

    def __call__(self, img: np.ndarray, label: np.ndarray, rng: Optional[np.random.Generator] = None):
        return (torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous(),
                torch.from_numpy(np.ascontiguousarray(label).astype(np.int64)))
