"""tools/eval.py: ensembles, --save-logits (also under torchrun), the per-class report, compare_runs."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import socket
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gpaco.classification import evaluate as evaluator
from gpaco.checkpoint import save_checkpoint
from gpaco.methods.rebuild import build_model

ROOT = Path(__file__).resolve().parents[1]
IMG = 16
C = 4


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tools_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """4 classes; train counts 150/40/10/3 (many/medium/few/few) as a list; 7 test images."""
    root = tmp_path_factory.mktemp("evaldata")
    rng = np.random.default_rng(0)

    def png(rel):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (IMG, IMG, 3), dtype=np.uint8)).save(root / rel)

    test = []
    for i, c in enumerate([0, 1, 2, 3, 0, 1, 2]):
        png(f"test/{i}.png")
        test.append(f"test/{i}.png {c}")
    (root / "test.txt").write_text("\n".join(test) + "\n")
    png("train/x.png")  # the train list only sets the counts: one file, listed many times
    train = [f"train/x.png {c}" for c, n in enumerate([150, 40, 10, 3]) for _ in range(n)]
    (root / "train.txt").write_text("\n".join(train) + "\n")
    return root


def _randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if name.endswith("running_var")
                        else torch.randn(t.shape, generator=g) * 0.3)
    return model.eval()


def ours(path: Path, method: str, arch: str, seed: int):
    model = _randomize(build_model(method, arch, C, queue_size=16, proj_dim=8), seed)
    save_checkpoint({"model": model.state_dict(), "arch": arch, "method": method, "num_classes": C,
                     "args": {"arch": arch, "method": method, "norm": "mnist", "image_size": IMG, "resize_size": IMG,
                              "queue_size": 16, "proj_dim": 8}}, path)
    return model


def run_eval(data, out, *flags):
    return evaluator.main([*flags, "--data-root", str(data), "--test-list", str(data / "test.txt"), "--workers", "0",
                           "--batch-size", "4", "--output-dir", str(out), "--save-logits", str(out / "logits.npy")])


def test_two_model_ensemble_equals_the_sum_of_its_members(data, tmp_path):
    ours(tmp_path / "a.pth", "ce", "resnet8", 0)
    ours(tmp_path / "b.pth", "gpaco", "resnet20", 1)
    ra = run_eval(data, tmp_path / "a", "--checkpoint", str(tmp_path / "a.pth"))
    rb = run_eval(data, tmp_path / "b", "--checkpoint", str(tmp_path / "b.pth"))
    ens = run_eval(data, tmp_path / "ab", "--checkpoint", str(tmp_path / "a.pth"),
                   "--checkpoint", str(tmp_path / "b.pth"))
    la, lb, lab = (np.load(tmp_path / d / "logits.npy") for d in ("a", "b", "ab"))
    assert la.shape == lb.shape == lab.shape == (7, C) and not np.array_equal(la, lb)
    np.testing.assert_array_equal(lab, la + lb)
    labels = np.array([0, 1, 2, 3, 0, 1, 2])
    assert ens["top1"] == pytest.approx(100 * np.mean(lab.argmax(1) == labels))
    assert ens["ensemble"]["archs"] == ["resnet8", "resnet20"]
    assert [c["method"] for c in ens["checkpoints"]] == ["ce", "gpaco"]
    assert ra["num_samples"] == rb["num_samples"] == ens["num_samples"] == 7


def test_an_output_folder_with_results_is_refused_unless_overwrite(data, tmp_path, capsys):
    """A second evaluation into the same folder is one error line before anything is evaluated;
    the first results stay, byte for byte; --overwrite replaces them."""
    from gpaco.engine.cli import run_cli

    ours(tmp_path / "a.pth", "ce", "resnet8", 0)
    ours(tmp_path / "b.pth", "ce", "resnet8", 1)
    run_eval(data, tmp_path / "out", "--checkpoint", str(tmp_path / "a.pth"))
    first = (tmp_path / "out" / "metrics.json").read_bytes()
    capsys.readouterr()
    argv = ["--checkpoint", str(tmp_path / "b.pth"), "--data-root", str(data), "--test-list", str(data / "test.txt"),
            "--workers", "0", "--output-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exc:
        run_cli(evaluator.main, argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'out'} already holds results (metrics.json of "), err
    assert err[0].endswith("give another --output-dir, or --overwrite to replace them"), err
    assert (tmp_path / "out" / "metrics.json").read_bytes() == first
    with pytest.raises(SystemExit, match="no such file"):  # a mistyped checkpoint makes no folder
        evaluator.main([*argv[:1], str(tmp_path / "typo" / "best.pth"), *argv[2:-1], str(tmp_path / "elsewhere")])
    assert not (tmp_path / "typo").exists() and not (tmp_path / "elsewhere").exists()
    result = evaluator.main([*argv, "--overwrite"])
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["checkpoint"] == str(tmp_path / "b.pth")
    assert result["num_samples"] == 7


def _original_name(key: str) -> str:
    """Our GPaCo state-dict name -> the original GPaCo's (without the module. prefix)."""
    for ours_, theirs in (("encoder.backbone.", "encoder_q."), ("encoder.projection.", "encoder_q.fc."),
                          ("fc.", "linear.")):
        if key.startswith(ours_):
            return theirs + key[len(ours_):]
    return {"queue.features": "queue", "queue.labels": "queue_l", "queue.ptr": "queue_ptr"}[key]


