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
                                      "[epoch 1]")  # a progress line: the workers are running
    assert rc == 0, err[-3000:]
    assert "Traceback" not in err and "killed by signal" not in err
    assert "preempted (SIGTERM): checkpoint saved at epoch 1 step" in stdout
    ckpt = load_checkpoint(out / "checkpoint.pth")
    assert ckpt["epoch"] == 0 and ckpt["step"] >= 1


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
    assert parse_train_args(["--train-list", "x", "--epochs", "3", "--schedule", "mae_cosine"]).warmup_epochs == 1
    with pytest.raises(SystemExit, match=r"--warmup-epochs \(10\) must be <= --epochs \(1\)"):
        parse_train_args(["--train-list", "x", "--epochs", "1", "--warmup-epochs", "10"])


# ------------------------------------------------------------------ 2. best.pth agrees with checkpoint.pth


def test_foreign_best_pth_is_never_reported(demo_data, tmp_path, capsys):
    """Resuming into a folder whose best.pth came from another run: the best that checkpoint.pth
    records is either recovered (its weights are that best) or the selection restarts; the test
    result always comes from this run's weights."""
    out, other = tmp_path / "run", tmp_path / "other"
    trainer.main(ce_args(demo_data, other, "--epochs", "1", "--seed", "1"))
    trainer.main(ce_args(demo_data, out, "--epochs", "3", "--stop-after", "2"))
    ckpt = load_checkpoint(out / "checkpoint.pth")
    (out / "best.pth").write_bytes((other / "best.pth").read_bytes())
    capsys.readouterr()
    result = trainer.main(ce_args(demo_data, out, "--epochs", "3", "--resume", "auto"))
    said = capsys.readouterr().out
    best = load_checkpoint(out / "best.pth")
    assert best["run_id"] == ckpt["run_id"] == load_checkpoint(out / "checkpoint.pth")["run_id"]
    assert best["epoch"] == result["selected_epoch"]
    if ckpt["best_epoch"] == 2:  # checkpoint.pth's weights are the best: best.pth rewritten from them
        assert "belongs to another run" in said and "rewritten from" in said
    else:
        assert "belongs to another run" in said and "selection restarts" in said
        assert result["selected_epoch"] == 3


def test_missing_best_pth_on_a_finished_run_reports_clearly_once(demo_data, tmp_path, capsys):
    """best.pth deleted after the run: --resume auto does not retrain and fail on every retry;
    it repairs best.pth from checkpoint.pth or falls back to the last epoch, saying so."""
    out = tmp_path / "run"
    first = trainer.main(ce_args(demo_data, out))
    (out / "best.pth").unlink()
    capsys.readouterr()
    again = trainer.main(ce_args(demo_data, out, "--resume", "auto"))
    said = capsys.readouterr().out
    assert "best.pth is missing" in said
    if first["selected_epoch"] == 2:
        assert again["top1"] == first["top1"] and (out / "best.pth").exists()
    else:
        assert again["selected_epoch"] == 2 and "selection restarts" in said
    capsys.readouterr()
    assert trainer.main(ce_args(demo_data, out, "--resume", "auto"))["selected_epoch"] == again["selected_epoch"]
    assert "the run had finished (epoch 2 of 2); nothing to train" in capsys.readouterr().out


KILL_BETWEEN_SAVES = """
import os, signal, sys
import gpaco.engine.lifecycle as lifecycle
real = lifecycle.TrainingRun._save_or_explain
def save(state, path):
    real(state, path)
    # a new best at epoch >= 2: checkpoint.pth records it, best.pth (still the older best) is next
    if str(path).endswith("checkpoint.pth") and state["epoch"] >= 2 and state["best_epoch"] == state["epoch"]:
        os.kill(os.getpid(), signal.SIGKILL)
lifecycle.TrainingRun._save_or_explain = staticmethod(save)
from gpaco.classification.train import cli
cli(sys.argv[1:])
"""


