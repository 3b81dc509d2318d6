"""Bad inputs end with one ``error: ...`` line naming the file, never a traceback or a hang:
coco_stuff10k list names leaving --root, FIFOs named like images, a UTF-16 split list,
--layer-decay on a CNN, corrupt metrics.json files and a malformed --mce-baseline."""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, demo_flags, subprocess_env
from gpaco.data.splits import DataError, SplitDataset
from gpaco.engine.cli import run_cli

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no os.mkfifo on this platform")


def _tool_module(name: str):
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run_tool(name: str, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / f"{name}.py"), *argv], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def _run_cli_in_process(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        run_cli(main, argv)
    assert e.value.code == 2
    return _one_error_line(capsys.readouterr().err)


# --------------------------------------------------------------------------- coco_stuff10k list names

@pytest.mark.parametrize("name", ["../../escape", "/tmp/abs_name", "a/../../b", "..\\win", "C:evil"])
def test_coco_stuff10k_refuses_names_leaving_root(name, tmp_path):
    prepare = _tool_module("prepare_data")
    with pytest.raises(SystemExit) as e:
        prepare.check_list_name(name, tmp_path / "train.txt", 7)
    assert str(e.value.code).startswith(f"error: {tmp_path / 'train.txt'}:7: {name!r}")
    prepare.check_list_name("COCO_train2014_000000000077", tmp_path / "train.txt", 1)  # the official names pass


def test_coco_stuff10k_end_to_end_refusal_writes_nothing(tmp_path, capsys):
    root = tmp_path / "root"
    (root / "imageLists").mkdir(parents=True)
    (root / "imageLists" / "train.txt").write_text("COCO_train2014_000000000077\n\n../../outside\n")
    (root / "imageLists" / "test.txt").write_text("")
    prepare = _tool_module("prepare_data")
    line = _run_cli_in_process(prepare.main, ["coco_stuff10k", "--root", str(root), "--workers", "1"], capsys)
    assert line.startswith(f"error: {root / 'imageLists' / 'train.txt'}:3: '../../outside'"), line
    assert not list(tmp_path.glob("*.png")) and not (tmp_path / "outside_labelTrainIds.png").exists()


# --------------------------------------------------------------------------- FIFOs named like images

def _list_with_a_fifo(tmp_path) -> Path:
    """list.txt naming a real image (line 1) and a FIFO (line 2) under ``tmp_path``."""
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    os.mkfifo(tmp_path / "pipe.png")
    lst = tmp_path / "list.txt"
    lst.write_text("ok.png 0\npipe.png 1\n")
    return lst


@needs_fifo
def test_split_dataset_refuses_a_fifo_without_opening_it(tmp_path):
    lst = _list_with_a_fifo(tmp_path)
    ds = SplitDataset(lst, tmp_path)
    assert ds.load_image(0).size == (4, 4)
    with pytest.raises(DataError, match=r"list.txt:2: .*pipe.png is not a regular file \(a FIFO\)"):
        ds.load_image(1)  # would block forever in open() without the check


@needs_fifo
def test_check_data_reports_a_fifo(tmp_path):
    lst = _list_with_a_fifo(tmp_path)
    check = _tool_module("check_data")
    report = check.check_list(str(lst), str(tmp_path), verify_images=True, jobs=1)
    assert [(p.line, p.kind) for p in report.errors] == [(2, "special")]
    assert "pipe.png is not a regular file (a FIFO)" in report.errors[0].format(str(lst))
    r = _run_tool("check_data", "--data-root", str(tmp_path), "--list", str(lst), "--verify-images", timeout=60)
    assert r.returncode == 1 and f"{lst}:2: {tmp_path / 'pipe.png'} is not a regular file (a FIFO)" in r.stdout


@needs_fifo
def test_training_on_a_list_naming_a_fifo_ends_with_one_error_line(demo_data, tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    lines = (demo_data / "train_small.txt").read_text().splitlines()
    lst = tmp_path / "train.txt"
    # not the first line: check_data_found only looks at the first image of every list
    lst.write_text("\n".join(lines[:3] + [f"{tmp_path / 'pipe.png'} 0"] + lines[3:]) + "\n")
    flags = demo_flags(demo_data)
    flags[flags.index("--train-list") + 1] = str(lst)
    r = _run_tool("train", *flags, "--allow-outside-root", "--method", "ce", "--epochs", "1",
                  "--warmup-epochs", "0", "--output-dir", str(tmp_path / "run"), timeout=120)
    assert r.returncode == 2, r.stderr
    line = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(line) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"{lst}:4: {tmp_path / 'pipe.png'} is not a regular file (a FIFO)" in line[0]


# --------------------------------------------------------------------------- one line, not a traceback

def test_check_data_on_a_utf16_list_is_one_finding(tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("a.png 0\nb.png 1\n", encoding="utf-16")
    check = _tool_module("check_data")
    report = check.check_list(str(lst), str(tmp_path), check_files=False)
    assert len(report.errors) == 1 and "not UTF-8 text" in report.errors[0].message
    lst.write_bytes("a.png 0\n".encode("utf-16-le"))  # no BOM: valid UTF-8, full of NULs
    report = check.check_list(str(lst), str(tmp_path), check_files=False)
    assert len(report.errors) == 1 and "NUL byte" in report.errors[0].message
    r = _run_tool("check_data", "--data-root", str(tmp_path), "--list", str(lst), timeout=60)
    # a list problem, like a missing list: exit 1 (tools/check_data.py's contract), no traceback
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"error: {lst}:1: NUL byte" in r.stdout


def test_layer_decay_on_a_cnn_is_a_flag_error(capsys):
    from gpaco.classification import train as trainer

    line = _run_cli_in_process(trainer.main, ["--dry-run", "--arch", "resnet8", "--method", "ce", "--epochs", "1",
                                              "--warmup-epochs", "0", "--layer-decay", "0.65"], capsys)
    assert "--layer-decay is for ViT archs" in line and "--arch resnet8" in line


def _corrupt_run(folder: Path, text: str) -> Path:
    folder.mkdir()
    (folder / "metrics.json").write_text(text)
    return folder


@pytest.mark.parametrize("text", ['{"top1": 5', "[1, 2]", '{"per_class": ["x"]}'], ids=["truncated", "list", "bad"])
def test_compare_runs_on_a_corrupt_metrics_json(text, tmp_path, capsys):
    good = tmp_path / "good"
    good.mkdir()
    (good / "metrics.json").write_text(json.dumps({"top1": 50.0, "per_class": [50.0, 50.0]}))
    bad = _corrupt_run(tmp_path / "bad", text)
    line = _run_cli_in_process(_tool_module("compare_runs").main, [str(good), str(bad)], capsys)
    assert str(bad / "metrics.json") in line


def test_summarize_and_compare_tools_exit_2_on_a_corrupt_metrics_json(tmp_path, capsys):
    bad = _corrupt_run(tmp_path / "bad", '{"top1": 5')
    partial = _corrupt_run(tmp_path / "partial", '{"top1": 5}')
    r = _run_tool("compare_runs", str(bad), str(partial), timeout=120)  # the script once, then in this process
    assert r.returncode == 2, r.stderr
    assert str(bad / "metrics.json") in _one_error_line(r.stderr)
    for tool, argv, path in (("summarize_runs", [str(bad)], bad), ("summarize_runs", [str(partial)], partial)):
        assert str(path / "metrics.json") in _run_cli_in_process(_tool_module(tool).main, argv, capsys)


@pytest.mark.parametrize("text", ["not json", "[]", '{"corruption": []}',
                                  '{"corruption": {"corruption_errors": {"fog": "x"}}}',
                                  '{"corruption": {"corruption_errors": [1]}}'])
def test_malformed_mce_baseline_is_one_line(text, tmp_path, capsys):
    from gpaco.classification.evaluate import mce_baseline

    path = tmp_path / "baseline.json"
    path.write_bytes(text.encode())
    args = argparse.Namespace(mce_baseline=str(path), corrupted_root=str(tmp_path))
    line = _run_cli_in_process(lambda argv: mce_baseline(args), [], capsys)
    assert line.startswith(f"error: --mce-baseline {path}"), line


def test_utf16_mce_baseline_is_one_line(tmp_path, capsys):
    from gpaco.classification.evaluate import mce_baseline

    path = tmp_path / "baseline.json"
    path.write_text('{"corruption": {}}', encoding="utf-16")
    args = argparse.Namespace(mce_baseline=str(path), corrupted_root=str(tmp_path))
    line = _run_cli_in_process(lambda argv: mce_baseline(args), [], capsys)
    assert line.startswith(f"error: --mce-baseline {path}"), line


def test_a_fifo_on_a_lists_first_line_is_named_as_such(demo_data, tmp_path):
    """The first-image check before the model is built: a FIFO is 'not a regular file', not 'not found'."""
    import os

    from conftest import demo_flags
    from gpaco.classification import train as trainer

    root = tmp_path / "root"
    (root / "img").mkdir(parents=True)
    os.mkfifo(root / "img" / "pipe.png")
    lines = (demo_data / "train_small.txt").read_text().splitlines()
    for line in lines:
        src = demo_data / line.split()[0]
        dst = root / line.split()[0]
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            os.symlink(src, dst)
    (root / "train.txt").write_text("img/pipe.png 0\n" + "\n".join(lines) + "\n")
    flags = demo_flags(demo_data)
    flags[flags.index("--data-root") + 1] = str(root)
    flags[flags.index("--train-list") + 1] = str(root / "train.txt")
    from gpaco.data import DataError

    with pytest.raises(DataError, match=r"train.txt:1 \(--train-list\): .*pipe.png is not a regular file \(a FIFO\)"):
        trainer.main(flags + ["--method", "ce", "--epochs", "1", "--output-dir", str(tmp_path / "out"),
                              "--follow-symlinks"])
