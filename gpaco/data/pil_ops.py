"""The image operations of the augmentation strategies (:mod:`gpaco.data.transforms`).

* PIL-side ops: :class:`PILGaussianBlur` (MoCo v2's blur), the CIFAR fit-to-square resize,
  timm's RandAugment with 0-bit posterize restored (:func:`_rand_augment`), and
  :class:`Cutout` on the tensor.
* The tensor fast path of the ImageNet components (``regular``, ``sim``, ``sim02``,
  ``randcls``, ``randclsstack``): the same ops in the same order, drawing the same random
  numbers from the same generators as the original's torchvision/PIL composition, but
  computed on a float tensor holding 0..255 pixel values after the crop: the crop+resize is
  torch's uint8 antialiased bilinear (PIL's filter; pixels within +-1), ColorJitter and
  Grayscale replicate PIL's ImageEnhance/convert('L') arithmetic exactly, the blur applies
  PIL's 3-pass box-blur kernel as one separable filter (rounded once instead of per pass),
  and RandAugment still runs on a PIL image. tests/test_pipeline_stats.py checks the outputs
  against the original composition; :mod:`gpaco.data.gpu_aug` reuses the kernels on the device.
"""
from __future__ import annotations

import math
import random
from functools import lru_cache
from typing import Callable, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter, ImageOps
from torch import Tensor
from torchvision import transforms as T

__all__ = ["RA_FILL", "PILGaussianBlur", "Cutout"]

# RandAugment fill: the ImageNet mean in 0..255, used by the original for every dataset.
RA_FILL = (124, 116, 104)


class PILGaussianBlur:
    """MoCo v2 blur: PIL ``GaussianBlur(radius=sigma)``, ``sigma ~ U[sigma_min, sigma_max]``.

    Kept on PIL (not ``torchvision.transforms.GaussianBlur``) because the original blurs
    with PIL and needs no kernel size.
    """

    def __init__(self, sigma: Tuple[float, float] = (0.1, 2.0)) -> None:
        self.sigma = sigma

    def __call__(self, img: Union[Image.Image, "_Pixels"]) -> Union[Image.Image, "_Pixels"]:
        radius = random.uniform(*self.sigma)
        if isinstance(img, _Pixels):
            return _Pixels(_box_blur_3pass(img.t, radius))
        return img.filter(ImageFilter.GaussianBlur(radius=radius))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma})"


class Cutout:
    """Zero one ``length x length`` square (clipped at the border) of a [C, H, W] tensor.

    The centre is uniform over the image, so the hole can be partly outside. Applied
    before Normalize, so the hole is black in pixel space (DeVries & Taylor 2017).
    """

    def __init__(self, length: int) -> None:
        self.length = length

    def __call__(self, img: Tensor) -> Tensor:
        h, w = img.shape[-2:]
        y = int(torch.randint(h, ()))
        x = int(torch.randint(w, ()))
        half = self.length // 2
        img = img.clone()
        img[..., max(0, y - half):min(h, y + half), max(0, x - half):min(w, x + half)] = 0
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(length={self.length})"


