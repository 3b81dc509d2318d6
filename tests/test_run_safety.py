"""A run that cannot be lost (issue 14): process-group signals with loader workers, best.pth
that always agrees with checkpoint.pth, a protected output folder, refused flag values that
would silently ruin a run, NaN weights never saved.

All runs are the CPU MNIST-LT demo (resnet8, 32 px, 7 steps per epoch on the small lists).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gpaco.checkpoint import load_checkpoint
from gpaco.classification import train as trainer

from conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "tools" / "train.py")
TRAIN_SEG = str(ROOT / "tools" / "train_seg.py")


def ce_args(data, out, *extra):
    return ["--data-root", str(data), "--train-list", str(data / "train_small.txt"), "--val-list",
            str(data / "val_small.txt"), "--test-list", str(data / "test_small.txt"), "--arch", "resnet8",
            "--image-size", "32", "--resize-size", "32", "--norm", "mnist", "--batch-size", "32", "--lr", "0.05",
            "--warmup-epochs", "0", "--workers", "0", "--print-freq", "0", "--method", "ce", "--aug", "digits",
            "--epochs", "2", "--output-dir", str(out), *extra]


def kill_group_when(cmd, marker: str, timeout: float = 180):
    """Run ``cmd`` as its own process group (as SLURM/scancel see a job step), send SIGTERM to
    the whole group once a stdout line starts with ``marker``; (returncode, stdout, stderr)."""
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, start_new_session=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(marker):
            os.killpg(proc.pid, signal.SIGTERM)
            break
    rest, err = proc.communicate(timeout=timeout)
    return proc.returncode, "".join(lines) + rest, err


# ------------------------------------------------------------------ 1. SIGTERM to the process group


def test_sigterm_to_process_group_with_loader_workers_checkpoints(demo_data, tmp_path):
    """scancel signals every process of the job: the loader workers ignore it, the main process
    checkpoints and exits 0 (before: the workers died first, `DataLoader worker ... killed by
    signal: Terminated`, exit 1)."""
    out = tmp_path / "run"
    rc, stdout, err = kill_group_when([sys.executable, TRAIN, *ce_args(demo_data, out, "--workers", "2",
                                                                        "--epochs", "4", "--print-freq", "1")],
                                      "[epoch 1][3/")
    assert rc == 0, err[-3000:]
    assert "Traceback" not in err and "killed by signal" not in err
    assert "preempted (SIGTERM): checkpoint saved at epoch 1 step" in stdout
    ckpt = load_checkpoint(out / "checkpoint.pth")
    assert ckpt["epoch"] == 0 and ckpt["step"] >= 3


def test_seg_sigterm_to_process_group_with_loader_workers_checkpoints(tmp_path):
    from gpaco.data.demo_seg import build_demo_scenes

    root = tmp_path / "scenes"
    build_demo_scenes(root, num_train=12, num_val=2, num_test=2, size=32)
    out = tmp_path / "run"
    cmd = [sys.executable, TRAIN_SEG, "--dataset", "demo", "--data-root", str(root), "--arch", "r18", "--method",
           "ce", "--img-scale", "32", "32", "--crop-size", "32", "32", "--batch-size", "2", "--workers", "2",
           "--print-freq", "1", "--eval-interval", "0", "--ckpt-interval", "100", "--iters", "200",
           "--output-dir", str(out)]
    rc, stdout, err = kill_group_when(cmd, "[iter 3/")
    assert rc == 0, err[-3000:]
    assert "preempted (SIGTERM): checkpoint saved at iteration" in stdout
    it = load_checkpoint(out / "checkpoint.pth")["iter"]
    assert 3 <= it < 200


# ------------------------------------------------------------------ 4, 10. flags that silently ruin a run


@pytest.mark.parametrize("value", ["-1", "0"])
def test_clip_grad_must_be_positive(value, capsys):
    """--clip-grad -1 ran gradient ascent, 0 stopped learning: both are refused."""
    with pytest.raises(SystemExit) as exc:
        trainer.cli(["--train-list", "x", "--clip-grad", value])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == (f"error: --clip-grad is the maximum gradient norm and must be > 0 "
                                               f"(leave the flag out for no clipping), got {float(value)}")


def test_default_warmup_is_shortened_for_a_short_run_but_an_explicit_one_is_checked(capsys):
    from gpaco.classification.args import parse_train_args

    args = parse_train_args(["--train-list", "x", "--epochs", "1"])
    assert args.warmup_epochs == 1
    assert "note: --warmup-epochs 1 (the default 10 shortened to fit --epochs 1" in capsys.readouterr().out
    assert parse_train_args(["--train-list", "x", "--epochs", "30"]).warmup_epochs == 10
    assert parse_train_args(["--train-list", "x", "--epochs", "3", "--schedule", "mae_cosine"]).warmup_epochs == 2
    with pytest.raises(SystemExit, match=r"--warmup-epochs \(10\) must be <= --epochs \(1\)"):
        parse_train_args(["--train-list", "x", "--epochs", "1", "--warmup-epochs", "10"])
