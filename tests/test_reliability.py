"""Fault injection: preemption signals, SIGKILL mid-save, resume equivalence, a dying rank,
non-finite losses, an unwritable or full output folder, bad images, determinism.

Every training run here is the CPU MNIST-LT demo (resnet8, 32 px, 235 train images,
7 steps per epoch). ``GPACO_FAULT_INJECT`` (test-only, gpaco/engine/preemption.py) places
a fault at an exact micro-batch; the external-signal tests send real signals to a
``tools/train.py`` process.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gpaco.data import DataError, SplitDataset
from gpaco.classification import train as trainer
from gpaco.checkpoint import CheckpointError, load_checkpoint
from gpaco.engine.lifecycle import NonFiniteLossError
from gpaco.engine.preemption import FAULT_ENV, FaultInjector

from conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "tools" / "train.py")


def run_args(data, out, *extra):
    """PaCo (momentum encoder, shuffle-BN draws from the global RNG) with random erasing: a
    resume that restored the wrong RNG state or re-ran an augmentation would show."""
    return [
        "--data-root", str(data), "--train-list", str(data / "train_small.txt"), "--val-list",
        str(data / "val_small.txt"), "--test-list", str(data / "test_small.txt"), "--arch", "resnet8",
        "--image-size", "32", "--resize-size", "32", "--norm", "mnist", "--batch-size", "32", "--lr", "0.05",
        "--warmup-epochs", "1", "--print-freq", "0", "--method", "paco", "--aug", "sim_sim", "--queue-size", "64",
        "--reprob", "0.5", "--epochs", "2", "--seed", "3", "--output-dir", str(out), *extra,
    ]


def ce_args(data, out, *extra):
    return [
        "--data-root", str(data), "--train-list", str(data / "train_small.txt"), "--test-list",
        str(data / "test_small.txt"), "--arch", "resnet8", "--image-size", "32", "--resize-size", "32", "--norm",
        "mnist", "--batch-size", "32", "--lr", "0.05", "--warmup-epochs", "1", "--workers", "0", "--print-freq", "0",
        "--method", "ce", "--aug", "none", "--epochs", "2", "--output-dir", str(out), *extra,
    ]


def assert_same_run(a_dir: Path, b_dir: Path) -> None:
    """Same final weights (BN statistics and queue included), optimizer state and metrics."""
    a = torch.load(a_dir / "checkpoint.pth", weights_only=True)
    b = torch.load(b_dir / "checkpoint.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] and a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert json.loads((a_dir / "metrics.json").read_text()) == json.loads((b_dir / "metrics.json").read_text())
    la = [json.loads(x) for x in (a_dir / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (b_dir / "log.jsonl").read_text().splitlines()]
    drop = ("train_time_s", "train_images_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in la] == \
           [{k: v for k, v in r.items() if k not in drop} for r in lb]


@pytest.fixture(scope="module")
def straight(demo_data, tmp_path_factory):
    """The uninterrupted reference run (--workers 1: per-sample seeds make it equal to --workers 0)."""
    out = tmp_path_factory.mktemp("straight")
    trainer.main(run_args(demo_data, out, "--workers", "1"))
    return out


# ------------------------------------------------------------------ preemption and resume


def test_fault_injector_spec():
    f = FaultInjector("rank1_step3, nan_step5,rank0_sigterm_step7", rank=1)
    assert f.faults == {3: "raise", 5: "nan"}
    with pytest.raises(ValueError, match="cannot parse 'oops'"):
        FaultInjector("oops", rank=0)


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_is_exact(demo_data, straight, tmp_path, monkeypatch):
    """SIGTERM at micro-batch 4 of epoch 1: the step finishes, a checkpoint with the step, the
    partial-epoch sums and the RNG states is written, exit 0; --resume auto ends bit-identical."""
    out = tmp_path / "run"
    monkeypatch.setenv(FAULT_ENV, "sigterm_step4")
    before = signal.getsignal(signal.SIGTERM)
    result = trainer.main(run_args(demo_data, out, "--workers", "1"))
    assert result == {"preempted": True, "signal": "SIGTERM", "epoch": 0, "step": 4}
    assert signal.getsignal(signal.SIGTERM) is before  # handler restored
    ckpt = load_checkpoint(out / "checkpoint.pth")
    assert (ckpt["epoch"], ckpt["step"], len(ckpt["rng_per_rank"])) == (0, 4, 1)
    assert not (out / "metrics.json").exists() and not (out / "log.jsonl").read_text()
    monkeypatch.delenv(FAULT_ENV)
    trainer.main(run_args(demo_data, out, "--workers", "0", "--resume", "auto"))  # worker count may change
    assert_same_run(straight, out)


@pytest.mark.slow
def test_external_sigusr1_then_resume_is_exact(demo_data, straight, tmp_path):
    """A real SIGUSR1 sent to tools/train.py wherever it is: exit 0, one line, exact resume."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, TRAIN, *run_args(demo_data, out, "--workers", "1", "--print-freq", "1")],
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("[epoch 1][2/"):
            proc.send_signal(signal.SIGUSR1)
            break
    rest, err = proc.communicate(timeout=120)
    lines += rest.splitlines(keepends=True)
    assert proc.returncode == 0, "".join(lines)[-2000:] + err[-2000:]
    assert lines[-1].startswith("preempted (SIGUSR1): checkpoint saved at epoch ") and "--resume auto" in lines[-1]
    assert "Traceback" not in err
    ckpt = load_checkpoint(out / "checkpoint.pth")
    assert ckpt["step"] > 0 or ckpt["epoch"] > 0
    trainer.main(run_args(demo_data, out, "--workers", "1", "--resume", "auto"))
    assert_same_run(straight, out)


