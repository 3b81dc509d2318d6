"""``--gpu-aug`` (gpaco/data/gpu_aug.py) against the CPU strategies of gpaco/data/transforms.py.

The device path runs here on CPU tensors (the same code runs on CUDA tensors): op by op
against PIL/timm, view by view against the CPU path with the same seeds (the workers draw
the same parameters), over many samples, and through tools/train.py.
"""
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

import gpaco.data.gpu_aug as G
from gpaco.classification import train as trainer
from gpaco.data import NORMALIZATION, build_train_transform
from gpaco.data.gpu_aug import GPU_AUG_STRATEGIES, GpuAugViews, build_gpu_aug
from gpaco.engine.cli import run_cli

MEAN, STD = NORMALIZATION["imagenet"]
LEVELS = torch.tensor(STD).view(1, 3, 1, 1) * 255  # normalised difference -> 0..255 levels


@pytest.fixture(scope="module")
def photos():
    data = pytest.importorskip("skimage.data")
    return [Image.fromarray(getattr(data, name)()).convert("RGB").resize((500, 375), Image.LANCZOS)
            for name in ("astronaut", "chelsea", "coffee", "rocket")]


@pytest.fixture(scope="module")
def small(photos):
    img = photos[0].resize((96, 80))
    return img, torch.from_numpy(np.asarray(img).transpose(2, 0, 1).astype(np.float32))[None]


def _seed(s):
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def _u8(img):
    return np.asarray(img).astype(np.int64)


def _hwc(t):
    return t[0].numpy().transpose(1, 2, 0).astype(np.int64)


def _op(name, arg, bicubic=0.0):
    return torch.tensor([G._OP[name]]), torch.tensor([float(arg)]), torch.tensor([bicubic])


# ----------------------------------------------------------------------------- op by op

@pytest.mark.parametrize("name,arg", [
    ("AutoContrast", 0), ("Equalize", 0), ("Invert", 0), ("Posterize", 3), ("Posterize", 4), ("Solarize", 200),
    ("Solarize", 256), ("SolarizeAdd", 100), ("Color", 1.7), ("Contrast", 0.3), ("Brightness", 1.6),
    ("Sharpness", 1.8), ("Sharpness", 0.2)])
def test_table_and_blend_ops_are_pil_bit_exact(small, name, arg):
    from timm.data.auto_augment import NAME_TO_OP

    img, x = small
    args = () if name in ("AutoContrast", "Equalize", "Invert") else (arg,)
    ref = _u8(NAME_TO_OP[name](img, *args))
    op, a, _ = _op(name, arg)
    out = G._enhance(G._apply_lut(x, G._luts(x, op, a)), op, a)
    assert np.array_equal(_hwc(out), ref)


@pytest.mark.parametrize("name,arg", [("Rotate", 23.0), ("Rotate", -17.0), ("ShearX", 0.25), ("ShearY", -0.2),
                                      ("TranslateXRel", 0.4), ("TranslateYRel", -0.3)])
def test_geometric_ops_match_pil(small, name, arg):
    """PIL's inverse map, fill border and both kernels (bilinear; bicubic = the a = -1 cubic):
    pixels within one level, float32 against PIL's doubles on a few."""
    from timm.data.auto_augment import NAME_TO_OP

    img, x = small
    fill = torch.tensor(G.RA_FILL, dtype=torch.float32)
    for bicubic, resample in ((0.0, Image.BILINEAR), (1.0, Image.BICUBIC)):
        ref = _u8(NAME_TO_OP[name](img, arg, fillcolor=G.RA_FILL, resample=resample))
        d = np.abs(_hwc(G._affine(x, *_op(name, arg, bicubic), fill)) - ref)
        assert d.max() <= 1 and (d > 0).mean() < 0.05, (name, bicubic, d.max(), (d > 0).mean())


def test_ops_leave_samples_with_another_op_unchanged(small):
    _, x = small
    x2 = torch.cat([x, x.flip(-1)])
    op, arg, bic = torch.tensor([G._OP["Invert"], G._OP["Rotate"]]), torch.tensor([0.0, 10.0]), torch.zeros(2)
    lut = G._apply_lut(x2, G._luts(x2, op, arg))
    assert torch.equal(lut[0], 255 - x[0]) and torch.equal(lut[1], x2[1])
    geo = G._affine(x2, op, arg, bic, torch.tensor(G.RA_FILL, dtype=torch.float32))
    assert torch.equal(geo[0], x2[0]) and not torch.equal(geo[1], x2[1])
    assert torch.equal(G._enhance(x2, op, arg), x2)


# ----------------------------------------------------------------------------- whole views

def _both_paths(aug, photos, seeds, size):
    cpu = build_train_transform(aug, image_size=size, mean=MEAN, std=STD)
    worker, device = build_gpu_aug(aug, image_size=size, mean=MEAN, std=STD)
    a, b = [], []
    for s in seeds:
        _seed(s)
        a.append(cpu(photos[s % len(photos)]))
        _seed(s)
        b.append(worker(photos[s % len(photos)]))
    return [torch.stack([v[i] for v in a]) for i in range(2)], device(default_collate(b), torch.device("cpu"))


