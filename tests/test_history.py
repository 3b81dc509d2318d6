"""A run's history survives a kill or a full disk: the epoch's log record rides in its
checkpoint and is logged on resume exactly once, log.jsonl / summary.csv appends are whole
lines, and the reports (curves.png, metrics.json, the eval report) are replaced atomically."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from gpaco.checkpoint import CheckpointError, load_checkpoint
from gpaco.classification import train as trainer
from gpaco.classification.report import plot_curves, write_eval_report
from gpaco.engine import logging as runlog
from gpaco.engine.lifecycle import LOCK_NAME
from gpaco.engine.logging import RunLogger, read_summary, write_json

DROP = ("train_time_s", "train_images_per_s")  # wall-clock figures differ between runs


def ce_args(data, out, *extra):
    return [
        "--data-root", str(data), "--train-list", str(data / "train_small.txt"), "--test-list",
        str(data / "test_small.txt"), "--arch", "resnet8", "--image-size", "32", "--resize-size", "32", "--norm",
        "mnist", "--batch-size", "32", "--lr", "0.05", "--warmup-epochs", "1", "--workers", "0", "--print-freq", "0",
        "--method", "ce", "--aug", "none", "--epochs", "3", "--seed", "3", "--output-dir", str(out), *extra,
    ]


def history(out: Path):
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    log = [{k: v for k, v in r.items() if k not in DROP} for r in log]
    rows = [{k: v for k, v in r.items() if k not in DROP} for r in read_summary(out / "summary.csv")]
    return log, rows


@pytest.fixture(scope="module")
def straight(demo_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    trainer.main(ce_args(demo_data, out))
    return out


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not an Exception: no handler catches it)."""


