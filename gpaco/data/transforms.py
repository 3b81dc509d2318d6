"""Augmentation strategies under the original's ``--aug`` names (docs/method.md#data-and-augmentation).

A two-view strategy decodes nothing itself: it receives ONE PIL image and returns
``[view1(img), view2(img)]``, two independent random augmentations ([3, S, S] each).
Single-view strategies (CE baselines) return one tensor.

Components (``S`` = ``image_size``, 224 for ImageNet recipes, 32 for CIFAR):

========================  ===============================================================
``mocov2``                RRC(S, .2-1) > ColorJitter(.4,.4,.4,.1) p.8 > Gray .2 > Blur p.5 > HFlip
``regular``               RRC(S) > HFlip > ColorJitter(.4,.4,.4,0)
``sim``                   RRC(S) > ColorJitter(.4,.4,.4,0) p1 > Gray .2 > Blur p.5 > HFlip
``sim02``                 ``sim`` with RRC scale (.2, 1)
``randcls``               RRC(S) > HFlip > ColorJitter(.4,.4,.4,0) p1 > RandAugment(n, m)
``randclsstack``          RRC(S) > HFlip > ColorJitter p1 > Gray .2 > Blur p.5 > RandAugment(n, m)
``cifar_regular``         [fit to SxS] > RandomCrop(S, pad S/8) > HFlip > AutoAugment(CIFAR10) > Cutout(1, S/2)
``sim_cifar``             RRC(S, .2-1) > HFlip > ColorJitter(.4,.4,.4,.1) p.8 > Gray .2 > Blur p.5
``aug_cifar``             ``sim_cifar`` with Blur p.2 (GPaCo CIFAR-LT)
``crop_flip``               RRC(S) > HFlip (ResLT iNaturalist)
``cifar_crop_flip``         [fit to SxS] > RandomCrop(S, pad S/8) > HFlip (ResLT, MiSLAS CIFAR)
``timm_randaug``          RRC(S, bicubic) > HFlip > RandAugment(rand-m{m}-n{n}-mstd0.5-inc1, bicubic): timm's
                          training transform as the MAE CE baseline uses it (random erasing: ``--reprob``)
``none``                  Resize(S) > CenterCrop(S)
========================  ===============================================================

Every component ends with ToTensor > Normalize(mean, std) (Cutout sits between them).
Blur is PIL's GaussianBlur with radius sigma ~ U[.1, 2] pixels, as in MoCo v2; like
the original it is not rescaled for small images.

Fast path (``regular``, ``sim``, ``sim02``, ``randcls``, ``randclsstack``): the same ops
in the same order, drawing the same random numbers from the same generators as the
original's torchvision/PIL composition, but computed on a float tensor holding 0..255
pixel values after the crop: the crop+resize is torch's uint8 antialiased bilinear
(PIL's filter; pixels within +-1), ColorJitter and Grayscale replicate PIL's
ImageEnhance/convert('L') arithmetic exactly, the blur applies PIL's 3-pass box-blur
kernel as one separable filter (rounded once instead of per pass), and RandAugment still
runs on a PIL image. ``TwoViews`` converts the decoded image once for both views.
tests/test_pipeline_stats.py checks the outputs against the original composition.
"""
from __future__ import annotations

import math
import random
from functools import lru_cache
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter, ImageOps
from torch import Tensor
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

__all__ = [
    "NORMALIZATION", "TWO_VIEW_STRATEGIES", "SINGLE_VIEW_STRATEGIES", "build_train_transform",
    "build_eval_transform", "Pipeline", "TwoViews", "PILGaussianBlur", "Cutout", "RA_FILL",
]

