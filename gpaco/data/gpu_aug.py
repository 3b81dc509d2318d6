"""``--gpu-aug``: the two-view ImageNet strategies with the augmentation on the device.

The CPU loader workers only decode, crop and resize (the fast path's ``_RandomResizedCrop``,
kept as uint8) and draw every random parameter of the view (flip, colour-jitter order and
factors, grayscale, blur kernel, RandAugment ops and arguments) from the same generators in
the same order as the CPU strategy (:mod:`gpaco.data.transforms`). A sample is therefore
still augmented from its own seed (worker-count independent) and the device reads nothing
back to the host: :class:`DeviceAugment` applies the ops batched, each sample with its own
parameters, as masks and per-sample tables rather than by grouping samples.

What runs where, per view ([3, S, S]):

* worker: decode > RandomResizedCrop (uint8, antialiased bilinear) > parameters
* device: flip > ColorJitter (brightness / contrast / saturation, drawn order) > grayscale >
  blur > RandAugment ops > /255 > Normalize

The CPU ``sim`` component flips last; flip commutes exactly with jitter, grayscale and the
symmetric blur, so the result is the same. Jitter, grayscale, blur and the lookup-table and
blend RandAugment ops (AutoContrast, Equalize, Invert, Posterize, Solarize, SolarizeAdd,
Color, Contrast, Brightness, Sharpness) reproduce the CPU path's PIL arithmetic (the blur up
to float summation order). The geometric ops (Rotate, ShearX/Y, TranslateX/YRel) use PIL's
inverse maps, fill border and kernels (bilinear; bicubic is PIL's a = -1 cubic, not
grid_sample's a = -0.75), within one level of PIL where float32 rounds otherwise than PIL's
doubles (docs/benchmarks.md#gpu-aug).
"""
from __future__ import annotations

import math
import random
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision import transforms as T

from .pil_ops import RA_FILL, _pil_blur_kernel, _pil_to_uint8, _rand_augment
from .transforms import TWO_VIEW_STRATEGIES

__all__ = ["GPU_AUG_STRATEGIES", "GpuAugViews", "DeviceAugment", "build_gpu_aug"]

# components with a device implementation; the strategies made of them
_COMPONENTS = ("sim", "sim02", "randcls", "randclsstack", "randclsgray")
GPU_AUG_STRATEGIES: Tuple[str, ...] = tuple(
    name for name, views in TWO_VIEW_STRATEGIES.items() if all(v in _COMPONENTS for v in views))

# RandAugment op ids: timm's default op list (rand-n{n}-m{m}); the device path knows these
_RA_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
           "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
_OP = {name: i for i, name in enumerate(_RA_OPS)}
_GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")

# one view's parameter vector (float32)
_FLIP, _ORDER, _FACTORS, _GRAY, _BLUR = 0, slice(1, 4), slice(4, 7), 7, 8
_BLUR_TAPS = 13  # the longest Pillow blur kernel for sigma <= 2 (l = 1: 3 passes of a 5-box)
_RA0 = _BLUR + _BLUR_TAPS  # then per RandAugment slot (randcls* only): op id (-1: none), argument, bicubic


def _num_params(randaug_n: int) -> int:
    return _RA0 + 3 * randaug_n


