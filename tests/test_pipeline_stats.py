"""The fast two-view pipelines against the original's torchvision/PIL composition.

gpaco's ImageNet components (regular, sim, sim02, randcls, randclsstack) compute on
tensors after the crop; these tests pin that their augmentation statistics are those of
the original (``paco_lt.py``'s Compose lists, written out here): op by op with the same
random parameters, sample by sample with the same seeds, and over many samples.
"""
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T

import gpaco.data.transforms as GT
from gpaco.data import NORMALIZATION, build_train_transform

MEAN, STD = NORMALIZATION["imagenet"]
STD_T = torch.tensor(STD).view(3, 1, 1)


@pytest.fixture(scope="module")
def photos():
    data = pytest.importorskip("skimage.data")
    out = []
    for name, size in (("astronaut", (500, 375)), ("chelsea", (500, 375)), ("coffee", (375, 500)),
                       ("rocket", (500, 375)), ("immunohistochemistry", (500, 375)), ("camera", (375, 500))):
        img = Image.fromarray(getattr(data, name)()).convert("RGB")
        out.append(img.resize(size, Image.LANCZOS))
    return out


def _seed(s):
    random.seed(s)
    np.random.seed(s)  # timm's RandAugment picks its ops with numpy
    torch.manual_seed(s)


def _u8(img):
    return np.asarray(img).astype(np.int64)


def _pixels(img):
    return GT._Pixels(torch.from_numpy(np.asarray(img).transpose(2, 0, 1).astype(np.float32)))


def _pixels_u8(p):
    return p.t.numpy().transpose(1, 2, 0).astype(np.int64)


class _MocoBlur:  # moco.loader.GaussianBlur
    def __call__(self, x):
        return x.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


def _original(component, size):
    """The original's per-view list (paco_lt.py), torchvision + PIL + timm RandAugment."""
    from timm.data.auto_augment import rand_augment_transform

    ra = rand_augment_transform("rand-n2-m10-mstd0.5", dict(translate_const=int(size * 0.45), img_mean=GT.RA_FILL))
    cj = T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.0)], p=1.0)
    gray, blur = T.RandomGrayscale(p=0.2), T.RandomApply([_MocoBlur()], p=0.5)
    ops = {
        "sim": [T.RandomResizedCrop(size), cj, gray, blur, T.RandomHorizontalFlip()],
        "sim02": [T.RandomResizedCrop(size, scale=(0.2, 1.0)), cj, gray, blur, T.RandomHorizontalFlip()],
        "randcls": [T.RandomResizedCrop(size), T.RandomHorizontalFlip(), cj, ra],
        "randcls06": [T.RandomResizedCrop(size, scale=(0.6, 1.0)), T.RandomHorizontalFlip(), cj, ra],
        "randclsstack": [T.RandomResizedCrop(size), T.RandomHorizontalFlip(), cj, gray, blur, ra],
        "regular": [T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ColorJitter(0.4, 0.4, 0.4, 0.0)],
    }[component]
    return T.Compose(ops + [T.ToTensor(), T.Normalize(MEAN, STD)])


# ----------------------------------------------------------------------------- op by op

def test_color_jitter_is_pil_bit_exact(photos):
    for s in range(60):
        img = photos[s % len(photos)].resize((96, 80))
        _seed(s)
        ref = _u8(T.ColorJitter(0.4, 0.4, 0.4, 0.0)(img))
        _seed(s)
        out = _pixels_u8(GT._ColorJitter(0.4, 0.4, 0.4, 0.0)(_pixels(img)))
        assert np.array_equal(out, ref), f"seed {s}"


def test_grayscale_is_pil_bit_exact(photos):
    img = photos[0].resize((96, 80))
    ref = _u8(T.Grayscale(3)(img))
    out = _pixels_u8(GT._RandomGrayscale(p=1.0)(_pixels(img)))
    assert np.array_equal(out, ref)


def test_random_resized_crop_same_boxes_pixels_within_one_level(photos):
    diffs = []
    for s in range(40):
        img = photos[s % len(photos)]
        _seed(s)
        box_ref = T.RandomResizedCrop.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3))
        _seed(s)
        ref = _u8(T.RandomResizedCrop(112)(img))
        _seed(s)
        box = T.RandomResizedCrop.get_params(GT._pil_to_uint8(img), (0.08, 1.0), (3 / 4, 4 / 3))
        _seed(s)
        out = _pixels_u8(GT._RandomResizedCrop(112)(img))
        assert box == box_ref
        diffs.append(np.abs(out - ref))
    d = np.stack(diffs)
    assert d.max() <= 1 and (d > 0).mean() < 0.05


def test_blur_matches_pil_up_to_rounding(photos):
    img = photos[1].resize((96, 80))
    rng = random.Random(0)
    signed, absolute = [], []
    for _ in range(30):
        r = rng.uniform(0.1, 2.0)
        ref = _u8(img.filter(ImageFilter.GaussianBlur(radius=r)))
        out = GT._box_blur_3pass(_pixels(img).t, r).numpy().transpose(1, 2, 0)
        assert np.abs(out - ref).max() <= 8  # Pillow rounds after each of its 6 passes
        signed.append((out - ref).mean())
        absolute.append(np.abs(out - ref).mean())
    assert abs(np.mean(signed)) < 0.05 and np.mean(absolute) < 0.6


def test_blur_kernel_is_pillows():
    # a vertical line: each row's impulse response is Pillow's horizontal kernel (x 200)
    a = np.zeros((9, 41), np.uint8)
    a[:, 20] = 200
    for r in (0.5, 1.0, 2.0):
        ref = np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(r))).astype(float)[4]
        k = np.array(GT._pil_blur_kernel(r)) * 200
        c = len(k) // 2
        assert np.abs(ref[20 - c:21 + c] - k).max() <= 1.0