# (mean, std) per dataset family (docs/method.md#data-and-augmentation). MNIST: the
# standard full-MNIST values (the 5,000-digit demo subset measures 0.1313 / 0.3086),
# replicated over RGB.
NORMALIZATION: Dict[str, Tuple[Tuple[float, ...], Tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inat": ((0.466, 0.471, 0.380), (0.195, 0.194, 0.192)),
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "mnist": ((0.1307,) * 3, (0.3081,) * 3),
}

# RandAugment fill: the ImageNet mean in 0..255, used by the original for every dataset.
RA_FILL = (124, 116, 104)

# name -> (view1 component, view2 component)
TWO_VIEW_STRATEGIES: Dict[str, Tuple[str, str]] = {
    "sim_sim": ("sim", "sim"),
    "randcls_sim": ("randcls", "sim"),
    "randclsstack_sim": ("randclsstack", "sim"),
    "randclsstack_sim02": ("randclsstack", "sim02"),
    "randcls_randclsstack": ("randcls", "randclsstack"),
    "regular_regular": ("regular", "mocov2"),  # sic: the original's second view is MoCo v2
    "mocov2_mocov2": ("mocov2", "mocov2"),
    "cifar100": ("cifar_regular", "sim_cifar"),  # PaCo CIFAR
    "sim_cifar_sim_cifar": ("sim_cifar", "sim_cifar"),  # GPaCo full CIFAR-100 (imb 1.0)
    "regular_aug_cifar": ("cifar_regular", "aug_cifar"),  # GPaCo CIFAR-LT (imb != 1)
    "digits_digits": ("digits", "digits"),  # the MNIST-LT demo
    "randclsgray_randclsgray": ("randclsgray", "randclsgray"),  # ResCom
    "cifar_regular_cifar_regular": ("cifar_regular", "cifar_regular"),  # ResCom CIFAR
}
SINGLE_VIEW_STRATEGIES: Tuple[str, ...] = (
    "randcls", "randclsstack", "randclsgray", "regular", "sim", "sim02", "mocov2",
    "cifar_regular", "sim_cifar", "aug_cifar", "digits", "timm_randaug", "none",
    "crop_flip", "cifar_crop_flip",
)


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


class Pipeline(T.Compose):
    """A single-view transform, ``PIL -> [3, S, S]``. ``num_views`` = 1.

    ``draft_size`` (eval only) tells :class:`~gpaco.data.splits.SplitDataset` that a
    JPEG may be decoded at reduced size as long as both sides stay >= it.
    """

    num_views = 1

    def __init__(self, ops: Sequence[Callable], image_size: int, draft_size: Optional[int] = None) -> None:
        super().__init__(list(ops))
        self.image_size = image_size
        self.draft_size = draft_size
        # True when the first op also takes a uint8 [3, H, W] tensor (TwoViews then
        # converts the decoded image once for both views).
        self.accepts_uint8 = bool(self.transforms) and isinstance(self.transforms[0], _RandomResizedCrop)


class TwoViews:
    """``img -> [view1(img), view2(img)]``: two augmentations of one decoded image."""

    num_views = 2
    draft_size = None

    def __init__(self, view1: Callable, view2: Callable, image_size: int) -> None:
        self.view1 = view1
        self.view2 = view2
        self.image_size = image_size
        # Both views start with the tensor-path crop: convert the decoded image once.
        self._share = all(getattr(v, "accepts_uint8", False) for v in (view1, view2))

    def __call__(self, img: Image.Image) -> List[Tensor]:
        if self._share and isinstance(img, Image.Image) and img.mode == "RGB":
            img = _pil_to_uint8(img)
        return [self.view1(img), self.view2(img)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(\nview1={self.view1},\nview2={self.view2})"


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


def _color_jitter(hue: float, p: float) -> Callable:
    jitter = T.ColorJitter(0.4, 0.4, 0.4, hue)
    return jitter if p >= 1.0 else T.RandomApply([jitter], p=p)


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


def _component(name: str, size: int, randaug_n: int, randaug_m: int,
               mean: Sequence[float] = NORMALIZATION["imagenet"][0]) -> List[Callable]:
    """The PIL-stage ops of one component (before ToTensor)."""
    blur = T.RandomApply([PILGaussianBlur()], p=0.5)
    gray = T.RandomGrayscale(p=0.2)
    flip = T.RandomHorizontalFlip()
    if name == "mocov2":
        return [T.RandomResizedCrop(size, scale=(0.2, 1.0)), _color_jitter(0.1, 0.8), gray, blur, flip]
    # The ImageNet components run on the tensor fast path (see the module docstring), with
    # the original's op order and random draws (its ColorJitter sits in RandomApply p=1).
    fast_jitter = T.RandomApply([_ColorJitter(0.4, 0.4, 0.4, 0.0)], p=1.0)
    fast_gray, fast_flip = _RandomGrayscale(p=0.2), _RandomHorizontalFlip()
    if name == "regular":
        return [_RandomResizedCrop(size), fast_flip, _ColorJitter(0.4, 0.4, 0.4, 0.0)]
    if name in ("sim", "sim02"):
        scale = (0.2, 1.0) if name == "sim02" else (0.08, 1.0)
        return [_RandomResizedCrop(size, scale=scale), fast_jitter, fast_gray, blur, fast_flip]
    if name == "randcls":
        return [_RandomResizedCrop(size), fast_flip, fast_jitter, _ToPIL(),
                _rand_augment(size, randaug_n, randaug_m)]
    if name == "randclsstack":
        return [_RandomResizedCrop(size), fast_flip, fast_jitter, fast_gray, blur, _ToPIL(),
                _rand_augment(size, randaug_n, randaug_m)]
    if name == "randclsgray":  # ResCom: randclsstack without the blur
        return [_RandomResizedCrop(size), fast_flip, fast_jitter, fast_gray, _ToPIL(),
                _rand_augment(size, randaug_n, randaug_m)]
    if name == "crop_flip":
        return [_RandomResizedCrop(size), fast_flip]
    if name == "cifar_crop_flip":
        return [_FitSquare(size), T.RandomCrop(size, padding=max(1, size // 8)), flip]
    if name == "cifar_regular":
        # torchvision's CIFAR10 AutoAugment policy has the same sub-policies and magnitude
        # bins as the original's CIFAR10Policy. Differences: gray fill 128 is passed to
        # match the original, but resampling is nearest for all geometric ops (the
        # original shears bicubic) and solarize thresholds are on a 255, not 256, grid.
        policy = T.AutoAugment(T.AutoAugmentPolicy.CIFAR10, fill=[128, 128, 128])
        return [_FitSquare(size), T.RandomCrop(size, padding=max(1, size // 8)), flip, policy]
    if name in ("sim_cifar", "aug_cifar"):
        blur_p = 0.2 if name == "aug_cifar" else 0.5
        return [T.RandomResizedCrop(size, scale=(0.2, 1.0)), flip, _color_jitter(0.1, 0.8), gray,
                T.RandomApply([PILGaussianBlur()], p=blur_p)]
    if name == "digits":
        # Demo strategy for small grayscale digits: mild crops and rotations, no flip
        # (a mirrored 2 or 7 is not a digit).
        return [T.RandomResizedCrop(size, scale=(0.6, 1.0), ratio=(0.85, 1.18)), T.RandomRotation(10)]
    if name == "timm_randaug":
        # MAE fine-tuning's timm create_transform(is_training=True, auto_augment='rand-m9-mstd0.5-inc1',
        # interpolation='bicubic'): no color jitter; random erasing is applied per image on the
        # normalised batch by the training loop (--reprob).
        from PIL import Image as PILImage
        from timm.data.auto_augment import rand_augment_transform

        hparams = dict(translate_const=int(size * 0.45), img_mean=tuple(min(255, round(255 * x)) for x in mean),
                       interpolation=PILImage.BICUBIC)
        ra = _zero_bit_posterize(rand_augment_transform(f"rand-m{randaug_m}-n{randaug_n}-mstd0.5-inc1", hparams))
        return [T.RandomResizedCrop(size, interpolation=InterpolationMode.BICUBIC), flip, ra]
    if name == "none":
        return [T.Resize(size), T.CenterCrop(size)]
    raise AssertionError(f"internal: unknown component {name!r}")


def _pipeline(name: str, size: int, mean, std, randaug_n: int, randaug_m: int) -> Pipeline:
    ops = _component(name, size, randaug_n, randaug_m, mean) + [_ToTensor()]
    if name == "cifar_regular":
        ops.append(Cutout(max(1, size // 2)))  # 16 px at 32: one hole, on [0, 1] pixels
    ops.append(T.Normalize(mean, std, inplace=True))  # its input is always a fresh tensor
    return Pipeline(ops, size)


def build_train_transform(
    aug: str,
    *,
    image_size: int = 224,
    mean: Sequence[float],
    std: Sequence[float],
    randaug_n: int = 2,
    randaug_m: int = 10,
) -> Union[Pipeline, TwoViews]:
    """Training transform for the ``--aug`` strategy ``aug``.

    Args:
        aug: a name from :data:`TWO_VIEW_STRATEGIES` (returns ``[view1, view2]``, each
            [3, S, S]) or :data:`SINGLE_VIEW_STRATEGIES` (returns one [3, S, S]).
        image_size: output side ``S``; crops, padding and Cutout scale with it.
        mean, std: Normalize statistics, e.g. ``NORMALIZATION['imagenet']``.
        randaug_n, randaug_m: RandAugment ops per image and magnitude (0..10).
    Raises:
        ValueError: unknown ``aug`` (the message lists the valid names).
    """
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if aug in TWO_VIEW_STRATEGIES:
        v1, v2 = TWO_VIEW_STRATEGIES[aug]
        return TwoViews(
            _pipeline(v1, image_size, mean, std, randaug_n, randaug_m),
            _pipeline(v2, image_size, mean, std, randaug_n, randaug_m),
            image_size,
        )
    if aug in SINGLE_VIEW_STRATEGIES:
        return _pipeline(aug, image_size, mean, std, randaug_n, randaug_m)
    raise ValueError(
        f"unknown --aug {aug!r}; two-view strategies: {', '.join(TWO_VIEW_STRATEGIES)}; "
        f"single-view: {', '.join(SINGLE_VIEW_STRATEGIES)}"
    )


_INTERPOLATIONS = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}


def build_eval_transform(
    image_size: int = 224,
    *,
    resize_size: Optional[int] = None,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bilinear",
    reduced_decode: bool = False,
) -> Pipeline:
    """Deterministic eval transform: Resize(shorter side) > CenterCrop > ToTensor > Normalize.

    ``resize_size`` defaults to ``int(image_size / 0.875)`` (256 for 224). CIFAR-sized
    (``image_size <= 32`` and ``resize_size == image_size``): ToTensor > Normalize only
    for SxS input, as the original; other inputs are first resized and center-cropped to S. ``interpolation``: bilinear (ResNets) or bicubic
    (the MAE ViTs). ``reduced_decode=True`` exposes ``draft_size = resize_size``: a JPEG is
    then decoded at reduced size (faster, different pixels; :class:`~gpaco.data.splits.SplitDataset`);
    by default images are decoded in full, as every other evaluation does.
    """
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {interpolation!r}")
    if resize_size is None:
        resize_size = int(image_size / 0.875)
    if resize_size < image_size:
        raise ValueError(f"resize_size ({resize_size}) must be >= image_size ({image_size})")
    if image_size <= 32 and resize_size == image_size:
        # CIFAR: a no-op fit for SxS input, then ToTensor > Normalize; other small inputs
        # (28x28 digits at S=32) are resized so eval tensors match the train size.
        return Pipeline([_FitSquare(image_size), T.ToTensor(), T.Normalize(mean, std)], image_size)
    ops = [
        T.Resize(resize_size, interpolation=_INTERPOLATIONS[interpolation]),
        T.CenterCrop(image_size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ]
    return Pipeline(ops, image_size, draft_size=resize_size if reduced_decode else None)
