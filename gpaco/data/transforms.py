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
``randcls06``             ``randcls`` with RRC scale (.6, 1) (GenDD's BEiT rows, stage 2)
``randclsstack``          RRC(S) > HFlip > ColorJitter p1 > Gray .2 > Blur p.5 > RandAugment(n, m)
``cifar_regular``         [fit to SxS] > RandomCrop(S, pad S/8) > HFlip > AutoAugment(CIFAR10) > Cutout(1, S/2)
``cifar_autoaugment``     ``cifar_regular`` without Cutout (the DKL adversarial training's "autoaug" view)
``sim_cifar``             RRC(S, .2-1) > HFlip > ColorJitter(.4,.4,.4,.1) p.8 > Gray .2 > Blur p.5
``aug_cifar``             ``sim_cifar`` with Blur p.2 (GPaCo CIFAR-LT)
``crop_flip``               RRC(S) > HFlip (ResLT iNaturalist)
``crop_flip06``             ``crop_flip`` with RRC scale (.6, 1) (GenDD ImageNet stage 2 and CC3M)
``cifar_crop_flip``         [fit to SxS] > RandomCrop(S, pad S/8) > HFlip (ResLT, MiSLAS CIFAR)
``timm_randaug``          RRC(S, bicubic) > HFlip > RandAugment(rand-m{m}-n{n}-mstd0.5-inc1, bicubic): timm's
                          training transform as the MAE CE baseline uses it (random erasing: ``--reprob``)
``none``                  Resize(S) > CenterCrop(S)
========================  ===============================================================

Every component ends with ToTensor > Normalize(mean, std) (Cutout sits between them).
Blur is PIL's GaussianBlur with radius sigma ~ U[.1, 2] pixels, as in MoCo v2; like
the original it is not rescaled for small images.

The ops themselves live in :mod:`gpaco.data.pil_ops`, including the fast path of the
ImageNet components (``regular``, ``sim``, ``sim02``, ``randcls``, ``randcls06``, ``randclsstack``): the
same ops and random draws as the original's torchvision/PIL composition, computed on a
float tensor of 0..255 pixels after the crop. ``TwoViews`` converts the decoded image once
for both views.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from PIL import Image
from torch import Tensor
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from .pil_ops import (
    RA_FILL,
    Cutout,
    PILGaussianBlur,
    _ColorJitter,
    _FitSquare,
    _pil_to_uint8,
    _rand_augment,
    _RandomGrayscale,
    _RandomHorizontalFlip,
    _RandomResizedCrop,
    _ToPIL,
    _ToTensor,
    _zero_bit_posterize,
)
# Importable from here as before the ops moved (tests/test_pipeline_stats.py reaches them so).
from .pil_ops import (  # noqa: F401
    _blend_,
    _box_blur_3pass,
    _luma,
    _pil_blur_kernel,
    _Pixels,
    _pixels_to_pil,
    _posterize,
)

__all__ = [
    "NORMALIZATION", "TWO_VIEW_STRATEGIES", "SINGLE_VIEW_STRATEGIES", "build_train_transform",
    "build_eval_transform", "Pipeline", "TwoViews", "PILGaussianBlur", "Cutout", "RA_FILL",
]

# (mean, std) per dataset family (docs/method.md#data-and-augmentation). MNIST: the
# standard full-MNIST values (the 5,000-digit demo subset measures 0.1313 / 0.3086),
# replicated over RGB. "none" is the identity: pixels stay in [0, 1], where adversarial
# training measures its epsilon (TRADES / AWP / DKL feed ToTensor's output to the model).
NORMALIZATION: Dict[str, Tuple[Tuple[float, ...], Tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inat": ((0.466, 0.471, 0.380), (0.195, 0.194, 0.192)),
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    # CIFAR-100's own statistics, as mdistiller normalises (its CIFAR-100 teachers expect them)
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "mnist": ((0.1307,) * 3, (0.3081,) * 3),
    "none": ((0.0,) * 3, (1.0,) * 3),
}

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
    # DKL adversarial training's "autoaug" batch: [basic view, AutoAugment view] of each image
    "cifar_crop_flip_cifar_autoaugment": ("cifar_crop_flip", "cifar_autoaugment"),
}
SINGLE_VIEW_STRATEGIES: Tuple[str, ...] = (
    "randcls", "randcls06", "randclsstack", "randclsgray", "regular", "sim", "sim02", "mocov2",
    "cifar_regular", "sim_cifar", "aug_cifar", "digits", "timm_randaug", "none",
    "crop_flip", "crop_flip06", "cifar_crop_flip", "cifar_autoaugment",
)


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


def _color_jitter(hue: float, p: float) -> Callable:
    jitter = T.ColorJitter(0.4, 0.4, 0.4, hue)
    return jitter if p >= 1.0 else T.RandomApply([jitter], p=p)


def _component(name: str, size: int, randaug_n: int, randaug_m: int,
               mean: Sequence[float] = NORMALIZATION["imagenet"][0]) -> List[Callable]:
    """The PIL-stage ops of one component (before ToTensor)."""
    blur = T.RandomApply([PILGaussianBlur()], p=0.5)
    gray = T.RandomGrayscale(p=0.2)
    flip = T.RandomHorizontalFlip()
    if name == "mocov2":
        return [T.RandomResizedCrop(size, scale=(0.2, 1.0)), _color_jitter(0.1, 0.8), gray, blur, flip]
    # The ImageNet components run on the tensor fast path (gpaco/data/pil_ops.py), with
    # the original's op order and random draws (its ColorJitter sits in RandomApply p=1).
    fast_jitter = T.RandomApply([_ColorJitter(0.4, 0.4, 0.4, 0.0)], p=1.0)
    fast_gray, fast_flip = _RandomGrayscale(p=0.2), _RandomHorizontalFlip()
    if name == "regular":
        return [_RandomResizedCrop(size), fast_flip, _ColorJitter(0.4, 0.4, 0.4, 0.0)]
    if name in ("sim", "sim02"):
        scale = (0.2, 1.0) if name == "sim02" else (0.08, 1.0)
        return [_RandomResizedCrop(size, scale=scale), fast_jitter, fast_gray, blur, fast_flip]
    if name in ("randcls", "randcls06"):
        scale = (0.6, 1.0) if name == "randcls06" else (0.08, 1.0)
        return [_RandomResizedCrop(size, scale=scale), fast_flip, fast_jitter, _ToPIL(),
                _rand_augment(size, randaug_n, randaug_m)]
    if name == "randclsstack":
        return [_RandomResizedCrop(size), fast_flip, fast_jitter, fast_gray, blur, _ToPIL(),
                _rand_augment(size, randaug_n, randaug_m)]
    if name == "randclsgray":  # ResCom: randclsstack without the blur
        return [_RandomResizedCrop(size), fast_flip, fast_jitter, fast_gray, _ToPIL(),
                _rand_augment(size, randaug_n, randaug_m)]
    if name in ("crop_flip", "crop_flip06"):
        return [_RandomResizedCrop(size, scale=(0.6, 1.0) if name == "crop_flip06" else (0.08, 1.0)), fast_flip]
    if name == "cifar_crop_flip":
        return [_FitSquare(size), T.RandomCrop(size, padding=max(1, size // 8)), flip]
    if name in ("cifar_regular", "cifar_autoaugment"):  # the same PIL stage; cifar_regular adds Cutout
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