def test_ensemble_archs_in_checkpoint_order(data, tmp_path):
    """Files without metadata (the original's ResNets with no 'arch'): one --arch per --checkpoint."""
    members = []
    for name, arch, seed in (("x.pth.tar", "resnet8", 2), ("y.pth.tar", "resnet20", 3)):
        model = _randomize(build_model("gpaco", arch, C, queue_size=16, proj_dim=8), seed)
        sd = OrderedDict(("module." + _original_name(k), v) for k, v in model.state_dict().items())
        torch.save({"epoch": 1, "state_dict": sd}, tmp_path / name)
        members.append(model)
    flags = ["--checkpoint", str(tmp_path / "x.pth.tar"), "--checkpoint", str(tmp_path / "y.pth.tar"),
             "--norm", "mnist", "--image-size", str(IMG), "--resize-size", str(IMG)]
    with pytest.raises(SystemExit, match="does not name its architecture"):
        run_eval(data, tmp_path / "e0", *flags)
    with pytest.raises(SystemExit, match="x.pth.tar does not fit the model"):
        run_eval(data, tmp_path / "e1", *flags, "--arch", "resnet20", "--arch", "resnet8")
    res = run_eval(data, tmp_path / "e2", *flags, "--arch", "resnet8", "--arch", "resnet20")
    assert [c["layout"] for c in res["checkpoints"]] == ["gpaco_original"] * 2
    sep = [run_eval(data, tmp_path / f"m{i}", "--checkpoint", str(tmp_path / n), "--arch", a, "--norm", "mnist",
                    "--image-size", str(IMG), "--resize-size", str(IMG))
           for i, (n, a) in enumerate((("x.pth.tar", "resnet8"), ("y.pth.tar", "resnet20")))]
    assert all(s["num_samples"] == 7 for s in sep)
    np.testing.assert_array_equal(np.load(tmp_path / "e2" / "logits.npy"),
                                  np.load(tmp_path / "m0" / "logits.npy") + np.load(tmp_path / "m1" / "logits.npy"))


