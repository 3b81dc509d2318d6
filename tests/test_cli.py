"""The command line a newcomer meets: one ``error: ...`` line (exit 2) for every bad flag,
file or checkpoint of every tool, ``--debug`` for the traceback, and a ``--help`` that gives
every flag a text and its default (docs/reliability.md#one-error-line)."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, demo_flags, subprocess_env
from gpaco.checkpoint import save_checkpoint
from gpaco.classification import evaluate as evaluator
from gpaco.classification import train as trainer
from gpaco.classification.args import build_train_parser, parse_train_args
from gpaco.engine import args as engine_args
from gpaco.engine.cli import run_cli
from gpaco.methods import all_methods
from gpaco.methods.rebuild import build_model
from gpaco.segmentation.evaluate import build_eval_parser as build_seg_eval_parser
from gpaco.segmentation.train import build_train_parser as build_seg_train_parser


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1, stderr
    return lines[0]


def _run_tool(name: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / f"{name}.py"), *argv], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    (d / "text.pth").write_text("not a checkpoint\n")
    torch.save({"args": argparse.Namespace(lr=0.1), "w": torch.zeros(2)}, d / "pickled.pth")
    return d


TOOL_CASES = [
    ("train", ["--dry-run", "--arch", "resnet8", "--method", "ce", "--epochs", "1", "--warmup-epochs", "0",
               "--momentum", "-1"], "--momentum must be in [0, 1)"),
    ("eval", ["--checkpoint", "{bad}/text.pth", "--data-root", "/nonexistent", "--test-list", "{bad}/list.txt"],
     "--test-list {bad}/list.txt: no such file"),
    ("train_seg", ["--data-root", "/nonexistent", "--iters", "2"], "--data-root /nonexistent does not exist"),
    ("eval_seg", ["--checkpoint", "{bad}/none.pth"], "--checkpoint {bad}/none.pth: no such file"),
    ("convert_checkpoint", ["{bad}/pickled.pth", "{bad}/out.pth"], "not a safe checkpoint"),
    ("check_data", ["--data-root", "{bad}", "--list", "{bad}/list.txt", "--num-classes", "0"],
     "--num-classes must be positive"),
    ("make_corrupted", ["--data-root", "{bad}", "--list", "{bad}/list.txt", "--out", "{bad}/c"],
     "split list not found"),
    ("prepare_data", ["cityscapes", "--root", "/nonexistent"], "gtFine/train not found"),
    ("class_counts_seg", ["--dataset", "demo", "--data-root", "/nonexistent", "--out", "{bad}/c.txt"],
     "does not exist"),
]


# Every tool run as its script (__main__) in ONE subprocess: the imports are paid once.
_DRIVER = """
import contextlib, io, json, runpy, sys, traceback
out = []
for tool, argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    sys.argv = [tool] + argv
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            runpy.run_path(tool, run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            code = "exception"
            err.write(traceback.format_exc())
    out.append([code, err.getvalue()])
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def tool_results(bad_files) -> dict:
    import json

    cases = [[str(ROOT / "tools" / f"{tool}.py"), [a.format(bad=bad_files) for a in argv]]
             for tool, argv, _ in TOOL_CASES]
    r = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(cases)], cwd=ROOT, env=subprocess_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return {tool: result for (tool, _, _), result in zip(TOOL_CASES, json.loads(r.stdout.splitlines()[-1]))}


@pytest.mark.parametrize("tool,argv,expected", TOOL_CASES, ids=[c[0] for c in TOOL_CASES])
def test_every_tool_gives_one_error_line_and_exit_2(tool, argv, expected, bad_files, tool_results):
    code, stderr = tool_results[tool]
    assert code == 2, stderr
    assert expected.format(bad=bad_files) in _one_error_line(stderr)


def test_debug_shows_the_traceback_and_keeps_exit_2(bad_files):
    r = _run_tool("convert_checkpoint", str(bad_files / "missing.pth"), str(bad_files / "out.pth"), "--debug")
    assert r.returncode == 2
    assert "Traceback" in r.stderr and "error: checkpoint not found" in r.stderr