def test_kill_between_checkpoint_and_best_saves_keeps_them_in_agreement(demo_data, tmp_path, capsys):
    """Before: metrics.json said `selected_epoch 5` and reported epoch 1's weights."""
    out = tmp_path / "run"
    argv = ce_args(demo_data, out, "--epochs", "3")
    proc = subprocess.run([sys.executable, "-c", KILL_BETWEEN_SAVES, *argv], env=subprocess_env(),
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    ckpt = load_checkpoint(out / "checkpoint.pth")
    assert ckpt["best_epoch"] == ckpt["epoch"] >= 2 and load_checkpoint(out / "best.pth")["epoch"] < ckpt["epoch"]
    capsys.readouterr()
    result = trainer.main([*argv, "--resume", "auto"])
    assert "best.pth holds epoch" in capsys.readouterr().out
    best = load_checkpoint(out / "best.pth")
    assert best["epoch"] == result["selected_epoch"] == json.loads((out / "metrics.json").read_text())["selected_epoch"]
    if best["epoch"] == ckpt["epoch"]:  # repaired from checkpoint.pth: exactly those weights
        assert all(torch.equal(best["model"][k], ckpt["model"][k]) for k in best["model"])


def test_load_best_refuses_weights_of_another_epoch(demo_data, tmp_path):
    from gpaco.checkpoint import CheckpointError, save_checkpoint
    from gpaco.engine.lifecycle import TrainingRun

    out = tmp_path / "run"
    trainer.main(ce_args(demo_data, out, "--epochs", "1"))
    best = load_checkpoint(out / "best.pth")
    save_checkpoint({**best, "epoch": 5}, out / "best.pth")
    with TrainingRun(output_dir=str(out), resume="auto") as lc:
        lc.resume_checkpoint()
        with pytest.raises(CheckpointError, match=r"best.pth holds epoch 5, not the best epoch 1"):
            lc.load_best("epoch", 1)
    save_checkpoint({**best, "epoch": 1}, out / "best.pth")
    with TrainingRun(output_dir=str(out), overwrite=True) as lc:  # a fresh run: a new run id
        assert lc.resume_checkpoint() is None
        with pytest.raises(CheckpointError, match=r"best.pth belongs to another run \(run id "):
            lc.load_best("epoch", 1)


# ------------------------------------------------------------------ 5. --nan-policy skip never saves NaN weights


def test_nan_skip_with_exploding_lr_stops_and_keeps_the_good_checkpoint(demo_data, tmp_path, capsys):
    """lr 1e3 makes the weights NaN; every later step is skipped. Before: exit 0, NaN
    checkpoint.pth and best.pth, train_loss 0.0 logged. Now: exit 1 naming the epoch, nothing
    non-finite written, the log never claims a loss for an epoch without a finite step."""
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        trainer.cli(ce_args(demo_data, out, "--lr", "1000", "--nan-policy", "skip", "--epochs", "3"))
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("the model weights became NaN/Inf" in err[0] or "every step of epoch" in err[0]), err
    for name in ("checkpoint.pth", "best.pth"):
        if (out / name).exists():
            model = load_checkpoint(out / name)["model"]
            assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point()), name
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()] if (out / "log.jsonl").exists() else []
    assert all(r["train_loss"] != 0.0 for r in log)
    assert not (out / "metrics.json").exists()


def test_every_step_skipped_stops(demo_data, tmp_path, monkeypatch):
    from gpaco.engine.lifecycle import NonFiniteLossError
    from gpaco.engine.preemption import FAULT_ENV

    monkeypatch.setenv(FAULT_ENV, ",".join(f"nan_step{i}" for i in range(8, 15)))  # all of epoch 2
    with pytest.raises(NonFiniteLossError, match=r"every step of epoch 2 \(7\) had a non-finite loss"):
        trainer.main(ce_args(demo_data, tmp_path / "run", "--nan-policy", "skip"))
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pth")["epoch"] == 1


# ------------------------------------------------------------------ 3. the output folder