KILL_IN_SAVE = """
import io, os, signal, sys
import torch
real_save = torch.save
def save_then_die(obj, f, *a, **k):
    # the epoch-2 checkpoint: write half of it to the temporary file, then SIGKILL ourselves
    if isinstance(obj, dict) and obj.get("epoch") == 2 and "optimizer" in obj:
        buf = io.BytesIO()
        real_save(obj, buf, *a, **k)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *a, **k)
torch.save = save_then_die
from gpaco.classification.train import cli
cli(sys.argv[1:])
"""


@pytest.mark.slow
def test_sigkill_during_save_keeps_last_checkpoint(demo_data, straight, tmp_path):
    """SIGKILL halfway through writing a checkpoint: the previous checkpoint.pth is intact and
    loads, the half-written temporary file never replaces it, and the resumed run is exact."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", KILL_IN_SAVE, *run_args(demo_data, out, "--workers", "1")],
                          env=subprocess_env(), capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    stale = list(out.glob(".checkpoint.pth.*.tmp"))
    assert len(stale) == 1 and stale[0].stat().st_size > 0
    ckpt = load_checkpoint(out / "checkpoint.pth")
    assert (ckpt["epoch"], ckpt["step"]) == (1, 0)
    trainer.main(run_args(demo_data, out, "--workers", "1", "--resume", "auto"))
    assert not list(out.glob(".*.tmp"))  # the dead writer's temporary file was removed
    assert_same_run(straight, out)


# ------------------------------------------------------------------ torchrun: preemption, a dying rank


def torchrun(*argv, timeout=240, **extra_env):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", TRAIN, *argv]
    t0 = time.time()
    proc = subprocess.run(cmd, env=subprocess_env(**extra_env), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)
    return proc, time.time() - t0


def torchrun_once_more_on_abort(*argv, **extra_env) -> subprocess.CompletedProcess:
    """:func:`torchrun` that runs again once when a worker died of SIGABRT. Known flake, not
    understood yet: on 2026-12-07 one of about twenty full-suite runs had rank 1 of the resume
    below abort in native code (Python's fatal-error dump showed no Python frame); the same test
    passed in every other run, three at once included. The abort's first lines are reported as a
    warning, so the flake stays visible in the test summary; every assertion still holds on the run
    that follows (a run that had finished resumes as finished)."""
    proc, _ = torchrun(*argv, **extra_env)
    if proc.returncode != 0 and "(SIGABRT)" in proc.stderr:
        fatal = [ln for ln in proc.stderr.splitlines()
                 if re.search(r"Fatal Python error|terminate called|what\(\)|Current thread|Thread 0x", ln)]
        warnings.warn("a torchrun worker aborted (SIGABRT); running it once more. Its fatal-error lines:\n"
                      + "\n".join(fatal[:12]))
        proc, _ = torchrun(*argv, **extra_env)
    return proc


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_preempt_mid_epoch_then_resume_is_exact(demo_data, tmp_path):
    """Rank 0 alone gets SIGTERM at micro-batch 3: both ranks agree to stop after that step,
    every rank's RNG state goes into the checkpoint, both exit 0; the resumed run equals the
    uninterrupted one."""
    straight_out, out = tmp_path / "straight", tmp_path / "run"
    proc = torchrun_once_more_on_abort(*run_args(demo_data, straight_out, "--workers", "0"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc, _ = torchrun(*run_args(demo_data, out, "--workers", "0"), **{FAULT_ENV: "rank0_sigterm_step3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "preempted (SIGTERM): checkpoint saved at epoch 1 step 3/7" in proc.stdout
    ckpt = load_checkpoint(out / "checkpoint.pth")
    assert (ckpt["epoch"], ckpt["step"], ckpt["world_size"], len(ckpt["rng_per_rank"])) == (0, 3, 2, 2)
    assert not torch.equal(ckpt["rng_per_rank"][0]["torch"], ckpt["rng_per_rank"][1]["torch"])
    proc = torchrun_once_more_on_abort(*run_args(demo_data, out, "--workers", "0", "--resume", "auto"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(straight_out, out)


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_dying_rank_fails_fast_with_its_error(demo_data, tmp_path):
    proc, elapsed = torchrun(*ce_args(demo_data, tmp_path / "run", "--dist-timeout", "30", "--epochs", "3"),
                             **{FAULT_ENV: "rank1_step3"})
    assert proc.returncode != 0
    assert elapsed < 60, elapsed  # bounded: no hang until the collective timeout
    assert "[rank 1] error: InjectedFault: injected fault" in proc.stderr
    assert "rank 1 at step 3" in proc.stderr
    # torchrun's summary names rank 1 as the root cause
    assert re.search(r"Root Cause.*?rank\s*: 1 .*?InjectedFault", proc.stderr, re.S), proc.stderr[-3000:]


# ------------------------------------------------------------------ non-finite loss


def test_nan_stop_names_the_step_and_keeps_the_checkpoint(demo_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    monkeypatch.setenv(FAULT_ENV, "nan_step10")  # epoch 2, micro-batch 3
    with pytest.raises(SystemExit) as exc:
        trainer.cli(ce_args(demo_data, out))
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: loss is nan at epoch 2 step 3/7 (global step 10)"), err
    assert load_checkpoint(out / "checkpoint.pth")["epoch"] == 1  # the last good one
    monkeypatch.setenv(FAULT_ENV, "nan_step3")
    with pytest.raises(NonFiniteLossError, match="epoch 1 step 3/7"):
        trainer.main(ce_args(demo_data, tmp_path / "first_epoch"))


def test_nan_skip_counts_in_the_log(demo_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv(FAULT_ENV, "nan_step3,nan_step4,nan_step12")
    result = trainer.main(ce_args(demo_data, out, "--nan-policy", "skip"))
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["nan_skipped"] for r in log] == [2, 1]
    assert all(np.isfinite(r["train_loss"]) for r in log) and result["num_samples"] > 0
    model = load_checkpoint(out / "checkpoint.pth")["model"]
    assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point())


# ------------------------------------------------------------------ output folder


def test_unwritable_output_is_refused_before_training(demo_data, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as exc:
        trainer.cli(ce_args(demo_data, blocker / "run"))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: output directory ") and "is not writable" in err[0]


def test_disk_full_at_save_keeps_previous_checkpoint(demo_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_save = torch.save
    saves = []

    def full_disk(obj, f, *a, **k):
        saves.append(obj.get("epoch"))
        if obj.get("epoch") == 2:
            f.write(b"partial")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"No space left on device.*the previous one is intact"):
        trainer.main(ce_args(demo_data, out))
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(out / "checkpoint.pth")["epoch"] == 1
    assert not list(out.glob(".*.tmp"))


# ------------------------------------------------------------------ determinism


def test_deterministic_cpu_runs_are_bit_identical(demo_data, tmp_path):
    for name in ("a", "b"):
        trainer.main(ce_args(demo_data, tmp_path / name, "--deterministic", "--epochs", "1", "--seed", "5"))
    a = torch.load(tmp_path / "a" / "checkpoint.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pth", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "metrics.json").read_bytes() == (tmp_path / "b" / "metrics.json").read_bytes()


def test_augmentation_does_not_depend_on_worker_count(demo_data):
    from gpaco.data.build import set_train_epoch, train_loader
    from gpaco.data.transforms import NORMALIZATION, build_train_transform

    mean, std = NORMALIZATION["mnist"]
    ds = SplitDataset(demo_data / "train_small.txt", demo_data, build_train_transform("sim_sim", image_size=32,
                                                                                       mean=mean, std=std))
    batches = []
    for workers, start in ((0, 0), (1, 0), (0, 2)):
        dl = train_loader(ds, batch_size=16, workers=workers, rank=0, world_size=1, seed=7, pin_memory=False)
        set_train_epoch(dl, 3, start)
        torch.manual_seed(workers)  # the global RNG does not matter
        batches.append([b for b in dl][:4])
    full, with_worker, resumed = batches
    for x, y in zip(full, with_worker):
        assert all(torch.equal(u, v) for u, v in zip(x[0], y[0])) and torch.equal(x[1], y[1])
    for x, y in zip(full[2:], resumed):  # starting at batch 2 re-creates batches 2, 3, ...
        assert all(torch.equal(u, v) for u, v in zip(x[0], y[0])) and torch.equal(x[1], y[1])


# ------------------------------------------------------------------ bad images


def _image_dir(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    lines = []
    for i in range(4):
        name = f"img/{i}.jpg" if i % 2 == 0 else f"img/{i}.png"
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(tmp_path / name)
        lines.append(f"{name} {i % 2}")
    jpg = (tmp_path / "img/0.jpg").read_bytes()
    (tmp_path / "img/truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    png = bytearray((tmp_path / "img/1.png").read_bytes())
    idat = png.find(b"IDAT")
    length = int.from_bytes(png[idat - 4:idat], "big")
    png[idat + 4 + length] ^= 0xFF  # the IDAT CRC only: PIL alone would decode this silently
    (tmp_path / "img/bad_crc.png").write_bytes(bytes(png))
    (tmp_path / "img/empty.jpg").write_bytes(b"")
    lines += ["img/truncated.jpg 1", "img/bad_crc.png 0", "img/empty.jpg 1"]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "list.txt"


@pytest.mark.parametrize("index, name, why", [(4, "truncated.jpg", "(?i)truncated|broken data stream"),
                                              (5, "bad_crc.png", "bad CRC in PNG chunk 'IDAT'"),
                                              (6, "empty.jpg", "empty file")])
def test_bad_image_error_names_the_file(tmp_path, index, name, why):
    ds = SplitDataset(_image_dir(tmp_path), tmp_path)
    with pytest.raises(DataError, match=why) as exc:
        ds[index]
    assert name in str(exc.value) and f"list.txt:{index + 1}" in str(exc.value)


def test_skip_bad_images_skips_and_counts(tmp_path):
    ds = SplitDataset(_image_dir(tmp_path), tmp_path, skip_bad_images=True)
    labels = [ds[i][1] for i in range(len(ds))]
    assert ds.num_skipped == 3 + 2 + 1  # 4, 5, 6 all wrap to sample 0
    assert labels[4:] == [ds.targets[0]] * 3


def _corrupt_demo_list(demo_data, tmp_path):
    bad = tmp_path / "img" / "bad.png"
    bad.parent.mkdir()
    first = (demo_data / "train_small.txt").read_text().splitlines()[0].split()[0]
    data = bytearray((demo_data / first).read_bytes())
    data[-5] ^= 0xFF  # IEND's CRC
    bad.write_bytes(bytes(data))
    lst = tmp_path / "train_bad.txt"
    lst.write_text(f"{bad} 0\n" + (demo_data / "train_small.txt").read_text())
    return lst


@pytest.mark.parametrize("workers", [0, 1])
def test_skip_bad_images_in_training_counts_in_the_log(demo_data, tmp_path, workers):
    lst = _corrupt_demo_list(demo_data, tmp_path)
    out = tmp_path / "run"
    r = trainer.main(ce_args(demo_data, out, "--train-list", str(lst), "--allow-outside-root",
                             "--skip-bad-images", "--epochs", "1", "--workers", str(workers)))
    assert r["num_samples"] > 0
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    # the bad image (sample 0) is in epoch 0's order (seed 0); workers fork and share the count
    assert log[0]["skipped_images"] == 1


@pytest.mark.slow
def test_tools_train_prints_one_error_line(demo_data, tmp_path, capsys):
    """A corrupt image read in a DataLoader worker, and a split line outside the data root:
    tools/train.py prints one `error: ...` line (naming the file) and exits 2, no traceback.
    The worker's error goes through the real script; the other two through its ``cli`` in this
    process (the same error contract, without an interpreter start-up each)."""
    lst = _corrupt_demo_list(demo_data, tmp_path)
    extra = ["--train-list", str(lst), "--allow-outside-root", "--workers", "1"]
    proc = subprocess.run([sys.executable, TRAIN, *ce_args(demo_data, tmp_path / "run", *extra)],
                          env=subprocess_env(), capture_output=True, text=True, timeout=120, cwd=ROOT)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and err[0].startswith("error: "), proc.stderr[-3000:]
    assert re.search(r"bad\.png: cannot read image", err[0]), err[0]
    capsys.readouterr()
    for extra, pattern in ((["--train-list", str(lst)], r"train_bad\.txt:1: absolute path .* refused"),
                           (["--epochs", "0"], r"--epochs must be > 0")):
        with pytest.raises(SystemExit) as e:
            trainer.cli(ce_args(demo_data, tmp_path / "run", *extra))
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
        assert re.search(pattern, err[0]), err[0]


@pytest.mark.slow
def test_a_resume_that_would_change_the_run_is_refused(demo_data, tmp_path, monkeypatch, capsys):
    """Mid-epoch, another --batch-size would skip or repeat images; an edited train list changes
    the prior and the order: both are one error line naming the cause, and nothing is written.
    An allowed resume says the best val top-1 that best.pth holds (not -1.00)."""
    out = tmp_path / "run"
    monkeypatch.setenv(FAULT_ENV, "sigterm_step10")  # epoch 2, micro-batch 3
    assert trainer.main(ce_args(demo_data, out, "--val-list", str(demo_data / "val_small.txt")))["preempted"]
    monkeypatch.delenv(FAULT_ENV)
    args_yaml = (out / "args.yaml").read_text()
    with pytest.raises(SystemExit, match=r"--resume: --batch-size 32 -> 16 in the middle of epoch 2 \(.* stopped "
                                         r"after 3 batches of 32\).*resume with --batch-size 32"):
        trainer.main(ce_args(demo_data, out, "--val-list", str(demo_data / "val_small.txt"), "--resume", "auto",
                            "--batch-size", "16"))
    edited = tmp_path / "train_edited.txt"
    lines = (demo_data / "train_small.txt").read_text().splitlines()
    zeros = [ln for ln in lines if ln.endswith(" 0")]
    edited.write_text("\n".join(ln for ln in lines if ln not in zeros[::2]) + "\n")  # half of digit 0 gone
    flags = ce_args(demo_data, out, "--val-list", str(demo_data / "val_small.txt"), "--resume", "auto")
    flags[flags.index("--train-list") + 1] = str(edited)
    monkeypatch.chdir(tmp_path)  # the edited list, named as the run named its own
    with pytest.raises(SystemExit, match=r"--resume: --train-list .* change the model or the data"):
        trainer.main(flags)
    (demo_data / "train_small.txt").rename(tmp_path / "train_small.orig")
    try:
        (demo_data / "train_small.txt").write_text(edited.read_text())
        with pytest.raises(SystemExit, match=r"the training split's class counts differ from .* in 1 class\(es\) "
                                             r"\(was the train list edited\?\)"):
            trainer.main(ce_args(demo_data, out, "--val-list", str(demo_data / "val_small.txt"), "--resume", "auto"))
    finally:
        (tmp_path / "train_small.orig").replace(demo_data / "train_small.txt")
    assert (out / "args.yaml").read_text() == args_yaml  # the refused resumes wrote nothing
    capsys.readouterr()
    trainer.main(ce_args(demo_data, out, "--val-list", str(demo_data / "val_small.txt"), "--resume", "auto"))
    best = load_checkpoint(out / "best.pth")
    said = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("resumed from")]
    assert said == [f"resumed from {out / 'checkpoint.pth'}: epoch 2 step 3/7, best val top-1 "
                    f"{best['best_top1']:.2f} at epoch 1"], said
