"""The data of adversarial training: ``--norm none`` (pixels in [0, 1]) and the two-view "autoaug" batch
of DKL's adversarial training (``--aug cifar_crop_flip_cifar_autoaugment``: [basic view, AutoAugment view])."""
from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from gpaco.classification.args import build_train_parser, eval_data_kwargs, train_data_kwargs
from gpaco.data import NORMALIZATION, build_train_transform
from gpaco.data.build import build_eval_dataset, build_train_dataset
from gpaco.data.cifar_lt import CIFARLT
from gpaco.data.gpu_aug import build_gpu_aug
from gpaco.data.transforms import TWO_VIEW_STRATEGIES, Cutout

MEAN, STD = NORMALIZATION["none"]
PAIR = "cifar_crop_flip_cifar_autoaugment"


def _seed(s: int) -> None:
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def _image(seed: int = 0) -> Image.Image:
    """A 32x32 RGB image with structure (gradients) and noise: crops, flips and AutoAugment change it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    base = np.stack([xx * 8, yy * 8, (xx + yy) * 4], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def cifar10_root(tmp_path_factory):
    """The CIFAR-10 python pickles (cifar-10-batches-py), 20 random images per file."""
    root = tmp_path_factory.mktemp("cifar10")
    base = root / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.RandomState(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = np.repeat(np.arange(10), 2)
        with open(base / name, "wb") as f:
            pickle.dump({"data": rng.randint(0, 256, (20, 3072)).astype(np.uint8), "labels": labels.tolist()}, f)
    return root


def _flags(root, aug: str = PAIR):
    return build_train_parser().parse_args([
        "--dataset", "cifar10", "--data-root", str(root), "--imb-factor", "1", "--image-size", "32",
        "--resize-size", "32", "--norm", "none", "--aug", aug, "--num-classes", "10"])


# ----------------------------------------------------------------------------- --norm none

def test_none_is_the_identity():
    assert NORMALIZATION["none"] == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    with pytest.raises(SystemExit):
        build_train_parser().parse_args(["--norm", "unit"])  # argparse lists the choices, none among them


def test_cifar_eval_pipeline_gives_the_pixels_in_0_1(cifar10_root):
    """Eval: exactly ToTensor's output (uint8 / 255), no statistics subtracted."""
    args = _flags(cifar10_root)
    ds = build_eval_dataset(None, **eval_data_kwargs(args, num_classes=10))
    raw = CIFARLT(cifar10_root, num_classes=10, train=False)
    for i in (0, 7, 19):
        x, _ = ds[i]
        assert x.shape == (3, 32, 32) and 0.0 <= x.min() and x.max() <= 1.0
        assert torch.equal(x, TF.to_tensor(raw[i][0]))


def test_cifar_train_pipeline_stays_in_0_1(cifar10_root):
    args = _flags(cifar10_root)
    ds = build_train_dataset(**train_data_kwargs(args))
    assert len(ds) == 100
    _seed(0)
    views = torch.stack([torch.stack(ds[i][0]) for i in range(0, 100, 9)])  # [n, 2, 3, 32, 32]
    assert views.shape[1:] == (2, 3, 32, 32)
    assert views.min() >= 0.0 and views.max() <= 1.0
    assert views.min() == 0.0 and views.max() > 0.95  # padding is black, the images reach white: unscaled


def test_device_augmentation_honours_none():
    """--gpu-aug: the device half normalises with the same table ((x / 255 - 0) / 1)."""
    worker, device = build_gpu_aug("sim_sim", image_size=32, mean=MEAN, std=STD)
    _seed(0)
    views = device(default_collate([worker(_image(s)) for s in range(4)]), torch.device("cpu"))
    for v in views:
        assert v.shape == (4, 3, 32, 32) and v.min() >= 0.0 and v.max() <= 1.0 and v.max() > 0.5


# ----------------------------------------------------------------------------- the autoaug pair

def _ops(pipeline):
    return [type(t) for t in pipeline.transforms]


def test_pair_is_registered_with_its_components():
    assert TWO_VIEW_STRATEGIES[PAIR] == ("cifar_crop_flip", "cifar_autoaugment")
    pair = build_train_transform(PAIR, image_size=32, mean=MEAN, std=STD)
    basic, autoaug = pair.view1, pair.view2
    assert T.AutoAugment not in _ops(basic) and T.RandomCrop in _ops(basic)
    policy = next(t for t in autoaug.transforms if isinstance(t, T.AutoAugment))
    assert policy.policy == T.AutoAugmentPolicy.CIFAR10 and policy.fill == [128, 128, 128]
    assert Cutout not in _ops(autoaug)  # the DKL autoaug view has no Cutout...
    crop = next(t for t in autoaug.transforms if isinstance(t, T.RandomCrop))
    assert crop.size == (32, 32) and crop.padding == 4
    regular = build_train_transform("cifar_regular", image_size=32, mean=MEAN, std=STD)
    assert Cutout in _ops(regular)  # ...which the PaCo CIFAR view keeps
    single = build_train_transform("cifar_autoaugment", image_size=32, mean=MEAN, std=STD)
    assert single.num_views == 1 and _ops(single) == _ops(autoaug)


@pytest.mark.parametrize("seed", range(4))
def test_pair_is_the_basic_view_then_the_autoaugment_view(seed):
    """Under one seed the first view is the single cifar_crop_flip pipeline; the second is the
    cifar_autoaugment pipeline drawn right after it (the RNG runs on), and it differs from the first."""
    img = _image(seed)
    pair = build_train_transform(PAIR, image_size=32, mean=MEAN, std=STD)
    basic = build_train_transform("cifar_crop_flip", image_size=32, mean=MEAN, std=STD)
    autoaug = build_train_transform("cifar_autoaugment", image_size=32, mean=MEAN, std=STD)
    _seed(seed)
    v1, v2 = pair(img)
    _seed(seed)
    e1 = basic(img)
    e2 = autoaug(img)
    assert torch.equal(v1, e1) and torch.equal(v2, e2)
    assert not torch.equal(v1, v2)
    for v in (v1, v2):
        assert v.shape == (3, 32, 32) and v.min() >= 0.0 and v.max() <= 1.0


def test_autoaugment_view_is_the_basic_view_plus_autoaugment():
    """cifar_autoaugment draws its crop and flip as cifar_crop_flip does, then applies the policy:
    with one seed for both, the crops agree where the policy does nothing and differ where it acts."""
    img = _image(5)
    basic = build_train_transform("cifar_crop_flip", image_size=32, mean=MEAN, std=STD)
    autoaug = build_train_transform("cifar_autoaugment", image_size=32, mean=MEAN, std=STD)
    changed = 0
    for seed in range(12):
        _seed(seed)
        a = basic(img)
        _seed(seed)
        b = autoaug(img)
        changed += not torch.equal(a, b)
    assert 6 <= changed < 12  # CIFAR10 sub-policies apply each op with p < 1 (some leave the image as is)