@pytest.mark.parametrize("flags,expected", [
    (["--arch", "resnet_nope"], "unknown --arch 'resnet_nope'"),
    (["--momentum", "1.5"], "--momentum must be in [0, 1), got 1.5"),
    (["--nesterov", "--momentum", "0"], "--nesterov is for --optimizer sgd with --momentum > 0"),
    (["--wd", "-1"], "--wd must be >= 0, got -1.0"),
    (["--resize-size", "16"], "--resize-size (16) must be >= --image-size (32)"),
])
def test_train_flag_errors(flags, expected, demo_data, tmp_path, capsys):
    argv = demo_flags(demo_data) + ["--method", "ce", "--epochs", "1", "--warmup-epochs", "0",
                                    "--output-dir", str(tmp_path / "run"), *flags]
    with pytest.raises(SystemExit) as e:
        run_cli(trainer.main, argv)
    assert e.value.code == 2
    assert expected in _one_error_line(capsys.readouterr().err)


def test_too_many_workers_are_lowered_with_a_note(demo_data, monkeypatch, capsys):
    monkeypatch.setattr(engine_args, "cpu_count", lambda: 2)
    args = parse_train_args(demo_flags(demo_data) + ["--method", "ce", "--workers", "999"])
    assert args.workers == 8
    assert "--workers 999 is more than 4 per CPU (2 CPUs); using 8" in capsys.readouterr().err
    assert parse_train_args(demo_flags(demo_data) + ["--method", "ce", "--workers", "8"]).workers == 8


def test_pickled_pretrained_file_is_one_line_not_torch_advice(bad_files, tmp_path, capsys):
    argv = ["--dry-run", "--arch", "resnet8", "--method", "ce", "--epochs", "1", "--warmup-epochs", "0",
            "--data-root", str(tmp_path / "absent"), "--output-dir", str(tmp_path / "run"),
            "--pretrained", str(bad_files / "pickled.pth")]
    with pytest.raises(SystemExit) as e:
        run_cli(trainer.main, argv)
    assert e.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "not a safe checkpoint" in line and "weights_only" not in line


# --------------------------------------------------------------------------- checkpoints at evaluation

IMG, C = 16, 4


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evaldata")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(4):
        (root / "t").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (IMG, IMG, 3), dtype=np.uint8)).save(root / f"t/{i}.png")
        lines.append(f"t/{i}.png {i % C}")
    (root / "test.txt").write_text("\n".join(lines) + "\n")
    return root


def _save(path: Path, state: dict) -> None:
    meta = {"arch": "resnet8", "method": "ce", "num_classes": C,
            "args": {"arch": "resnet8", "method": "ce", "norm": "mnist", "image_size": IMG, "resize_size": IMG}}
    if path.suffix == ".safetensors":
        save_checkpoint({k: v.contiguous() for k, v in state.items()}, path,
                        metadata={"arch": "resnet8", "method": "ce", "num_classes": str(C), "image_size": str(IMG),
                                  "resize_size": str(IMG), "norm": "mnist"})
    else:
        save_checkpoint({"model": state, **meta}, path)


def _eval(eval_data: Path, ckpt: Path, out: Path):
    return run_cli(evaluator.main, ["--checkpoint", str(ckpt), "--data-root", str(eval_data), "--test-list",
                                    str(eval_data / "test.txt"), "--workers", "0", "--batch-size", "4",
                                    "--output-dir", str(out)])


@pytest.mark.parametrize("kind,expected", [
    ("nan", "tensor {key} has non-finite values"),
    ("int32", "tensor {key} is int32, the model's {key} is float32"),
])
def test_broken_checkpoint_is_an_error_naming_the_tensor(kind, expected, eval_data, tmp_path, capsys):
    state = build_model("ce", "resnet8", C).state_dict()
    key = "backbone.conv1.weight"
    if kind == "nan":
        state[key] = state[key].clone()
        state[key].view(-1)[5] = float("nan")
        path = tmp_path / "nan.pth"
    else:
        state[key] = state[key].round().int()
        path = tmp_path / "int.safetensors"
    _save(path, state)
    with pytest.raises(SystemExit) as e:
        _eval(eval_data, path, tmp_path / "out")
    assert e.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(path) in line and expected.format(key=key) in line


