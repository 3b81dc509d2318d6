"""Checkpoint I/O and run logging (the engine's on-disk outputs)."""
import argparse
import json
import os
import pickle
import random
from collections import OrderedDict

import numpy as np
import pytest
import torch
import yaml

from gpaco import checkpoint as ckpt
from gpaco.checkpoint import (
    CheckpointError,
    UnsafeCheckpointError,
    check_writable,
    find_resume,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    strip_prefix,
)
from gpaco.engine.logging import ProgressMeter, RunLogger, progress_line, save_args_yaml, write_json


def _draws():
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist())


def _state():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    return {
        "epoch": 3, "arch": "resnet50", "acc": 41.5, "args": {"lr": 0.02, "milestones": [320, 360]},
        "state_dict": model.state_dict(), "optimizer": opt.state_dict(),
    }


def test_roundtrip_with_rng_under_weights_only(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    np.random.randn()   # ... and in numpy's (odd number of normals)
    state = _state()
    state["rng"] = rng_state()
    expected = _draws()
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(state, path)
    # plain torch.load with weights_only=True must accept our files
    torch.load(path, weights_only=True)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3 and loaded["args"] == state["args"]
    for k, v in state["state_dict"].items():
        assert torch.equal(loaded["state_dict"][k], v)
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    _draws()  # move every generator on
    set_rng_state(loaded["rng"])
    assert _draws() == expected
    assert not [p for p in tmp_path.iterdir() if p.name != "checkpoint.pth"]  # no temp files left


def test_save_refuses_what_weights_only_cannot_load(tmp_path):
    path = tmp_path / "c.pth"
    with pytest.raises(CheckpointError, match=r"state\['args'\].*Namespace"):
        save_checkpoint({"args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError, match=r"\.item\(\)"):
        save_checkpoint({"best_acc": np.float64(1.0)}, path)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()

    def half_then_fail(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", half_then_fail)
    with pytest.raises(CheckpointError, match="No space left") as exc:
        save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    assert str(path) in str(exc.value)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]  # temp file removed
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1

    # the pickler itself failing mid-write (a tensor subclass that refuses to pickle)
    class Boom(torch.Tensor):
        def __reduce_ex__(self, proto):
            raise pickle.PicklingError("cannot pickle this")

    with pytest.raises(CheckpointError, match=str(path)):
        save_checkpoint({"epoch": 3, "w": torch.ones(2).as_subclass(Boom)}, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]


class _Exploit:
    """Unpickling this calls open(marker, 'w'): stands in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_failed_json_write_keeps_previous_file(tmp_path, monkeypatch):
    """metrics.json goes through a temporary file: a write that fails half way (a full disk, a
    kill) leaves the previous file as it was and no temporary behind."""
    import gpaco.engine.logging as logging_module

    path = tmp_path / "metrics.json"
    write_json(path, {"top1": torch.tensor(61.5), "nan": float("nan")})
    before = path.read_text()
    assert json.loads(before) == {"top1": 61.5, "nan": None}

    def half_then_fail(obj, f, *a, **k):
        f.write('{"top1": 7')
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(logging_module.json, "dump", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        write_json(path, {"top1": 70.0})
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    zip_path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": _Exploit(marker)}, zip_path)  # torch zip format
    raw_path = tmp_path / "evil.pkl"
    with open(raw_path, "wb") as f:
        pickle.dump({"payload": _Exploit(marker)}, f, protocol=2)  # legacy raw pickle
    for path in (zip_path, raw_path):
        with pytest.raises(UnsafeCheckpointError) as exc:
            load_checkpoint(path)
        msg = str(exc.value)
        assert str(path) in msg and "arbitrary code" in msg and "--trust-pickle" in msg
        assert not marker.exists()
    # sanity: the payload really does run under full unpickling
    torch.load(zip_path, weights_only=False)
    assert marker.exists()


def test_load_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(missing)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pth"):
        load_checkpoint(text)
    trunc = tmp_path / "trunc.pth"
    torch.save({"w": torch.zeros(1000)}, trunc)
    trunc.write_bytes(trunc.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="trunc.pth"):
        load_checkpoint(trunc)
    tensor_only = tmp_path / "t.pth"
    torch.save(torch.zeros(2), tensor_only)
    with pytest.raises(CheckpointError, match="expected a checkpoint dict"):
        load_checkpoint(tensor_only)


def test_safetensors_roundtrip(tmp_path):
    from safetensors.torch import save_file

    weights = {"linear.weight": torch.randn(3, 4), "linear.bias": torch.randn(3)}
    path = tmp_path / "model.safetensors"
    save_file(weights, str(path))
    loaded = load_checkpoint(path)
    assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], weights[k]) for k in weights)
    ours = tmp_path / "ours.safetensors"
    save_checkpoint(weights, ours)
    assert all(torch.equal(load_checkpoint(ours)[k], weights[k]) for k in weights)
    with pytest.raises(CheckpointError, match="flat"):
        save_checkpoint({"epoch": 1}, tmp_path / "bad.safetensors")
    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(b"\x00" * 3)
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load_checkpoint(bad)


def test_strip_prefix():
    sd = OrderedDict([("module.encoder_q.fc.weight", 1), ("module.linear.bias", 2), ("queue", 3)])
    assert list(strip_prefix(sd)) == ["encoder_q.fc.weight", "linear.bias", "queue"]
    assert list(strip_prefix(sd, ("module.", "encoder_q."))) == ["fc.weight", "linear.bias", "queue"]
    with pytest.raises(ValueError, match="collide"):
        strip_prefix({"module.a": 1, "a": 2})


def test_check_writable_and_find_resume(tmp_path):
    out = tmp_path / "run" / "nested"
    assert check_writable(out) == out and out.is_dir() and not list(out.iterdir())
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="not writable") as exc:
        check_writable(blocker / "sub")
    assert str(blocker / "sub") in str(exc.value)
    if os.geteuid() != 0:  # root ignores permissions
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(CheckpointError, match=str(ro)):
                check_writable(ro)
            with pytest.raises(CheckpointError, match="checkpoint.pth"):
                save_checkpoint({"epoch": 1}, ro / "checkpoint.pth")
        finally:
            ro.chmod(0o700)

    assert find_resume(out, None) is None and find_resume(out, "") is None
    assert find_resume(out, "auto") is None
    save_checkpoint({"epoch": 1}, out / "checkpoint.pth")
    assert find_resume(out, "auto") == str(out / "checkpoint.pth")
    assert find_resume(out, str(out / "checkpoint.pth")) == str(out / "checkpoint.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        find_resume(out, str(out / "missing.pth"))


# ---------------------------------------------------------------- run logging


def test_run_logger_jsonl_and_tensorboard(tmp_path):
    run = tmp_path / "run"
    with RunLogger(run, enabled=True) as logger:
        logger.log_epoch({"epoch": 0, "top1": 12.5, "per_class": [float("nan"), 1.0], "lr": torch.tensor(0.02)})
        logger.log_epoch({"epoch": 1, "top1": np.float32(20.0)})
        logger.log_scalars({"train/loss": 2.3, "val/top1": torch.tensor(12.5), "note": "skipped"}, step=0)
    lines = (run / "log.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(ln) for ln in lines)
    assert first == {"epoch": 0, "top1": 12.5, "per_class": [None, 1.0], "lr": pytest.approx(0.02)}
    assert second == {"epoch": 1, "top1": 20.0}
    assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())
    # appending on resume
    with RunLogger(run, enabled=True) as logger:
        logger.log_epoch({"epoch": 2})
    assert len((run / "log.jsonl").read_text().splitlines()) == 3

    off = tmp_path / "rank1"
    silent = RunLogger(off, enabled=False)
    silent.log_epoch({"epoch": 0})
    silent.log_scalars({"x": 1.0}, step=0)
    silent.close()
    assert not off.exists()


def test_save_args_yaml_and_progress(tmp_path):
    args = argparse.Namespace(lr=0.02, milestones=(320, 360), data=tmp_path, name="r50")
    save_args_yaml(args, tmp_path / "args.yaml")
    back = yaml.safe_load((tmp_path / "args.yaml").read_text())
    assert back == {"lr": 0.02, "milestones": [320, 360], "data": str(tmp_path), "name": "r50"}

    line = progress_line(3, 40, 120, 40 / 42.1 * 40, 40 * 40, loss=2.3141, lr=0.02)
    assert line.startswith("[epoch 3][ 40/120] loss 2.314 lr 0.0200 42.1 img/s eta ")
    printed = []
    pm = ProgressMeter(5, print_freq=2, printer=printed.append)
    pm.start_epoch(1)
    for _ in range(5):
        pm.step(8, loss=1.0)
    assert len(printed) == 3 and printed[-1].startswith("[epoch 1][5/5] loss 1.000")