@pytest.mark.parametrize("aug", ("sim_sim", "randcls_randclsstack"))
def test_views_equal_cpu_path_with_the_same_seeds(photos, aug):
    """Same seeds -> the workers draw the CPU path's parameters -> the same pixels, up to a
    level on a few pixels where a geometric RandAugment op resamples."""
    cpu, dev = _both_paths(aug, photos, range(16), 96)
    for v in range(2):
        levels = ((cpu[v] - dev[v]).abs() * LEVELS).mean((1, 2, 3))
        assert levels.max() < 0.05 and (levels < 1e-3).float().mean() > 0.5, levels


@pytest.mark.parametrize("aug", ("randcls_sim", "randcls_randclsstack"))
def test_statistics_match_cpu_path(photos, aug):
    """Independent draws: per-image channel mean, std and mean |horizontal gradient| agree
    with the CPU path's within 4 standard errors (as tests/test_pipeline_stats.py)."""
    n = 128
    a, _ = _both_paths(aug, photos, range(n), 64)
    _, b = _both_paths(aug, photos, range(1000, 1000 + n), 64)
    for v in range(2):
        for stat in (lambda x: x.mean((2, 3)), lambda x: x.std((2, 3)),
                     lambda x: (x[..., 1:] - x[..., :-1]).abs().mean((2, 3))):
            sa, sb = stat(a[v]), stat(b[v])
            se = (sa.var(0) / n + sb.var(0) / n).sqrt()
            z = ((sa.mean(0) - sb.mean(0)).abs() / se).max().item()
            assert z < 4.0, (aug, v, sa.mean(0), sb.mean(0), se)


def test_device_half_reads_nothing_back(photos, monkeypatch):
    """No host read of a device value (on a GPU: a sync per step; tests/test_step_sync.py)."""
    worker, device = build_gpu_aug("randcls_randclsstack", image_size=48, mean=MEAN, std=STD)
    batch = default_collate([worker(p) for p in photos])
    reads = []
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda t, *a, _r=real, _n=name, **k: reads.append(_n) or _r(t, *a, **k))
    views = device(batch, torch.device("cpu"), channels_last=True)
    monkeypatch.undo()
    assert reads == []
    assert [v.shape for v in views] == [(4, 3, 48, 48)] * 2
    assert all(v.dtype == torch.float32 and v.is_contiguous(memory_format=torch.channels_last) for v in views)


def test_worker_output_is_uint8_crops_and_parameters(photos):
    out = GpuAugViews("randcls_sim", 32)(photos[1].convert("L"))  # grayscale input is converted
    assert [v.shape for v in out["views"]] == [(3, 32, 32)] * 2 and out["views"][0].dtype == torch.uint8
    assert [p.shape for p in out["params"]] == [(G._num_params(2),), (G._num_params(0),)]  # sim: no RandAugment


# ----------------------------------------------------------------------------- tools/train.py

def test_train_dry_run_with_gpu_aug(tmp_path, capsys):
    argv = ["--dry-run", "--arch", "resnet8", "--method", "gpaco", "--aug", "randcls_randclsstack", "--gpu-aug",
            "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "4", "--workers", "0",
            "--data-root", str(tmp_path / "absent"), "--output-dir", str(tmp_path / "run")]
    run_cli(trainer.main, argv)
    assert "dry run ok: 2 steps" in capsys.readouterr().out


def test_gpu_aug_refuses_other_strategies(tmp_path, capsys):
    argv = ["--dry-run", "--arch", "resnet8", "--method", "gpaco", "--aug", "cifar100", "--gpu-aug",
            "--epochs", "1", "--warmup-epochs", "0", "--data-root", str(tmp_path / "absent")]
    with pytest.raises(SystemExit) as e:
        run_cli(trainer.main, argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"error: --gpu-aug supports --aug {', '.join(GPU_AUG_STRATEGIES)}; got --aug cifar100" in err
    assert {"randcls_sim", "randclsstack_sim", "randcls_randclsstack", "sim_sim"} <= set(GPU_AUG_STRATEGIES)


def test_one_epoch_on_the_demo_images_is_seeded_per_sample(demo_data, tmp_path):
    """A real epoch through SplitDataset, the loader and the loop: the same loss with 0 and 2
    loader workers (each sample's parameters come from its own seed, drawn in the worker)."""
    from conftest import demo_flags

    losses = []
    for workers in ("0", "2"):
        flags = demo_flags(demo_data) + ["--method", "gpaco", "--aug", "sim_sim", "--gpu-aug", "--workers", workers,
                                         "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "64",
                                         "--queue-size", "0", "--output-dir", str(tmp_path / workers)]
        run_cli(trainer.main, flags)
        losses.append(json.loads((tmp_path / workers / "log.jsonl").read_text().splitlines()[0])["train_loss"])
    assert losses[0] == losses[1] and np.isfinite(losses[0])


def test_pipeline_bench_reports_gpu_aug_cores(tmp_path):
    """bench/pipeline_speed.py at tiny settings: a --gpu-aug cores row per strategy."""
    import subprocess
    import sys

    from conftest import ROOT, subprocess_env

    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, "bench/pipeline_speed.py", "--photos", "2", "--repeats", "1", "--size", "32",
                           "--json", str(out)], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]  # 1: a speed target missed, as tiny runs may
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    for aug in ("randcls_sim", "randcls_randclsstack", "sim_sim"):
        row = rows[f"CPU cores per GPU at 2500 img/s, {aug} --gpu-aug"]
        assert row["value"] > 0 and "device half, measured on this CPU" in row["detail"]