def test_per_class_report_and_compare_runs(data, tmp_path, capsys, monkeypatch):
    ours(tmp_path / "a.pth", "ce", "resnet8", 0)
    ours(tmp_path / "b.pth", "ce", "resnet8", 5)
    for name in ("a", "b"):
        run_eval(data, tmp_path / name, "--checkpoint", str(tmp_path / f"{name}.pth"), "--train-list",
                 str(data / "train.txt"))
    rows = list(csv.DictReader((tmp_path / "a" / "per_class.csv").open()))
    assert list(rows[0]) == ["class", "train_count", "test_count", "accuracy", "precision", "recall"]
    assert [int(r["train_count"]) for r in rows] == [150, 40, 10, 3]
    assert [int(r["test_count"]) for r in rows] == [2, 2, 2, 1]
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert [float(r["recall"]) for r in rows] == pytest.approx(metrics["per_class_recall"], abs=1e-4)
    assert np.asarray(metrics["confusion"]).sum() == 7
    for f in ("per_class.png", "confusion.png", "logits.npy"):
        assert (tmp_path / "a" / f).is_file(), f
    # without train counts: the report is still written, the counts left empty
    run_eval(data, tmp_path / "c", "--checkpoint", str(tmp_path / "a.pth"))
    rows = list(csv.DictReader((tmp_path / "c" / "per_class.csv").open()))
    assert all(r["train_count"] == "" for r in rows) and (tmp_path / "c" / "per_class.png").is_file()
    capsys.readouterr()
    table = _tool("compare_runs").main([str(tmp_path / "a"), str(tmp_path / "b" / "metrics.json"), "--names", "A",
                                        "B", "--plot", str(tmp_path / "cmp.png")])
    out = capsys.readouterr().out
    assert table in out and (tmp_path / "cmp.png").is_file()
    ma = json.loads((tmp_path / "a" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "b" / "metrics.json").read_text())
    lines = {ln.split()[0]: ln for ln in table.splitlines()[1:]}
    for key in ("many", "medium", "few"):
        assert f"{ma[key]:.2f}" in lines[key] and f"{mb[key]:.2f}" in lines[key]
        assert f"{mb[key] - ma[key]:.2f}" in lines[key]
    assert "(1 cls)" in lines["many"] and "(2 cls)" in lines["few"]
    monkeypatch.chdir(tmp_path / "c")  # the default plot goes beside run B, not into the current folder
    _tool("compare_runs").main([str(tmp_path / "a"), str(tmp_path / "b" / "metrics.json"), "--names", "A", "B"])
    assert (tmp_path / "b" / "compare_A_vs_B.png").is_file() and not (tmp_path / "c" / "compare_A_vs_B.png").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.distributed
def test_save_logits_order_under_two_process_torchrun(data, tmp_path):
    """Rank r evaluates images r, r+2, ...; the saved logits are back in test-list order (7 images: 4 + 3)."""
    ours(tmp_path / "a.pth", "gpaco", "resnet8", 0)
    single = run_eval(data, tmp_path / "one", "--checkpoint", str(tmp_path / "a.pth"))
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tools" / "eval.py"), "--checkpoint", str(tmp_path / "a.pth"), "--data-root", str(data),
           "--test-list", str(data / "test.txt"), "--workers", "0", "--batch-size", "4", "--output-dir",
           str(tmp_path / "two"), "--save-logits", str(tmp_path / "two" / "logits.npy")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    one = np.load(tmp_path / "one" / "logits.npy")
    two = np.load(tmp_path / "two" / "logits.npy")
    assert two.shape == one.shape == (7, C)
    # per-image results do not depend on the batch (BN in eval mode); allow float noise of other batch shapes
    np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-5)
    assert (two.argmax(1) == one.argmax(1)).all()
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["num_samples"] == 7 and metrics["top1"] == pytest.approx(single["top1"])


def test_an_explicit_train_list_wins_over_the_checkpoints_class_counts(data, tmp_path):
    """The checkpoint's training counts group the classes unless --train-list names a split."""
    from gpaco.checkpoint import load_checkpoint

    ours(tmp_path / "a.pth", "ce", "resnet8", 0)
    ckpt = load_checkpoint(str(tmp_path / "a.pth"))
    save_checkpoint({**ckpt, "class_counts": [7, 7, 7, 7]}, tmp_path / "counted.pth")
    run_eval(data, tmp_path / "own", "--checkpoint", str(tmp_path / "counted.pth"))
    run_eval(data, tmp_path / "given", "--checkpoint", str(tmp_path / "counted.pth"), "--train-list",
             str(data / "train.txt"))
    counts = {name: [int(r["train_count"]) for r in csv.DictReader((tmp_path / name / "per_class.csv").open())]
              for name in ("own", "given")}
    assert counts == {"own": [7, 7, 7, 7], "given": [150, 40, 10, 3]}