def test_to_tensor_paths_equal_torchvision(photos):
    img = photos[2].resize((64, 48))
    ref = T.ToTensor()(img)
    assert torch.equal(GT._ToTensor()(img), ref)
    assert torch.equal(GT._ToTensor()(_pixels(img)), ref)
    assert torch.equal(GT._ToTensor()(img.convert("L")), T.ToTensor()(img.convert("L")))


def test_fast_ops_fall_back_to_pil_for_pil_input(photos):
    img = photos[0].resize((64, 48))
    _seed(3)
    ref = T.ColorJitter(0.4, 0.4, 0.4, 0.0)(img)
    _seed(3)
    out = GT._ColorJitter(0.4, 0.4, 0.4, 0.0)(img)
    assert isinstance(out, Image.Image) and np.array_equal(_u8(out), _u8(ref))
    gray = img.convert("L")
    assert GT._RandomResizedCrop(32)(gray).size == (32, 32)  # non-RGB: torchvision's PIL path


# ----------------------------------------------------------------------------- whole pipelines

FAST_STRATEGIES = ("randcls_sim", "randcls_randclsstack", "sim_sim", "randclsstack_sim", "randclsstack_sim02")


@pytest.mark.parametrize("aug", FAST_STRATEGIES)
def test_pipeline_matches_original_sample_by_sample(photos, aug):
    """Same seeds -> the same random draws in the same order -> the same augmentation;
    pixels differ only by the crop's +-1 and the blur's rounding (< 1 level on average)."""
    size = 112
    ours = build_train_transform(aug, image_size=size, mean=MEAN, std=STD)
    v1, v2 = GT.TWO_VIEW_STRATEGIES[aug]
    orig = (_original(v1, size), _original(v2, size))
    for s in range(16):
        img = photos[s % len(photos)]
        _seed(s)
        a = ours(img)
        _seed(s)
        b = [orig[0](img), orig[1](img)]
        for v in range(2):
            levels = ((a[v] - b[v]).abs() * STD_T * 255).mean().item()
            assert levels < 1.5, f"{aug} seed {s} view {v + 1}: mean |diff| {levels:.2f} levels"


def test_randcls06_matches_the_original_sample_by_sample(photos):
    """GenDD's BEiT stage 2: ``randcls`` with the crop at scale .6-1 (the driver's --crop_scale 0.6),
    one view; the same draws as the torchvision/timm composition, and not ``randcls``'s crops."""
    size = 112
    ours = build_train_transform("randcls06", image_size=size, mean=MEAN, std=STD)
    wide = build_train_transform("randcls", image_size=size, mean=MEAN, std=STD)
    orig = _original("randcls06", size)
    differs = 0
    for s in range(16):
        img = photos[s % len(photos)]
        outs = []
        for t in (ours, orig, wide):
            _seed(s)
            outs.append(t(img))
        levels = ((outs[0] - outs[1]).abs() * STD_T * 255).mean().item()
        assert levels < 1.5, f"seed {s}: mean |diff| {levels:.2f} levels"
        differs += ((outs[0] - outs[2]).abs() * STD_T * 255).mean().item() > 5
    assert differs >= 12


@pytest.mark.parametrize("aug", ("randcls_sim", "randcls_randclsstack", "sim_sim"))
def test_pipeline_statistics_match_original(photos, aug):
    """Independent draws (different seeds for the two pipelines): the per-image channel
    means, standard deviations and mean |horizontal gradient| (sharpness: blur, crop
    scale) have the same average, within 4 standard errors (RandAugment's Invert and
    Solarize make per-image means vary a lot). The sample-by-sample test above is the
    sharp one; this one does not rely on the random draws lining up."""
    size, n = 64, 128
    ours = build_train_transform(aug, image_size=size, mean=MEAN, std=STD)
    v1, v2 = GT.TWO_VIEW_STRATEGIES[aug]
    orig = (_original(v1, size), _original(v2, size))

    def run(fn, seed):
        _seed(seed)
        return torch.stack([torch.stack(fn(photos[i % len(photos)])) for i in range(n)])  # [n, 2, 3, S, S]

    a = run(ours, 1)
    b = run(lambda im: [orig[0](im), orig[1](im)], 2)
    for v in range(2):
        for stat in (lambda x: x.mean((2, 3)), lambda x: x.std((2, 3)),
                     lambda x: (x[..., 1:] - x[..., :-1]).abs().mean((2, 3))):
            sa, sb = stat(a[:, v]), stat(b[:, v])  # [n, 3] per image and channel
            se = (sa.var(0) / n + sb.var(0) / n).sqrt()
            z = ((sa.mean(0) - sb.mean(0)).abs() / se).max().item()
            assert z < 4.0, (aug, v, sa.mean(0), sb.mean(0), se)


def test_two_views_convert_once_and_leave_input(photos):
    t = build_train_transform("randcls_sim", image_size=64, mean=MEAN, std=STD)
    assert t._share and t.view1.accepts_uint8 and t.view2.accepts_uint8
    img = photos[0]
    before = _u8(img)
    views = t(img)
    assert all(v.shape == (3, 64, 64) and v.dtype == torch.float32 and v.is_contiguous() for v in views)
    assert np.array_equal(_u8(img), before)
    # CIFAR-style strategies keep the PIL path throughout
    assert not build_train_transform("cifar100", image_size=32, mean=MEAN, std=STD)._share
