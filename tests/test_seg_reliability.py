"""Segmentation on the shared run lifecycle: preemption, exact resume, --nan-policy.

The signals come from ``GPACO_FAULT_INJECT`` (test-only, gpaco/engine/preemption.py): the
process sends itself SIGTERM before iteration N's forward pass, as SLURM would.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpaco.checkpoint import load_checkpoint
from gpaco.engine.preemption import FAULT_ENV
from gpaco.segmentation import train as seg

from conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SEG = str(ROOT / "tools" / "train_seg.py")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from gpaco.data.demo_seg import build_demo_scenes

    root = tmp_path_factory.mktemp("demo_seg_rel")
    build_demo_scenes(root, num_train=12, num_val=4, num_test=4, size=32)
    return str(root)


def argv(root, out, *extra):
    return ["--dataset", "demo", "--data-root", root, "--arch", "r18", "--method", "gpaco", "--img-scale", "32",
            "32", "--crop-size", "32", "32", "--batch-size", "2", "--num-pixels", "16", "--workers",
            "0", "--print-freq", "1", "--eval-interval", "0", "--ckpt-interval", "3", "--iters", "6",
            "--test-split", "test", "--output-dir", str(out), "--resume", "auto", *extra]


def train_seg(*args, **extra_env):
    return subprocess.run([sys.executable, TRAIN_SEG, *args], env=subprocess_env(**extra_env), capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


@pytest.mark.slow
def test_sigterm_mid_run_then_resume_matches_uninterrupted(scenes, tmp_path):
    straight = seg.main(argv(scenes, tmp_path / "straight"))
    out = tmp_path / "preempted"
    proc = train_seg(*argv(scenes, out), **{FAULT_ENV: "sigterm_step4"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "preempted (SIGTERM): checkpoint saved at iteration 4/6" in proc.stdout
    ckpt = load_checkpoint(out / "checkpoint.pth")
    assert ckpt["iter"] == 4  # not the last periodic checkpoint (iteration 3)
    assert not (out / "metrics.json").exists()
    resumed = seg.main(argv(scenes, out))
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pth")
    b = load_checkpoint(out / "checkpoint.pth")
    assert a["iter"] == b["iter"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert resumed["miou"] == straight["miou"] and resumed["train_loss"] == straight["train_loss"]


@pytest.mark.slow
def test_nan_policy(scenes, tmp_path):
    proc = train_seg(*argv(scenes, tmp_path / "stop"), **{FAULT_ENV: "nan_step2"})
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: loss is nan at iteration 2/6; stopped (--nan-policy stop), the last checkpoint is kept")
    skip = train_seg(*argv(scenes, tmp_path / "skip", "--nan-policy", "skip"), **{FAULT_ENV: "nan_step2,nan_step5"})
    assert skip.returncode == 0, skip.stderr[-2000:]
    metrics = json.loads((tmp_path / "skip" / "metrics.json").read_text())
    assert metrics["nan_skipped"] == 2
    assert all(torch.isfinite(v).all() for v in load_checkpoint(tmp_path / "skip" / "checkpoint.pth")["model"].values()
               if v.is_floating_point())


def test_bad_flag_is_one_error_line(tmp_path, capsys):
    # the script itself once, then its cli in this process (the same contract, no interpreter start-up)
    proc = train_seg("--dataset", "demo", "--data-root", str(tmp_path), "--iters", "0",
                     "--output-dir", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --iters must be > 0, got 0"
    from gpaco.segmentation.train import cli

    for argv, line in ((["--method", "ce", "--alpha", "0.5", "--dry-run"],
                        "error: --alpha is an option of --method gpaco, not ce"),
                       (["--dataset", "demo", "--data-root", str(tmp_path / "absent"), "--iters", "2",
                         "--output-dir", str(tmp_path / "o")],
                        f"error: demo: --data-root {tmp_path / 'absent'} does not exist")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            cli(argv)
        assert e.value.code == 2 and capsys.readouterr().err.strip() == line
    assert not (tmp_path / "o").exists()


def test_masks_without_a_labelled_pixel_are_refused_before_training(tmp_path):
    """Training masks that are all ignore label (255) trained with loss 0 and exited 0; now one
    error line names the set and a mask, exit 2, and nothing is written."""
    import numpy as np
    from PIL import Image

    from gpaco.data.demo_seg import build_demo_scenes

    root = tmp_path / "scenes"
    build_demo_scenes(root, num_train=3, num_val=1, num_test=1, size=32)
    for mask in sorted((root / "labels" / "train").glob("*.png")):
        Image.fromarray(np.full((32, 32), 255, np.uint8)).save(mask)
    out = tmp_path / "o"
    proc = train_seg(*argv(str(root), out))
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip()
    assert "\n" not in line and line.startswith("error: ") and "none of its 3 masks" in line, line
    assert "00000.png) has a labelled pixel, only the ignore label 255" in line
    assert not out.exists()