class _ViewParams:
    """Draws one view's crop and parameters (component ``name``) in the CPU strategy's order."""

    def __init__(self, name: str, size: int, randaug_n: int, randaug_m: int) -> None:
        self.name, self.size, self.randaug_n = name, size, randaug_n
        self.crop = T.RandomResizedCrop(size, scale=(0.2, 1.0) if name == "sim02" else (0.08, 1.0))
        self.jitter = T.ColorJitter(0.4, 0.4, 0.4, 0.0)
        self.ra = _rand_augment(size, randaug_n, randaug_m) if name.startswith("randcls") else None
        if self.ra is not None:
            unknown = [op.name for op in self.ra.ops if op.name not in _OP]
            assert not unknown, f"internal: no device RandAugment op for {unknown}"

    def __call__(self, img: Tensor) -> Tuple[Tensor, Tensor]:
        i, j, h, w = self.crop.get_params(img, self.crop.scale, self.crop.ratio)
        crop = F.interpolate(img[:, i:i + h, j:j + w].unsqueeze(0), size=[self.size, self.size], mode="bilinear",
                             align_corners=False, antialias=True)[0]
        p = np.zeros(_num_params(self.randaug_n if self.ra is not None else 0), np.float32)
        p[_BLUR + _BLUR_TAPS // 2] = 1.0  # identity kernel
        p[_RA0::3] = -1
        stack = self.name == "randclsstack"
        if self.name.startswith("randcls"):
            self._flip(p)
        self._jitter(p)
        if self.name in ("sim", "sim02", "randclsstack", "randclsgray"):
            p[_GRAY] = float(torch.rand(1) < 0.2)
        if self.name in ("sim", "sim02") or stack:
            if not 0.5 < torch.rand(1):  # T.RandomApply(p=0.5)
                k = np.asarray(_pil_blur_kernel(random.uniform(0.1, 2.0)), np.float32)
                p[_BLUR:_BLUR + _BLUR_TAPS] = 0.0
                p[_BLUR + (_BLUR_TAPS - len(k)) // 2:_BLUR + (_BLUR_TAPS + len(k)) // 2] = k
        if self.name in ("sim", "sim02"):
            self._flip(p)
        if self.ra is not None:
            self._rand_augment(p)
        return crop, torch.from_numpy(p)

    @staticmethod
    def _flip(p: np.ndarray) -> None:
        p[_FLIP] = float(torch.rand(1) < 0.5)

    def _jitter(self, p: np.ndarray) -> None:
        torch.rand(1)  # the CPU strategy's RandomApply(p=1) draws once
        j = self.jitter
        fn_idx, b, c, s, _ = j.get_params(j.brightness, j.contrast, j.saturation, j.hue)
        p[_ORDER] = [int(f) for f in fn_idx if f != 3]
        p[_FACTORS] = [b, c, s]

    def _rand_augment(self, p: np.ndarray) -> None:
        """timm's RandAugment.__call__ / AugmentOp.__call__, drawing without applying."""
        ra = self.ra
        ops = np.random.choice(ra.ops, ra.num_layers, replace=ra.choice_weights is None, p=ra.choice_weights)
        for k, op in enumerate(ops):
            if op.prob < 1.0 and random.random() > op.prob:
                continue
            m = op.magnitude
            if op.magnitude_std > 0:
                m = random.uniform(0, m) if op.magnitude_std == float("inf") else random.gauss(m, op.magnitude_std)
            m = max(0.0, min(m, op.magnitude_max or 10.0))
            args = op.level_fn(m, op.hparams) if op.level_fn is not None else (0.0,)
            bicubic = 0.0
            if op.name in _GEOMETRIC:
                bicubic = float(random.choice((0, 1)))  # timm's random bilinear / bicubic
            p[_RA0 + 3 * k:_RA0 + 3 * k + 3] = (_OP[op.name], args[0], bicubic)


class GpuAugViews:
    """The loader-worker half of ``--gpu-aug``: PIL image -> ``{"views": [u8, u8],
    "params": [p1, p2]}`` (uint8 [3, S, S] crops and float32 parameter vectors)."""

    num_views = 2
    draft_size = None

    def __init__(self, aug: str, image_size: int, randaug_n: int = 2, randaug_m: int = 10) -> None:
        if aug not in GPU_AUG_STRATEGIES:
            raise ValueError(f"--gpu-aug supports --aug {', '.join(GPU_AUG_STRATEGIES)}; got {aug!r}")
        self.image_size = image_size
        self.views = [_ViewParams(v, image_size, randaug_n, randaug_m) for v in TWO_VIEW_STRATEGIES[aug]]

    def __call__(self, img) -> Dict[str, List[Tensor]]:
        img = _pil_to_uint8(img.convert("RGB") if img.mode != "RGB" else img)
        out = [view(img) for view in self.views]
        return {"views": [o[0].contiguous() for o in out], "params": [o[1] for o in out]}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({[v.name for v in self.views]}, size={self.image_size})"


# --------------------------------------------------------------------------- device ops
# Images are float32 [B, 3, H, W] of integer values 0..255 (the CPU fast path's _Pixels).

def _const(values: Sequence[float], device: torch.device) -> Tensor:
    """A small constant tensor made on the device by fills: ``torch.tensor(..., device=cuda)``
    would copy from pageable host memory and wait for the queued kernels."""
    t = torch.empty(len(values), device=device)
    for i, v in enumerate(values):
        t[i] = v
    return t


def _col(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


def _luma(x: Tensor) -> Tensor:
    """PIL convert('L'), exact in float32 (see pil_ops._luma). [B, 1, H, W]."""
    y = x[:, 0:1] * 19595.0 + x[:, 1:2] * 38470.0 + x[:, 2:3] * 7471.0 + 32768.0
    return (y * (1.0 / 65536.0)).floor_()


def _mean_luma(x: Tensor, luma: Optional[Tensor] = None) -> Tensor:
    """ImageEnhance.Contrast's degenerate: int(mean of the L image + 0.5). [B, 1, 1, 1]."""
    luma = _luma(x) if luma is None else luma
    return (luma.double().mean((1, 2, 3)) + 0.5).floor().float().view(-1, 1, 1, 1)


def _blend(x: Tensor, degenerate: Tensor, factor: Tensor) -> Tensor:
    """PIL Image.blend(degenerate, x, factor): d + f (x - d), clipped, truncated."""
    return (degenerate + _col(factor) * (x - degenerate)).clamp_(0.0, 255.0).floor_()


def _smooth(x: Tensor) -> Tensor:
    """ImageEnhance.Sharpness's degenerate: PIL's SMOOTH filter (3x3 ones, centre 5, / 13),
    rounded, border kept. Sums of integers, exact; a sum / 13 never ends in .5."""
    rows = x[..., :-2] + x[..., 1:-1] + x[..., 2:]
    box = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]
    out = x.clone()
    out[..., 1:-1, 1:-1] = box.add_(x[..., 1:-1, 1:-1], alpha=4.0).div_(13.0).round_()
    return out


def _apply_lut(x: Tensor, lut: Tensor) -> Tensor:
    """``lut``: [B, 3, 256] per sample and channel."""
    return lut.gather(2, x.flatten(2).long()).view_as(x)


def _luts(x: Tensor, op: Tensor, arg: Tensor) -> Tensor:
    """Per-sample lookup tables of the table RandAugment ops (identity for other ops)."""
    b = x.shape[0]
    i = torch.arange(256, device=x.device, dtype=torch.float32).expand(b, 3, 256)
    a = _col(arg).view(-1, 1, 1)
    flat = x.flatten(2)
    # AutoContrast: stretch [lo, hi] to [0, 255] per channel
    lo, hi = flat.amin(2, keepdim=True), flat.amax(2, keepdim=True)
    scale = 255.0 / (hi - lo).clamp_min(1.0).double()
    stretched = (i.double() * scale - lo.double() * scale).clamp(0.0, 255.0).floor().float()
    auto = torch.where(hi > lo, stretched, i)
    # Equalize (ImageOps.equalize): lut[v] = (step // 2 + #pixels below v) // step
    hist = torch.zeros(b, 3, 256, device=x.device, dtype=torch.float64)
    hist.scatter_add_(2, flat.long(), torch.ones_like(flat, dtype=torch.float64))
    last = hist.gather(2, hi.long())
    step = ((flat.shape[2] - last) / 255.0).floor()
    below = hist.cumsum(2) - hist
    eq = ((step / 2).floor() + below).div(step.clamp_min(1.0)).floor().clamp(max=255.0).float()
    equalize = torch.where(step > 0, eq, i)
    # Posterize: keep the top `bits` bits; Solarize(thresh); SolarizeAdd(add, thresh 128)
    q = torch.exp2(8.0 - a.clamp(0.0, 8.0))
    poster = (i / q).floor() * q
    tables = {
        "AutoContrast": auto, "Equalize": equalize, "Invert": 255.0 - i,
        "Posterize": torch.where(a >= 8, i, poster),
        "Solarize": torch.where(i < a, i, 255.0 - i),
        "SolarizeAdd": torch.where(i < 128, (i + a).clamp(max=255.0), i),
    }
    lut = i
    for name, table in tables.items():
        lut = torch.where(op.view(-1, 1, 1) == _OP[name], table, lut)
    return lut


def _enhance(x: Tensor, op: Tensor, arg: Tensor) -> Tensor:
    """The blend RandAugment ops (Color, Contrast, Brightness, Sharpness); others unchanged."""
    o = _col(op)
    luma = _luma(x)
    degenerate = torch.where(o == _OP["Color"], luma, _smooth(x))
    degenerate = torch.where(o == _OP["Contrast"], _mean_luma(x, luma), degenerate)
    degenerate = torch.where(o == _OP["Brightness"], torch.zeros_like(x[:, :1]), degenerate)
    enhanced = (o == _OP["Color"]) | (o == _OP["Contrast"]) | (o == _OP["Brightness"]) | (o == _OP["Sharpness"])
    return torch.where(enhanced, _blend(x, degenerate, arg), x)


def _resample_pil(x: Tensor, x_in: Tensor, y_in: Tensor, bicubic: Tensor) -> Tensor:
    """PIL's affine-transform resampling at input points ``x_in``, ``y_in`` ([B, H, W],
    pixel-centre coordinates), per sample bilinear or bicubic (Geometry.c: the a = -1 cubic;
    torch's grid_sample uses a = -0.75), as 4x4 taps with indices clamped to the image."""
    b, c, h, w = x.shape
    xs, ys = x_in - 0.5, y_in - 0.5
    x0, y0 = xs.floor(), ys.floor()
    cubic = _col(bicubic)[:, 0] > 0  # [B, 1, 1]

    def weights(d: Tensor) -> List[Tensor]:  # taps at -1, 0, 1, 2
        zero = torch.zeros_like(d)
        cub = [-d * (1 - d) ** 2, 1 - 2 * d * d + d ** 3, d * (1 + d - d * d), -d * d * (1 - d)]
        lin = [zero, 1 - d, d, zero]
        return [torch.where(cubic, cv, lv) for cv, lv in zip(cub, lin)]

    wx, wy = weights(xs - x0), weights(ys - y0)
    flat = x.flatten(2)
    out = torch.zeros_like(x)
    for l in range(4):
        iy = (y0 + (l - 1)).clamp(0, h - 1)
        row = torch.zeros_like(x)
        for k in range(4):
            idx = (iy * w + (x0 + (k - 1)).clamp(0, w - 1)).long().view(b, 1, -1).expand(b, c, -1)
            row += flat.gather(2, idx).view_as(x) * wx[k].unsqueeze(1)
        out += row * wy[l].unsqueeze(1)
    return out


def _affine(x: Tensor, op: Tensor, arg: Tensor, bicubic: Tensor, fill: Tensor) -> Tensor:
    """The geometric RandAugment ops as PIL's inverse affine maps (output pixel centre ->
    input point), resampled as PIL does (bilinear or its bicubic), edge-clamped inside the
    image, ``fill`` outside, truncated."""
    b, _, h, w = x.shape
    one, zero = torch.ones_like(arg), torch.zeros_like(arg)
    rad = -arg * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    cx, cy = w / 2.0, h / 2.0
    rows = {  # (a, b, c, d, e, f): x_in = a x + b y + c, y_in = d x + e y + f
        "Rotate": (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy),
        "ShearX": (one, arg, zero, zero, one, zero),
        "ShearY": (one, zero, zero, arg, one, zero),
        "TranslateXRel": (one, zero, arg * w, zero, one, zero),
        "TranslateYRel": (one, zero, zero, zero, one, arg * h),
    }
    mat = torch.stack([one, zero, zero, zero, one, zero], 1)
    for name, m in rows.items():
        mat = torch.where((op == _OP[name]).unsqueeze(1), torch.stack(m, 1), mat)
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=torch.float32) + 0.5,
                            torch.arange(w, device=x.device, dtype=torch.float32) + 0.5, indexing="ij")
    mv = mat.view(b, 6, 1, 1)
    x_in = mv[:, 0] * xs + mv[:, 1] * ys + mv[:, 2]
    y_in = mv[:, 3] * xs + mv[:, 4] * ys + mv[:, 5]
    inside = ((x_in >= 0) & (x_in < w) & (y_in >= 0) & (y_in < h)).unsqueeze(1)
    out = _resample_pil(x, x_in, y_in, bicubic)
    out = out.clamp_(0.0, 255.0).add_(1e-3).floor_()  # PIL truncates; 1e-3 absorbs float32 error
    out = torch.where(inside, out, fill.view(1, 3, 1, 1))
    geometric = torch.zeros_like(op, dtype=torch.bool)
    for name in _GEOMETRIC:
        geometric |= op == _OP[name]
    return torch.where(_col(geometric), out, x)


