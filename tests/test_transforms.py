"""Augmentation strategies by name: shapes, view counts, randomness, eval determinism."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from gpaco.data import (
    NORMALIZATION,
    SINGLE_VIEW_STRATEGIES,
    TWO_VIEW_STRATEGIES,
    build_eval_transform,
    build_train_transform,
)
from gpaco.data.transforms import Cutout

MEAN, STD = NORMALIZATION["imagenet"]


def _image(w=48, h=40, seed=0):
    # smooth gradients + noise: colour/blur/crop all visibly change it
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


def _seed(s):
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def test_required_names_are_registered():
    assert set(TWO_VIEW_STRATEGIES) == {
        "sim_sim", "randcls_sim", "randclsstack_sim", "randclsstack_sim02", "randcls_randclsstack",
        "regular_regular", "mocov2_mocov2", "cifar100", "sim_cifar_sim_cifar", "regular_aug_cifar",
        "digits_digits", "randclsgray_randclsgray", "cifar_regular_cifar_regular",
        "cifar_crop_flip_cifar_autoaugment",
    }
    assert {"randcls", "regular", "sim", "cifar_regular", "none", "crop_flip", "crop_flip06"} <= set(
        SINGLE_VIEW_STRATEGIES)
    assert TWO_VIEW_STRATEGIES["regular_regular"] == ("regular", "mocov2")
    assert TWO_VIEW_STRATEGIES["cifar100"] == ("cifar_regular", "sim_cifar")
    assert TWO_VIEW_STRATEGIES["randclsgray_randclsgray"] == ("randclsgray", "randclsgray")  # ResCom


@pytest.mark.parametrize("aug", sorted(TWO_VIEW_STRATEGIES))
@pytest.mark.parametrize("size", [32, 64])
def test_two_view_strategies(aug, size):
    _seed(0)
    t = build_train_transform(aug, image_size=size, mean=MEAN, std=STD, randaug_n=2, randaug_m=10)
    assert t.num_views == 2 and t.image_size == size
    img = _image()
    views = t(img)
    assert isinstance(views, list) and len(views) == 2
    for v in views:
        assert v.shape == (3, size, size) and v.dtype == torch.float32 and torch.isfinite(v).all()
    assert not torch.equal(views[0], views[1])
    assert img.size == (48, 40) and img.mode == "RGB"  # input left untouched


@pytest.mark.parametrize("aug", sorted(SINGLE_VIEW_STRATEGIES))
def test_single_view_strategies(aug):
    _seed(0)
    t = build_train_transform(aug, image_size=32, mean=MEAN, std=STD)
    assert t.num_views == 1
    out = [t(_image()) for _ in range(2)]
    assert all(isinstance(o, torch.Tensor) and o.shape == (3, 32, 32) for o in out)
    if aug == "none":
        assert torch.equal(out[0], out[1])
    else:
        assert not torch.equal(out[0], out[1])


def test_imagenet_size_and_randaug_settings():
    _seed(1)
    t = build_train_transform("randclsstack_sim", image_size=224, mean=MEAN, std=STD, randaug_n=3, randaug_m=10)
    ra = t.view1.transforms[-3]  # ... > RandAugment > ToTensor > Normalize
    assert type(ra).__name__ == "RandAugment" and ra.num_layers == 3
    assert all(op.prob == 0.5 and op.magnitude == 10 and op.magnitude_std == 0.5 for op in ra.ops)
    assert all(op.kwargs["fillcolor"] == (124, 116, 104) for op in ra.ops)
    assert len(ra.ops) == 15 and "Posterize" in {op.name for op in ra.ops}
    v1, v2 = t(_image(300, 260))
    assert v1.shape == v2.shape == (3, 224, 224)


def _rand_augment_of(pipeline):
    return next(t for t in pipeline.transforms if type(t).__name__ == "RandAugment")


@pytest.mark.parametrize("aug,op_name,magnitude", [("timm_randaug", "PosterizeIncreasing", 10.0),
                                                   ("randcls_sim", "Posterize", 1.0)])
def test_zero_bit_posterize_gives_black_not_an_error(aug, op_name, magnitude):
    """timm asks PIL for 0 bits at these magnitudes (MAE fine-tuning's inc1 RandAugment: about 1 image
    in 1,000); Pillow 13 raises there, every Pillow before gave a black image, as we do."""
    t = build_train_transform(aug, image_size=32, mean=MEAN, std=STD, randaug_n=2, randaug_m=9)
    ra = _rand_augment_of(t if aug == "timm_randaug" else t.view1)
    op = next(o for o in ra.ops if o.name == op_name)
    op.prob, op.magnitude, op.magnitude_std = 1.0, magnitude, 0.0
    img = _image(32, 32)
    out = np.asarray(op(img))
    assert out.shape == (32, 32, 3) and not out.any()  # every bit dropped: black
    op.magnitude = 5.0  # 2 bits kept (either level map): only the two top bits survive
    assert set(np.unique(np.asarray(op(img)) & 0b00111111)) == {0}


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown --aug 'simsim'.*randcls_sim.*cifar100.*single-view: .*none"):
        build_train_transform("simsim", mean=MEAN, std=STD)


def test_cutout_zeroes_a_clipped_square():
    _seed(0)
    x = torch.ones(3, 32, 32)
    holes = [(Cutout(16)(x) == 0).all(0).sum().item() for _ in range(50)]
    assert max(holes) == 256 and 0 < min(holes) <= 256  # full 16x16 inside, clipped at borders
    assert (x == 1).all()


def test_eval_transform_deterministic_and_shapes():
    img = _image(300, 260)
    t = build_eval_transform(224, mean=MEAN, std=STD)
    assert t.draft_size is None and t.num_views == 1  # full decode unless asked
    assert build_eval_transform(224, mean=MEAN, std=STD, reduced_decode=True).draft_size == 256
    a, b = t(img), t(img)
    assert a.shape == (3, 224, 224) and torch.equal(a, b)
    bicubic = build_eval_transform(224, mean=MEAN, std=STD, interpolation="bicubic")(img)
    assert bicubic.shape == a.shape and not torch.equal(bicubic, a)
    # small sizes: demo images go through Resize/CenterCrop; CIFAR-sized is ToTensor+Normalize only
    assert build_eval_transform(28, mean=MEAN, std=STD)(_image(28, 28)).shape == (3, 28, 28)
    cmean, cstd = NORMALIZATION["cifar"]
    cifar = build_eval_transform(32, resize_size=32, mean=cmean, std=cstd)
    assert cifar.draft_size is None
    assert cifar(_image(28, 28)).shape == (3, 32, 32)  # demo digits at S=32 match the train size
    x = _image(32, 32)
    expected = (torch.from_numpy(np.array(x)).permute(2, 0, 1) / 255 - torch.tensor(cmean)[:, None, None]) / torch.tensor(
        cstd
    )[:, None, None]
    assert torch.allclose(cifar(x), expected, atol=1e-6)
    with pytest.raises(ValueError, match="interpolation"):
        build_eval_transform(224, mean=MEAN, std=STD, interpolation="lanczos3")
