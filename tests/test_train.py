"""tools/train.py and tools/eval.py end to end on the embedded MNIST-LT data (CPU)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpaco.classification import evaluate as evaluator, train as trainer
from gpaco.classification.task import check_batch_config, model_kwargs
from gpaco.classification.args import parse_train_args

ROOT = Path(__file__).resolve().parents[1]


def base_args(data, out, *extra):
    return [
        "--data-root", str(data), "--train-list", str(data / "train_small.txt"), "--val-list",
        str(data / "val.txt"), "--test-list", str(data / "test_small.txt"), "--arch", "resnet8",
        "--image-size", "32", "--resize-size", "32", "--norm", "mnist", "--batch-size", "32", "--lr", "0.05",
        "--warmup-epochs", "1", "--workers", "0", "--print-freq", "0", "--output-dir", str(out), *extra,
    ]


def gpaco_args(data, out, *extra):
    return base_args(data, out, "--method", "gpaco", "--aug", "sim_cifar_sim_cifar", "--queue-size", "64",
                     "--alpha", "0.05", *extra)


@pytest.mark.slow
def test_run_folder_contents_and_eval_matches(demo_data, tmp_path):
    out = tmp_path / "run"
    result = trainer.main(gpaco_args(demo_data, out, "--epochs", "2"))
    for name in ("args.yaml", "log.jsonl", "checkpoint.pth", "best.pth", "metrics.json", "per_class.png",
                 "per_class.csv"):
        assert (out / name).is_file(), name
    assert any(p.name.startswith("events.out.tfevents") for p in out.rglob("*"))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and all("val_top1" in r for r in log)
    metrics = json.loads((out / "metrics.json").read_text())
    n_test = len((demo_data / "test_small.txt").read_text().splitlines())
    assert metrics["num_samples"] == n_test == result["num_samples"]
    for key in ("top1", "top5", "many", "medium", "few", "per_class"):
        assert key in metrics
    # tools/eval.py on best.pth reproduces the end-of-training test metrics.
    ev = evaluator.main(["--checkpoint", str(out / "best.pth"), "--data-root", str(demo_data), "--test-list",
                         str(demo_data / "test_small.txt"), "--image-size", "32", "--resize-size", "32",
                         "--norm", "mnist", "--batch-size", "50", "--workers", "0", "--output-dir",
                         str(tmp_path / "eval")])
    for key in ("top1", "top5", "many", "medium", "few", "num_samples"):
        if metrics[key] is None:  # an empty group: null in metrics.json, NaN from eval
            assert math.isnan(ev[key]), key
        else:
            assert ev[key] == pytest.approx(metrics[key]), key
    assert (tmp_path / "eval" / "metrics.json").is_file()


@pytest.mark.slow
def test_resume_is_exact(demo_data, tmp_path):
    straight = tmp_path / "straight"
    trainer.main(gpaco_args(demo_data, straight, "--epochs", "4", "--seed", "3"))
    split = tmp_path / "split"
    r = trainer.main(gpaco_args(demo_data, split, "--epochs", "4", "--seed", "3", "--stop-after", "2"))
    assert r == {"stopped_at_epoch": 2}
    assert not (split / "metrics.json").exists()
    trainer.main(gpaco_args(demo_data, split, "--epochs", "4", "--seed", "3", "--resume", "auto"))
    a = torch.load(straight / "checkpoint.pth", weights_only=True)
    b = torch.load(split / "checkpoint.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 4
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k  # weights, BN stats and the queue
    assert json.loads((straight / "metrics.json").read_text()) == json.loads((split / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ce", "balanced_ce", "paco", "multitask"])
def test_every_method_trains(demo_data, tmp_path, method):
    aug = {"ce": "none", "balanced_ce": "none"}.get(method, "sim_cifar_sim_cifar")
    queue = [] if method in ("ce", "balanced_ce") else ["--queue-size", "64"]  # a queue flag is refused for CE
    result = trainer.main(base_args(demo_data, tmp_path / method, "--method", method, "--aug", aug,
                                    "--epochs", "1", *queue))
    assert result["num_samples"] > 0 and 0 <= result["top1"] <= 100


def test_dry_run_without_data_writes_nothing(tmp_path):
    out = tmp_path / "never"
    result = trainer.main(["--data-root", str(tmp_path / "absent"), "--train-list", str(tmp_path / "absent.txt"),
                           "--arch", "resnet8", "--method", "gpaco", "--num-classes", "10", "--dry-run",
                           "--output-dir", str(out), "--queue-size", "64", "--batch-size", "32"])
    assert result["dry_run"] is True and not out.exists()


# ------------------------------------------------------------------ bad input: one clear message each
def run_expecting_error(argv, capsys=None):
    with pytest.raises((SystemExit, ValueError)) as exc:
        trainer.main(argv)
    return str(exc.value)


def test_malformed_split_line_names_file_and_line(demo_data, tmp_path):
    bad = tmp_path / "bad.txt"
    lines = (demo_data / "train_small.txt").read_text().splitlines()
    lines[3] = "images/oops-no-label"
    bad.write_text("\n".join(lines) + "\n")
    msg = run_expecting_error(base_args(demo_data, tmp_path / "o", "--method", "ce", "--aug", "none",
                                        "--train-list", str(bad), "--epochs", "1"))
    assert "bad.txt:4" in msg


def test_label_out_of_range_names_file_and_line(demo_data, tmp_path):
    bad = tmp_path / "labels.txt"
    lines = (demo_data / "train_small.txt").read_text().splitlines()
    lines[1] = lines[1].split()[0] + " 12"
    bad.write_text("\n".join(lines) + "\n")
    msg = run_expecting_error(base_args(demo_data, tmp_path / "o", "--method", "ce", "--aug", "none",
                                        "--train-list", str(bad), "--num-classes", "10", "--epochs", "1"))
    assert "labels.txt:2" in msg and "12" in msg


def test_missing_image_names_the_file(demo_data, tmp_path):
    bad = tmp_path / "missing.txt"
    lines = (demo_data / "train_small.txt").read_text().splitlines()
    bad.write_text("\n".join(["images/train/0/does_not_exist.png 0"] + lines) + "\n")
    msg = run_expecting_error(base_args(demo_data, tmp_path / "o", "--method", "ce", "--aug", "none",
                                        "--train-list", str(bad), "--epochs", "1"))
    assert "does_not_exist.png" in msg


def test_queue_not_multiple_of_global_batch():
    args = parse_train_args(["--train-list", "x", "--method", "gpaco", "--queue-size", "100", "--batch-size", "64"])
    with pytest.raises(SystemExit, match="--queue-size K=100.*--batch-size 64"):
        check_batch_config(args, 1)


def test_batch_not_divisible_by_world_size():
    args = parse_train_args(["--train-list", "x", "--method", "ce", "--batch-size", "64"])
    with pytest.raises(SystemExit, match="--batch-size 64.*3"):
        check_batch_config(args, 3)


def test_device_batch_must_divide_the_per_process_batch():
    with pytest.raises(SystemExit, match="--device-batch 48 must divide --batch-size 128"):
        parse_train_args(["--train-list", "x", "--batch-size", "128", "--device-batch", "48"])
    args = parse_train_args(["--train-list", "x", "--method", "gpaco", "--batch-size", "128", "--device-batch", "32"])
    assert check_batch_config(args, 2) == 64
    with pytest.raises(SystemExit, match=r"--device-batch 32 must divide the per-process batch 16 \(--batch-size "
                                         r"128 / 8 process"):
        check_batch_config(args, 8)
    assert parse_train_args(["--train-list", "x", "--device-batch", "32", "--compile"]).compile  # one graph now
    with pytest.raises(SystemExit, match="--device-batch must be > 0"):
        parse_train_args(["--train-list", "x", "--device-batch", "0"])


@pytest.mark.parametrize("method", ["ce", "paco"])
def test_device_batch_trains_in_groups(demo_data, tmp_path, method, capsys):
    """Two steps with --device-batch 8 of a per-process batch 32 (4 virtual devices): the model
    gets the group size and trains; the log says how many devices are emulated."""
    extra = ["--aug", "none"] if method == "ce" else ["--aug", "sim_cifar_sim_cifar", "--queue-size", "64"]
    args = parse_train_args(base_args(demo_data, tmp_path / "o", "--method", method, "--device-batch", "8", *extra))
    assert model_kwargs(args)["device_batch"] == 8
    result = trainer.main(base_args(demo_data, tmp_path / "o", "--method", method, "--device-batch", "8",
                                    "--dry-run", "--dry-run-batch", "8", *extra))
    assert result["dry_run"] and result["train_loss"] > 0
    assert "--device-batch 8: 4 virtual devices" in capsys.readouterr().out


@pytest.mark.slow
def test_checkpoint_that_does_not_fit(demo_data, tmp_path):
    out = tmp_path / "ce"
    trainer.main(base_args(demo_data, out, "--method", "ce", "--aug", "none", "--epochs", "1"))
    with pytest.raises(SystemExit, match="best.pth does not fit the model"):
        evaluator.main(["--checkpoint", str(out / "best.pth"), "--arch", "resnet20", "--data-root",
                        str(demo_data), "--test-list", str(demo_data / "test_small.txt"), "--image-size", "32",
                        "--norm", "mnist", "--workers", "0"])
    # a resume into another architecture is refused before anything is overwritten
    before = (out / "checkpoint.pth").read_bytes()
    with pytest.raises(SystemExit, match=r"--resume: --arch 'resnet8' -> 'resnet20' change the model or the data"):
        trainer.main(base_args(demo_data, out, "--method", "ce", "--aug", "none", "--epochs", "2", "--arch",
                               "resnet20", "--resume", "auto"))  # tools/train.py: one error line, exit 2
    assert (out / "checkpoint.pth").read_bytes() == before


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_two_processes_counts_each_test_image_once(demo_data, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tools" / "train.py"),
           *gpaco_args(demo_data, out, "--epochs", "1", "--test-list", str(demo_data / "test.txt"))]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    n_test = len((demo_data / "test.txt").read_text().splitlines())
    assert metrics["num_samples"] == n_test
    assert "processes 2" in proc.stdout and "global batch 32 = 16 per process" in proc.stdout