def test_half_precision_safetensors_load_with_one_note(eval_data, tmp_path, capsys):
    model = build_model("ce", "resnet8", C).eval()
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    _save(tmp_path / "half.safetensors", state)
    result = _eval(eval_data, tmp_path / "half.safetensors", tmp_path / "out")
    out = capsys.readouterr().out
    n_half = sum(v.dtype == torch.float16 for v in state.values())
    assert out.count("half-precision tensors") == 1 and f"{n_half} half-precision tensors" in out
    assert result["num_samples"] == 4


# --------------------------------------------------------------------------- --help

PARSERS = {"train": build_train_parser, "eval": evaluator.build_eval_parser, "train_seg": build_seg_train_parser,
           "eval_seg": build_seg_eval_parser}


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_flag_has_help_and_its_default(name):
    p = PARSERS[name]()
    formatter = p._get_formatter()
    titles = [g.title for g in p._action_groups]
    assert len(titles) == len(set(titles)), titles
    for action in p._actions:
        if not action.option_strings or action.dest == "help":
            continue
        text = formatter._expand_help(action)
        assert text.strip(), f"{name} {action.option_strings[0]} has no help"
        if action.default is not None and action.default is not argparse.SUPPRESS:
            assert text.lower().count("(default") == 1, f"{name} {action.option_strings[0]}: {text}"
    assert "--debug" in {s for a in p._actions for s in a.option_strings}


def test_method_flags_have_help():
    for task in ("classification", "segmentation"):
        for method in all_methods(task):
            for f in method.flags:
                assert (f.kwargs.get("help") or "").strip(), f"{task} {method.name} {f.names[0]}"


def test_train_help_text():
    r = _run_tool("train", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    with_default = [a for a in build_train_parser()._actions
                    if a.option_strings and a.default not in (None, argparse.SUPPRESS) and a.dest != "help"]
    assert text.count("(default:") >= len(with_default)
    for snippet in ("--momentum MOMENTUM SGD momentum, in [0, 1) (default: 0.9)", "randcls_sim", "digits",
                    "timm's --smoothing", "the cross-entropy's label smoothing is --label-smoothing"):
        assert snippet in text, snippet
    assert "..." not in text.split("--aug AUG", 1)[1].split("--randaug-n", 1)[0]


# --------------------------------------------------------------------------- --amp on the CPU


@pytest.mark.parametrize("capability,noted", [("AVX2", True), ("DEFAULT", True), ("AVX512", False)])
def test_low_precision_on_a_cpu_without_native_support_is_noted(capability, noted, monkeypatch, capsys):
    from gpaco.engine.precision import resolve_amp

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    cpu = torch.device("cpu")
    assert resolve_amp("bf16", cpu, dry_run=False) == "bf16"
    out = capsys.readouterr().out
    assert (f"--amp bf16 on a CPU without AVX-512/AMX (torch reports {capability})" in out) is noted
    assert resolve_amp("none", cpu, dry_run=False) == "none" and capsys.readouterr().out == ""
    assert resolve_amp("fp16", torch.device("cuda"), dry_run=True) == "fp16"


def test_cpu_dry_run_computes_in_float32(demo_data, tmp_path, capsys):
    argv = demo_flags(demo_data) + ["--method", "ce", "--epochs", "1", "--warmup-epochs", "0", "--dry-run",
                                    "--amp", "fp16", "--output-dir", str(tmp_path / "run"), "--batch-size", "8"]
    result = run_cli(trainer.main, argv)
    out = capsys.readouterr().out
    assert out.count("dry run on the CPU: computing in float32 (--amp fp16 applies to the GPU run)") == 1
    assert result["dry_run"] and np.isfinite(result["train_loss"])