def test_fresh_run_into_a_run_folder_is_refused_unless_resume_or_overwrite(demo_data, tmp_path, capsys):
    out = tmp_path / "run"
    trainer.main(ce_args(demo_data, out, "--epochs", "1"))
    before = (out / "checkpoint.pth").read_bytes()
    with pytest.raises(SystemExit) as exc:
        trainer.cli(ce_args(demo_data, out, "--epochs", "1"))
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --output-dir {out} already holds a run (checkpoint.pth, best.pth, log.jsonl, metrics.json); "
        f"continue it with --resume auto, or replace it with --overwrite")
    assert (out / "checkpoint.pth").read_bytes() == before
    trainer.main(ce_args(demo_data, out, "--epochs", "1", "--overwrite", "--seed", "4"))
    assert len((out / "log.jsonl").read_text().splitlines()) == 1  # replaced, not appended to
    assert len(list(out.glob("events.out.tfevents.*"))) == 1  # TensorBoard: the new run's curves only
    assert "--overwrite: removed the previous run's" in capsys.readouterr().out
    assert not (out / "run.lock").exists()


def test_lock_refuses_a_live_run_and_takes_over_a_dead_one(demo_data, tmp_path, capsys):
    import socket

    out = tmp_path / "run"
    out.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / "run.lock").write_text(f"{live.pid} {socket.gethostname()}\n")
        with pytest.raises(SystemExit) as exc:
            trainer.cli(ce_args(demo_data, out, "--epochs", "1", "--resume", "auto"))
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: --output-dir {out} is in use by a live run (pid {live.pid} on host "
                              f"{socket.gethostname()}, lock {out / 'run.lock'})"), err
    finally:
        live.kill()
        live.wait()
    trainer.main(ce_args(demo_data, out, "--epochs", "1", "--resume", "auto"))  # the pid is gone now
    assert f"took over the lock {out / 'run.lock'} of a run that is gone (pid {live.pid}" in capsys.readouterr().out
    assert not (out / "run.lock").exists()


def test_output_dir_flags(demo_data, tmp_path, monkeypatch, capsys):
    from gpaco.classification.args import parse_train_args

    with pytest.raises(SystemExit, match="--output-dir is empty"):
        parse_train_args(["--train-list", "x", "--output-dir", ""])
    with pytest.raises(SystemExit, match="--resume auto continues the run in --output-dir"):
        parse_train_args(["--train-list", "x", "--resume", "auto"])
    monkeypatch.chdir(tmp_path)
    argv = [a for a in ce_args(demo_data, "unused", "--epochs", "1") if a not in ("--output-dir", "unused")]
    trainer.main(argv)
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("ce-resnet8-") and (runs[0] / "metrics.json").exists()
    assert f"--output-dir not given: this run writes to runs/{runs[0].name}" in capsys.readouterr().out