def _blur(x: Tensor, taps: Tensor) -> Tensor:
    """Per-sample separable blur (``taps``: [B, K], centred; identity = a unit impulse),
    edge replication, rounded once (pil_ops._box_blur_3pass)."""
    b, c, h, w = x.shape
    r = taps.shape[1] // 2
    k = taps.repeat_interleave(c, 0)  # [B*C, K]
    y = F.pad(x, (r, r, r, r), mode="replicate").reshape(1, b * c, h + 2 * r, w + 2 * r)
    y = F.conv2d(y, k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, -1, 1), groups=b * c)
    return y.view(b, c, h, w).round_().clamp_(0.0, 255.0)


def augment_pixels(x: Tensor, p: Tensor) -> Tensor:
    """One view's batch: uint8/float [B, 3, S, S] crops + [B, P] parameters -> augmented
    0..255 float32 pixels (before /255 and Normalize)."""
    x = x.float()
    x = torch.where(_col(p[:, _FLIP]) > 0, x.flip(-1), x)
    order, factors = p[:, _ORDER].long(), p[:, _FACTORS]
    for k in range(3):  # brightness 0 / contrast 1 / saturation 2, in the drawn order
        fn = order[:, k]
        o = _col(fn)
        luma = _luma(x)
        degenerate = torch.where(o == 1, _mean_luma(x, luma), luma)
        degenerate = torch.where(o == 0, torch.zeros_like(degenerate), degenerate)
        x = _blend(x, degenerate, factors.gather(1, fn.view(-1, 1)).view(-1))
    x = torch.where(_col(p[:, _GRAY]) > 0, _luma(x).expand_as(x), x)
    x = _blur(x, p[:, _BLUR:_BLUR + _BLUR_TAPS])
    fill = _const(RA_FILL, x.device)
    for k in range((p.shape[1] - _RA0) // 3):
        op, arg, bicubic = p[:, _RA0 + 3 * k].long(), p[:, _RA0 + 3 * k + 1], p[:, _RA0 + 3 * k + 2]
        x = _apply_lut(x, _luts(x, op, arg))
        x = _enhance(x, op, arg)
        x = _affine(x, op, arg, bicubic, fill)
    return x


class DeviceAugment:
    """The device half of ``--gpu-aug``: a collated ``{"views", "params"}`` batch ->
    ``[view1, view2]`` normalised float32 [B, 3, S, S] on ``device``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, batch: Dict[str, List[Tensor]], device: torch.device, channels_last: bool = False) -> List[Tensor]:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        mean = _const(self.mean, device).view(1, 3, 1, 1)
        std = _const(self.std, device).view(1, 3, 1, 1)
        out = []
        for x, p in zip(batch["views"], batch["params"]):
            x = augment_pixels(x.to(device, non_blocking=True), p.to(device, non_blocking=True))
            out.append(((x / 255.0 - mean) / std).contiguous(memory_format=fmt))
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


def build_gpu_aug(aug: str, *, image_size: int, mean: Sequence[float], std: Sequence[float], randaug_n: int = 2,
                  randaug_m: int = 10) -> Tuple[GpuAugViews, DeviceAugment]:
    """(worker transform, device augmentation) for ``--aug aug --gpu-aug``.
    Raises ValueError for a strategy without a device implementation."""
    return GpuAugViews(aug, image_size, randaug_n, randaug_m), DeviceAugment(mean, std)
