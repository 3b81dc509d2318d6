"""Adversarial training end to end (tools/train.py on the demo digits): an exact resume after
SIGTERM with the class matrix, AWP and the attack schedule in play, the weight average and
tools/average_weights.py, the two-view batch, and one-line errors for flags that cannot work."""
import json

import pytest
import torch

from conftest import demo_flags
from gpaco.checkpoint import load_checkpoint
from gpaco.classification import train as trainer
from gpaco.engine.args import FlagError
from gpaco.engine.preemption import FAULT_ENV
from gpaco.models.weight_average import EpochAverage, average_state_dicts
from tools import average_weights


def _train(demo_data, out, method, *extra):
    flags = demo_flags(demo_data)
    flags[flags.index("--norm") + 1] = "none"
    flags[flags.index("--image-size") + 1] = flags[flags.index("--resize-size") + 1] = "16"
    return trainer.main(flags + ["--method", method, "--batch-size", "32", "--epochs", "2", "--warmup-epochs", "0",
                                 "--lr", "0.05", "--seed", "5", "--awp-warmup", "2", "--output-dir", str(out), *extra])


@pytest.mark.slow
def test_sigterm_in_an_awp_epoch_then_resume_is_bit_identical(demo_data, tmp_path, monkeypatch):
    """IKL-AT on the two-view batch: SIGTERM at epoch 2 step 3 (AWP on, the class matrix of epoch
    1 in use, the radius at 2/2 of 8/255), --resume auto; the weights, the class statistics, the
    weight average and the metrics equal the uninterrupted run's."""
    straight, out = tmp_path / "straight", tmp_path / "stopped"
    extra = ("--aug", "cifar_crop_flip_cifar_autoaugment")
    _train(demo_data, straight, "ikl_at", *extra)
    monkeypatch.setenv(FAULT_ENV, "sigterm_step11")  # 8 steps per epoch: epoch 2, step 3
    stopped = _train(demo_data, out, "ikl_at", *extra)
    assert stopped == {"preempted": True, "signal": "SIGTERM", "epoch": 1, "step": 3}
    monkeypatch.delenv(FAULT_ENV)
    state = load_checkpoint(out / "checkpoint.pth")["method_state"]
    assert state["weight_average"]["count"] == 1 and state["class_accumulators"].sum().item() == pytest.approx(3 * 32)
    _train(demo_data, out, "ikl_at", *extra, "--resume", "auto")
    a, b = (load_checkpoint(d / "checkpoint.pth") for d in (straight, out))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in ("class_matrix", "class_accumulators"):
        assert torch.equal(a["method_state"][k], b["method_state"][k]), k
    assert not torch.allclose(a["method_state"]["class_matrix"], torch.full((10, 10), 0.1))
    avg_a, avg_b = a["method_state"]["weight_average"], b["method_state"]["weight_average"]
    assert avg_a["count"] == avg_b["count"] == 2
    for k in avg_a["average"]:
        assert torch.equal(avg_a["average"][k], avg_b["average"][k]), k
    assert json.loads((straight / "metrics.json").read_text()) == json.loads((out / "metrics.json").read_text())


def test_epoch_average_by_hand_and_from_files(tmp_path):
    w = [{"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(4)}, {"w": torch.tensor([3.0, 0.0]), "n": torch.tensor(8)},
         {"w": torch.tensor([0.0, 1.0]), "n": torch.tensor(12)}]
    avg = average_state_dicts(w, 0.9)
    s = [1.0, 2.0]
    for e in w[1:]:
        s = [0.1 * x + 0.9 * y for x, y in zip(e["w"].tolist(), s)]
    assert avg["w"].tolist() == pytest.approx(s)
    assert avg["n"].item() == pytest.approx(0.1 * 12 + 0.9 * (0.1 * 8 + 0.9 * 4))
    files = []
    for i, state in enumerate(w):
        files.append(str(tmp_path / f"ours-model-epoch{i + 1}.pt"))
        torch.save({f"module.{k}": v for k, v in state.items()}, files[-1])
    average_weights.main(["--epoch-files", *files, "--decay", "0.9", "--out", str(tmp_path / "swa.pth")])
    out = load_checkpoint(tmp_path / "swa.pth")["model"]
    assert out["w"].tolist() == pytest.approx(s) and out["n"].dtype == torch.int64 and out["n"].item() == 5  # round(5.16)
    with pytest.raises(FlagError, match="already exists"):
        average_weights.main(["--epoch-files", *files, "--out", str(tmp_path / "swa.pth")])
    with pytest.raises(ValueError, match="decay"):
        EpochAverage(1.0)


@pytest.mark.slow
def test_trades_run_writes_its_weight_average_as_a_checkpoint(demo_data, tmp_path):
    _train(demo_data, tmp_path / "trades", "trades_at", "--epochs", "2", "--at-budget", "low")
    ckpt = load_checkpoint(tmp_path / "trades" / "checkpoint.pth")
    average_weights.main([str(tmp_path / "trades")])
    averaged = load_checkpoint(tmp_path / "trades" / "averaged.pth")
    assert averaged["weight_average"]["epochs"] == 2 and averaged["method"] == "trades_at"
    expected = ckpt["method_state"]["weight_average"]["average"]
    for k, v in averaged["model"].items():
        assert v.dtype == ckpt["model"][k].dtype
        if v.is_floating_point():
            assert torch.equal(v, expected[k]), k
    # the averaged weights are neither epoch's
    assert not torch.equal(averaged["model"]["fc.weight"], ckpt["model"]["fc.weight"])
    with pytest.raises(Exception, match="holds no weight average"):
        ce = tmp_path / "ce"
        flags = demo_flags(demo_data) + ["--method", "ce", "--epochs", "1", "--output-dir", str(ce)]
        trainer.main(flags)
        average_weights.main([str(ce)])


@pytest.mark.parametrize("method,extra,message", [
    ("ikl_at", ["--norm", "mnist"], "use --norm none"),
    ("gkl_at", ["--accum-iter", "2"], "--accum-iter must be 1"),
    ("trades_at", ["--aug", "cifar_crop_flip_cifar_autoaugment"], "trains on one view"),
    ("pgd_at", ["--at-epsilon", "300"], "--at-epsilon must be in"),
    ("ikl_at", ["--at-budget", "medium"], "invalid choice"),
])
def test_flags_that_cannot_work_are_one_line(demo_data, tmp_path, method, extra, message, capsys):
    flags = demo_flags(demo_data) + ["--method", method, "--output-dir", str(tmp_path / "x"), "--norm", "none"]
    with pytest.raises((FlagError, SystemExit, ValueError)) as info:
        trainer.main(flags + extra)
    said = str(info.value) + capsys.readouterr().err
    assert message in said
    assert not (tmp_path / "x").exists()