def test_config_reruns_args_yaml_and_command_line_overrides(demo_data, tmp_path):
    from gpaco.classification.args import parse_train_args

    out = tmp_path / "run"
    trainer.main(ce_args(demo_data, out, "--epochs", "1", "--seed", "7"))
    args = parse_train_args(["--config", str(out / "args.yaml"), "--output-dir", str(tmp_path / "again"),
                             "--lr", "0.01"])
    saved = __import__("yaml").safe_load((out / "args.yaml").read_text())
    assert (args.seed, args.lr, args.output_dir, args.train_list) == (7, 0.01, str(tmp_path / "again"),
                                                                        saved["train_list"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\nlearning_rate: 0.1\n")
    with pytest.raises(SystemExit, match=rf"--config {bad}: unknown key 'learning_rate'"):
        parse_train_args(["--config", str(bad)])


def test_resume_prints_changed_flags_and_refuses_model_or_data_changes(demo_data, tmp_path, capsys):
    out = tmp_path / "run"
    trainer.main(ce_args(demo_data, out, "--epochs", "2", "--stop-after", "1"))
    with pytest.raises(SystemExit) as exc:
        trainer.cli(ce_args(demo_data, out, "--epochs", "2", "--resume", "auto", "--arch", "resnet20",
                            "--image-size", "28"))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --resume: --arch 'resnet8' -> 'resnet20', --image-size 32 -> 28 change the model "
                          "or the data"), err
    capsys.readouterr()
    trainer.main(ce_args(demo_data, out, "--epochs", "2", "--resume", "auto", "--lr", "0.04"))
    assert "resumed with changed flags: --lr 0.05 -> 0.04" in capsys.readouterr().out


# ------------------------------------------------------------------ 10. first steps that fail for no reason


def test_wrong_data_root_fails_before_anything_is_written(demo_data, tmp_path, capsys):
    """Before: found at the first image, after the model was built and args.yaml written."""
    out = tmp_path / "run"
    wrong = tmp_path / "elsewhere"
    wrong.mkdir()
    with pytest.raises(SystemExit) as exc:
        trainer.cli(ce_args(demo_data, out, "--data-root", str(wrong)))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    first = (demo_data / "train_small.txt").read_text().split()[0]
    assert err == (f"error: {demo_data / 'train_small.txt'}:1 (--train-list): image {wrong / first} not found; "
                   f"is --data-root {wrong} right?")
    assert not out.exists()


def test_dry_run_with_an_existing_data_root_uses_its_lists_or_names_the_missing_one(demo_data, tmp_path, capsys):
    empty = tmp_path / "data"
    empty.mkdir()
    with pytest.raises(SystemExit) as exc:
        trainer.cli(["--data-root", str(empty), "--train-list", str(empty / "train.txt"), "--dry-run",
                     "--method", "ce", "--arch", "resnet8", "--aug", "digits", "--image-size", "32"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == (f"error: {empty / 'train.txt'}: split list not found (expected a "
                                               f"text file of '<relative/path> <label>' lines)")
    result = trainer.main(["--data-root", str(tmp_path / "absent"), "--dry-run", "--method", "ce", "--arch",
                           "resnet8", "--aug", "digits", "--image-size", "32"])
    said = capsys.readouterr().out
    assert result["dry_run"] and "on SYNTHETIC images (--data-root does not exist)" in said
    assert f"synthetic stand-in: --data-root {tmp_path / 'absent'} does not exist" in said


def test_seg_output_folder_is_protected(tmp_path, capsys):
    from gpaco.data.demo_seg import build_demo_scenes
    from gpaco.segmentation import train as seg

    root = tmp_path / "scenes"
    build_demo_scenes(root, num_train=4, num_val=2, num_test=2, size=32)
    out = tmp_path / "run"
    argv = ["--dataset", "demo", "--data-root", str(root), "--arch", "r18", "--method", "ce", "--img-scale", "32",
            "32", "--crop-size", "32", "32", "--batch-size", "2", "--workers", "0", "--print-freq", "0",
            "--eval-interval", "0", "--iters", "2", "--output-dir", str(out)]
    seg.main(argv)
    assert load_checkpoint(out / "checkpoint.pth")["run_id"]
    with pytest.raises(SystemExit) as exc:
        seg.cli(argv)
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().startswith(f"error: --output-dir {out} already holds a run (checkpoint.pth")
    with pytest.raises(SystemExit) as exc:
        seg.cli([*argv, "--resume", "auto", "--crop-size", "16", "16"])
    assert "error: --resume: --crop-size [32, 32] -> [16, 16] change the model or the data" in capsys.readouterr().err
    seg.main([*argv, "--overwrite"])
    assert not (out / "run.lock").exists()


def test_seg_nan_weights_are_never_saved(tmp_path, capsys):
    from gpaco.data.demo_seg import build_demo_scenes
    from gpaco.segmentation import train as seg

    root = tmp_path / "scenes"
    build_demo_scenes(root, num_train=4, num_val=2, num_test=2, size=32)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        seg.cli(["--dataset", "demo", "--data-root", str(root), "--arch", "r18", "--method", "ce", "--img-scale",
                 "32", "32", "--crop-size", "32", "32", "--batch-size", "2", "--workers", "0", "--print-freq", "0",
                 "--eval-interval", "0", "--ckpt-interval", "2", "--iters", "6", "--lr", "1e8", "--nan-policy",
                 "skip", "--output-dir", str(out)])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the model weights became NaN/Inf (") and "not saved, the last good checkpoint" in err
    if (out / "checkpoint.pth").exists():
        model = load_checkpoint(out / "checkpoint.pth")["model"]
        assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point())


# ------------------------------------------------------------------ issue 23 item 11: a run folder can still be lost


def test_resume_auto_without_checkpoint_in_a_run_folder_is_refused(demo_data, tmp_path, capsys):
    """(a) checkpoint.pth deleted, best.pth and metrics.json kept: --resume auto started from
    scratch and replaced them (summary 3 rows -> 1, the log mixing both runs)."""
    out = tmp_path / "run"
    trainer.main(ce_args(demo_data, out, "--epochs", "1"))
    (out / "checkpoint.pth").unlink()
    kept = {n: (out / n).read_bytes() for n in ("best.pth", "metrics.json", "log.jsonl")}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        trainer.cli(ce_args(demo_data, out, "--epochs", "1", "--resume", "auto"))
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --output-dir {out} holds a run (best.pth, log.jsonl, metrics.json) but no checkpoint.pth to "
        f"continue; start it anew with --overwrite (without --resume), or give another --output-dir")
    assert {n: (out / n).read_bytes() for n in kept} == kept


def test_resume_from_another_folder_into_a_run_folder_is_refused(demo_data, tmp_path, capsys):
    """(b) --resume OTHER/checkpoint.pth replaced the finished run in --output-dir."""
    import shutil

    out, other = tmp_path / "run", tmp_path / "other"
    trainer.main(ce_args(demo_data, out, "--epochs", "1"))
    shutil.copytree(out, other)
    kept = (out / "metrics.json").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        trainer.cli(ce_args(demo_data, out, "--epochs", "2", "--resume", str(other / "checkpoint.pth")))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --resume {other / 'checkpoint.pth'} continues a run from elsewhere, but "
                          f"--output-dir {out} holds a run ("), err
    assert (out / "metrics.json").read_bytes() == kept
    from gpaco.engine.lifecycle import TrainingRun

    with TrainingRun(output_dir=str(out), resume=str(other / "checkpoint.pth"), overwrite=True) as lc:
        assert lc.resume_checkpoint() is not None  # --overwrite (library use) lets it replace the run
        lc.open_output({})
        assert not (out / "metrics.json").exists() and not (out / "best.pth").exists()


def test_folder_is_checked_again_once_the_lock_is_taken(tmp_path):
    """(c) the folder check ran before run.lock and not again: a slow-starting run replaced the
    run that another process wrote meanwhile."""
    from gpaco.checkpoint import save_checkpoint
    from gpaco.engine.args import FlagError
    from gpaco.engine.lifecycle import TrainingRun

    out = tmp_path / "run"
    with TrainingRun(output_dir=str(out)) as slow:  # a fresh start into an empty folder
        assert slow.resume_checkpoint() is None
        save_checkpoint({"epoch": 1, "run_id": "other"}, out / "checkpoint.pth")  # another run, meanwhile
        (out / "metrics.json").write_text("{}")
        with pytest.raises(FlagError, match=rf"--output-dir {out} already holds a run \(checkpoint.pth, "
                                            rf"metrics.json\); continue it with --resume auto"):
            slow.open_output({})
    assert load_checkpoint(out / "checkpoint.pth")["run_id"] == "other" and not (out / "run.lock").exists()
    with TrainingRun(output_dir=str(out), resume="auto") as slow:  # resumes, then the checkpoint is rewritten
        assert slow.resume_checkpoint()["epoch"] == 1
        save_checkpoint({"epoch": 2, "run_id": "other"}, out / "checkpoint.pth")
        with pytest.raises(FlagError, match="was rewritten by another run after this one read it"):
            slow.open_output({})
    assert load_checkpoint(out / "checkpoint.pth")["epoch"] == 2


def test_lock_of_a_live_pid_is_never_taken_over_and_takeover_is_atomic(tmp_path, monkeypatch):
    """(d) same SLURM_JOB_ID took over the lock of a live process; a stale lock let two in."""
    import socket
    import threading

    from gpaco.engine.args import FlagError
    from gpaco.engine.lifecycle import TrainingRun

    out = tmp_path / "run"
    out.mkdir()
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    live = subprocess.Popen(["sleep", "30"])
    try:
        (out / "run.lock").write_text(f"{live.pid} {socket.gethostname()} 4242\n")
        with pytest.raises(FlagError, match=rf"is in use by a live run \(pid {live.pid} on host "):
            TrainingRun(output_dir=str(out), resume="auto")._take_lock()
    finally:
        live.kill()
        live.wait()
    # the lock is stale now: of racing takers exactly one gets it
    runs = [TrainingRun(output_dir=str(out), resume="auto") for _ in range(8)]
    go, won, refused = threading.Barrier(len(runs)), [], []

    def take(run):
        go.wait()
        try:
            run._take_lock()
            won.append(run)
        except FlagError:
            refused.append(run)

    threads = [threading.Thread(target=take, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(won) == 1 and len(refused) == len(runs) - 1
    finally:
        for run in won:
            run._release_lock()
    assert not (out / "run.lock").exists()


CLAIM_AND_WAIT = """
import sys, time
from gpaco.engine.lifecycle import claim_eval_dir
claim_eval_dir(sys.argv[1], overwrite=True)
print("claimed", flush=True)
time.sleep(60)
"""


def test_a_second_live_evaluation_into_one_folder_is_refused(tmp_path, capsys):
    """(e) two tools/eval.py into one --output-dir at once both exit 0, the second replaced the first."""
    from gpaco.engine import lifecycle
    from gpaco.engine.args import FlagError

    out = tmp_path / "eval"
    first = subprocess.Popen([sys.executable, "-c", CLAIM_AND_WAIT, str(out)], env=subprocess_env(),
                             stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert first.stdout.readline().strip() == "claimed"
        with pytest.raises(FlagError, match=rf"--output-dir {out} is in use by a live run \(pid {first.pid} on"):
            lifecycle.claim_eval_dir(str(out), overwrite=True)
    finally:
        first.kill()
        first.wait()
    try:
        assert lifecycle.claim_eval_dir(str(out), overwrite=True) == str(out)  # that evaluation is gone
        assert f"took over the lock {out / 'run.lock'}" in capsys.readouterr().out
    finally:
        lifecycle._release_eval_locks()
    assert not (out / "run.lock").exists()


def test_convert_and_save_logits_refuse_an_existing_file(tmp_path, capsys):
    """(f) tools/convert_checkpoint.py and --save-logits replaced an existing file without asking."""
    import argparse
    import importlib.util
    from types import SimpleNamespace

    from gpaco.classification.evaluate import write_results
    from gpaco.engine.args import FlagError

    spec = importlib.util.spec_from_file_location("tools_convert_checkpoint", ROOT / "tools" / "convert_checkpoint.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    target = tmp_path / "out.pth"
    target.write_bytes(b"keep")
    with pytest.raises(SystemExit, match=rf"^error: {target} already exists; give another output file, or "
                                         rf"--overwrite to replace it$"):
        tool.main([str(tmp_path / "in.pth"), str(target)])
    with pytest.raises(SystemExit, match="not found|No such file"):  # --overwrite goes on to read the input
        tool.main([str(tmp_path / "in.pth"), str(target), "--overwrite"])
    assert target.read_bytes() == b"keep"

    logits = tmp_path / "logits.npy"
    logits.write_bytes(b"keep")
    ctx = SimpleNamespace(logits_all=torch.zeros(2, 3), test_set=None, confusion=None)
    with pytest.raises(FlagError, match=rf"--save-logits {logits} already exists; give another file, or "
                                        rf"--overwrite to replace it"):
        write_results(str(tmp_path), argparse.Namespace(save_logits=str(logits), overwrite=False), {}, ctx)
    assert logits.read_bytes() == b"keep" and not (tmp_path / "metrics.json").exists()
    write_results(str(tmp_path), argparse.Namespace(save_logits=str(logits), overwrite=True), {}, ctx)
    assert logits.read_bytes() != b"keep"