def test_kill_between_checkpoint_and_log_relogs_the_epoch_once(demo_data, straight, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = RunLogger.log_epoch

    def die_at_epoch_2(self, record):
        if record.get("epoch") == 2:
            raise Killed
        return real(self, record)

    monkeypatch.setattr(RunLogger, "log_epoch", die_at_epoch_2)
    with pytest.raises(Killed):
        trainer.main(ce_args(demo_data, out))
    monkeypatch.setattr(RunLogger, "log_epoch", real)
    assert load_checkpoint(out / "checkpoint.pth")["epoch"] == 2  # saved, but not logged
    assert [r["epoch"] for r in history(out)[0]] == [1]

    trainer.main(ce_args(demo_data, out, "--resume", "auto"))
    log, rows = history(out)
    assert [r["epoch"] for r in log] == [1, 2, 3] and [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert (log, rows) == history(straight)
    assert json.loads((out / "metrics.json").read_text()) == json.loads((straight / "metrics.json").read_text())

    # Logged already: a second look at the same checkpoint record writes nothing.
    ckpt = load_checkpoint(out / "checkpoint.pth")
    with RunLogger(out, enabled=True) as logger:
        assert not logger.log_pending(ckpt["pending_log"])
    assert history(out) == (log, rows)


def test_full_disk_at_log_write_is_one_error_then_resume_completes(demo_data, straight, tmp_path, monkeypatch,
                                                                     capsys):
    out = tmp_path / "run"
    real_write = os.write

    def full_disk(fd, data):
        # the epoch-2 line of log.jsonl: half of it reaches the disk, then ENOSPC
        data = bytes(data)
        if data.startswith(b'{"epoch": 2,'):
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(SystemExit) as exc:
        trainer.cli(ce_args(demo_data, out))
    monkeypatch.setattr(os, "write", real_write)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert "log.jsonl" in err[-1] and "disk full?" in err[-1], err
    assert not (out / LOCK_NAME).exists()  # released on the way out
    assert (out / "log.jsonl").read_text().endswith("\n")  # the half line was cut back off
    assert [r["epoch"] for r in history(out)[0]] == [1]

    trainer.main(ce_args(demo_data, out, "--resume", "auto"))
    assert history(out) == history(straight)


def test_half_line_is_cut_on_open(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"epoch": 1, "train_loss": 2.0}\n{"epoch": 2, "train_lo')
    (tmp_path / "summary.csv").write_text("epoch,train_loss\n1,2.0\n2,1.")
    with RunLogger(tmp_path, enabled=True) as logger:
        logger.log_epoch({"epoch": 2, "train_loss": 1.5})
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [{"epoch": 1, "train_loss": 2.0}, {"epoch": 2, "train_loss": 1.5}]
    assert read_summary(tmp_path / "summary.csv") == [{"epoch": "1", "train_loss": "2.0"},
                                                      {"epoch": "2", "train_loss": "1.5"}]


def test_failed_append_leaves_no_half_line(tmp_path, monkeypatch):
    with RunLogger(tmp_path, enabled=True) as logger:
        logger.log_epoch({"epoch": 1, "train_loss": 2.0})
        before = (tmp_path / "log.jsonl").read_bytes()
        real_write = os.write

        def partial(fd, data):
            real_write(fd, bytes(data)[:5])
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "write", partial)
        with pytest.raises(CheckpointError, match=r"log\.jsonl.*disk full\?"):
            logger.log_epoch({"epoch": 2, "train_loss": 1.5})
        monkeypatch.setattr(os, "write", real_write)
        assert (tmp_path / "log.jsonl").read_bytes() == before
        logger.log_epoch({"epoch": 2, "train_loss": 1.5})  # space freed: the log goes on
    assert [json.loads(x)["epoch"] for x in (tmp_path / "log.jsonl").read_text().splitlines()] == [1, 2]


def test_pending_record_fills_only_what_is_missing(tmp_path):
    with RunLogger(tmp_path, enabled=True) as logger:
        logger.log_epoch({"epoch": 1, "train_loss": 2.0})
    # killed after the log.jsonl line but before summary.csv's row
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_loss": 1.5}\n')
    with RunLogger(tmp_path, enabled=True) as logger:
        assert logger.log_pending({"epoch": 2, "train_loss": 1.5})
        assert not logger.log_pending({"epoch": 2, "train_loss": 1.5})
        assert not logger.log_pending({"epoch": 1, "train_loss": 2.0})
    assert [json.loads(x)["epoch"] for x in (tmp_path / "log.jsonl").read_text().splitlines()] == [1, 2]
    assert [r["epoch"] for r in read_summary(tmp_path / "summary.csv")] == ["1", "2"]


def test_full_disk_keeps_the_previous_reports(tmp_path, monkeypatch):
    rows = [{"epoch": "1", "train_loss": "2.0", "val_top1": "40"}, {"epoch": "2", "train_loss": "1.0", "val_top1": "60"}]
    metrics = {"per_class": [50.0, 70.0], "per_class_test_count": [2, 3], "confusion": [[1, 1], [1, 2]]}
    assert plot_curves(rows, str(tmp_path / "curves.png"))
    write_json(tmp_path / "metrics.json", {"top1": 60.0})
    written = write_eval_report(str(tmp_path), metrics, [10, 2])
    names = ["curves.png", "metrics.json"] + [os.path.basename(p) for p in written]
    before = {n: (tmp_path / n).read_bytes() for n in names}
    assert all(before.values())

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runlog.os, "replace", full_disk)
    with pytest.raises(OSError):
        plot_curves(rows[:1], str(tmp_path / "curves.png"))
    with pytest.raises(OSError):
        write_json(tmp_path / "metrics.json", {"top1": 1.0})
    with pytest.raises(OSError):
        write_eval_report(str(tmp_path), {**metrics, "per_class": [0.0, 0.0]}, [10, 2])
    assert {n: (tmp_path / n).read_bytes() for n in names} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no temporary file left


def test_stale_temporaries_of_every_writer_are_removed(tmp_path):
    """A killed run leaves save_checkpoint's and atomic_path's temporaries; the next run in the
    folder removes those of dead processes only, and nothing that is not one of them."""
    import subprocess
    import sys

    from gpaco.checkpoint import remove_stale_temporaries

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead, alive = proc.pid, os.getpid()
    stale = [f".checkpoint.pth.{dead}.0a1b2c3d.tmp", f"metrics.{dead}.tmp.json", f"curves.{dead}.tmp.png",
             f"log.{dead}.tmp.jsonl"]
    kept = [f"summary.{alive}.tmp.csv", f".best.pth.{alive}.deadbeef.tmp", "notes.tmp", "x.12ab.tmp", "metrics.json"]
    for name in stale + kept:
        (tmp_path / name).write_text("x")
    assert remove_stale_temporaries(str(tmp_path)) == len(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