class _FitSquare:
    """Resize(shorter side) > CenterCrop to ``size`` unless the image already is ``size x size``.

    The CIFAR RandomCrop+padding recipe assumes input of the output size (CIFAR is 32x32);
    this lets it run on other images (the 28x28 demo digits at S=32) unchanged otherwise.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.fit = T.Compose([T.Resize(size), T.CenterCrop(size)])

    def __call__(self, img: Image.Image) -> Image.Image:
        return img if img.size == (self.size, self.size) else self.fit(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


# --------------------------------------------------------------------------- tensor fast path
#
# Between the crop and ToTensor, the fast components carry the image as ``_Pixels``: a
# float32 [3, H, W] tensor holding integer values 0..255, i.e. exactly the uint8 pixels
# the PIL ops would hold. Every op below reproduces its torchvision/PIL counterpart
# (same random draws from the same generators, same arithmetic where PIL's is exactly
# reproducible) and falls back to it for any other input, so each op still works alone
# on a PIL image.


class _Pixels:
    """A float32 [3, H, W] image of 0..255 integer values (the fast path's PIL stand-in)."""

    __slots__ = ("t",)

    def __init__(self, t: Tensor) -> None:
        self.t = t


def _pil_to_uint8(img: Image.Image) -> Tensor:
    """RGB PIL image -> uint8 [3, H, W] (a channels-last view of the HWC array)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1)


def _pixels_to_pil(img: "_Pixels") -> Image.Image:
    planes = img.t.numpy().astype(np.uint8)  # numpy's cast is ~4x faster than torch's here
    return Image.merge("RGB", [Image.fromarray(c) for c in planes])


def _luma(t: Tensor) -> Tensor:
    """PIL's convert('L') on 0..255 floats: (R*19595 + G*38470 + B*7471 + 2**15) >> 16.
    Exact in float32 (every intermediate is an integer below 2**24). [1, H, W]."""
    y = t[0] * 19595.0
    y.add_(t[1], alpha=38470.0).add_(t[2], alpha=7471.0).add_(32768.0).mul_(1.0 / 65536.0).floor_()
    return y.unsqueeze(0)


def _blend_(x: Tensor, degenerate, factor: float) -> Tensor:
    """PIL Image.blend(degenerate, x, factor) in place: float32 ``d + f * (x - d)``, clipped
    to 0..255 and truncated, as ImagingBlend computes it (ImageEnhance's enhance())."""
    f = float(np.float32(factor))
    if isinstance(degenerate, Tensor) or degenerate != 0:
        x.sub_(degenerate).mul_(f).add_(degenerate)
    else:
        x.mul_(f)
    return x.clamp_(0.0, 255.0).floor_()  # = truncation on >= 0 (torch's trunc_ is slow)


class _RandomResizedCrop(T.RandomResizedCrop):
    """RandomResizedCrop (bilinear, antialiased) that also takes a uint8 [3, H, W] tensor
    and returns ``_Pixels``: crop by slicing, resize with torch's uint8 antialiased bilinear
    kernel (PIL's filter; pixel values within +-1 of PIL's). Same ``get_params`` draws."""

    def forward(self, img):
        if isinstance(img, Image.Image) and img.mode == "RGB":
            img = _pil_to_uint8(img)
        elif not (isinstance(img, Tensor) and img.dtype == torch.uint8 and img.ndim == 3):
            return super().forward(img)
        i, j, h, w = self.get_params(img, self.scale, self.ratio)
        crop = img[:, i:i + h, j:j + w].unsqueeze(0)
        out = F.interpolate(crop, size=list(self.size), mode="bilinear", align_corners=False, antialias=True)
        return _Pixels(out[0].float())


class _RandomHorizontalFlip(T.RandomHorizontalFlip):
    def forward(self, img):
        if isinstance(img, _Pixels):
            return _Pixels(img.t.flip(-1)) if torch.rand(1) < self.p else img
        return super().forward(img)


class _ColorJitter(T.ColorJitter):
    """ColorJitter without hue on ``_Pixels``: PIL's ImageEnhance Brightness / Contrast /
    Color (blend with black, with the rounded mean luma, with the per-pixel luma), in the
    same random order with the same factors, bit-exact."""

    def forward(self, img):
        if not isinstance(img, _Pixels) or self.hue is not None:
            return super().forward(img)
        fn_idx, b, c, s, _ = self.get_params(self.brightness, self.contrast, self.saturation, self.hue)
        x = img.t.clone()
        for fn_id in fn_idx:
            if fn_id == 0 and b is not None:
                _blend_(x, 0.0, b)
            elif fn_id == 1 and c is not None:
                # ImageEnhance.Contrast: int(mean of the L image + 0.5), the sum is exact
                mean = int(float(_luma(x).sum()) / (x.shape[1] * x.shape[2]) + 0.5)
                _blend_(x, float(mean), c)
            elif fn_id == 2 and s is not None:
                _blend_(x, _luma(x), s)
        return _Pixels(x)


class _RandomGrayscale(T.RandomGrayscale):
    def forward(self, img):
        if isinstance(img, _Pixels):
            if torch.rand(1) < self.p:
                return _Pixels(_luma(img.t).expand(3, -1, -1).contiguous())
            return img
        return super().forward(img)


class _ToPIL:
    """``_Pixels`` -> PIL RGB image (before PIL-only ops such as RandAugment); else identity."""

    def __call__(self, img):
        return _pixels_to_pil(img) if isinstance(img, _Pixels) else img

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class _ToTensor(T.ToTensor):
    """ToTensor that also takes ``_Pixels`` (divides by 255, as ToTensor does to uint8)."""

    def __call__(self, pic):
        if isinstance(pic, _Pixels):
            return pic.t.div(255.0)
        if isinstance(pic, Image.Image) and pic.mode == "RGB":
            # the same values as T.ToTensor (uint8 -> float32, / 255), one copy fewer
            chw = np.asarray(pic).transpose(2, 0, 1).astype(np.float32, order="C")
            return torch.from_numpy(chw).div_(255.0)
        return super().__call__(pic)


@lru_cache(maxsize=4096)
def _pil_blur_kernel(radius: float) -> Tuple[float, ...]:
    """The 1-D kernel equal to Pillow's GaussianBlur(radius): 3 passes of an 'extended'
    box of radius l + a (ImagingGaussianBlur / _gaussian_blur_radius, after Gwosdek et
    al. 2011): weights 1 on |i| <= l, a at |i| = l + 1, normalised; convolved 3 times."""
    passes = 3
    r = float(np.float32(radius))
    sigma2 = r * r / passes
    L = math.sqrt(12.0 * sigma2 + 1.0)
    l = math.floor((L - 1.0) / 2.0)
    a = (2 * l + 1) * (l * (l + 1) - 3 * sigma2) / (6 * (sigma2 - (l + 1) * (l + 1)))
    box = np.ones(2 * l + 3)
    box[0] = box[-1] = a
    box /= box.sum()
    k = np.array([1.0])
    for _ in range(passes):
        k = np.convolve(k, box)
    return tuple(float(v) for v in k)


def _box_blur_3pass(t: Tensor, radius: float) -> Tensor:
    """Pillow's GaussianBlur(radius) on a [3, H, W] 0..255 float tensor: the same
    separable kernel with edge replication, rounded once (Pillow rounds after every
    pass, so pixels may differ by a level or two)."""
    k = _pil_blur_kernel(radius)
    r = (len(k) - 1) // 2
    h, w = t.shape[-2:]
    x = F.pad(t.unsqueeze(0), (r, r, r, r), mode="replicate")[0]
    rows = x[:, :, r:r + w] * k[r]  # horizontal pass
    for i, kv in enumerate(k):
        if i != r:
            rows.add_(x[:, :, i:i + w], alpha=kv)
    out = rows[:, r:r + h, :] * k[r]  # vertical pass
    for i, kv in enumerate(k):
        if i != r:
            out.add_(rows[:, i:i + h, :], alpha=kv)
    return out.round_().clamp_(0.0, 255.0)


# --------------------------------------------------------------------------- RandAugment


def _rand_augment(image_size: int, n: int, m: int) -> Callable:
    # timm 1.x's default RandAugment op set, prob 0.5 per op, N(m, 0.5) magnitude clipped
    # to [0, 10], random bilinear/bicubic, level maps all as in the old timm copy the
    # original vendors; timm's 'Posterize' is the old 'PosterizeTpu'. translate_const
    # only matters for the absolute-translate ops, which RandAugment does not use.
    from timm.data.auto_augment import rand_augment_transform

    hparams = dict(translate_const=int(image_size * 0.45), img_mean=RA_FILL)
    return _zero_bit_posterize(rand_augment_transform(f"rand-n{n}-m{m}-mstd0.5", hparams))


def _posterize(img, bits: int, **_):
    """PIL posterize keeping ``bits`` bits, where 0 bits gives a black image: what every Pillow
    before 13 did (and the originals trained with). Pillow 13 raises for bits < 1, which timm's
    Posterize asks for at magnitude < 2.5 and PosterizeIncreasing (MAE's ``inc1``) at
    magnitude 10 -- about 1 image in 1,000 of MAE fine-tuning's RandAugment."""
    if bits >= 8:
        return img
    if bits <= 0:
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, bits)


def _zero_bit_posterize(rand_augment):
    """timm's RandAugment with its posterize ops replaced by :func:`_posterize`."""
    for op in rand_augment.ops:
        if op.name.startswith("Posterize"):
            op.aug_fn = _posterize
    return rand_augment
