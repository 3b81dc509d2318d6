"""Checkpoint selection on the mean per-class accuracy (--select-metric, default mean_class_acc):
on a balanced val split it is the top-1, so the paper recipes select exactly as before; on an
imbalanced one the two choose differently; the choice is recorded and a resume keeps it."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import demo_flags
from gpaco.checkpoint import load_checkpoint, save_checkpoint
from gpaco.classification import train as trainer
from gpaco.classification.task import ClassificationTask, _balanced
from gpaco.metrics import ClassificationMeter


def run_flags(demo_data, out, *extra):
    return [*demo_flags(demo_data), "--method", "ce", "--batch-size", "32", "--lr", "0.05", "--warmup-epochs", "0",
            "--output-dir", str(out), *extra]


def meter_of(pred_by_class, num_classes=10):
    """A meter fed one-hot logits: ``pred_by_class[c]`` = the predicted class of each val image of class c."""
    meter = ClassificationMeter(num_classes)
    targets = torch.tensor([c for c, preds in pred_by_class.items() for _ in preds])
    preds = torch.tensor([p for preds in pred_by_class.values() for p in preds])
    meter.update(torch.nn.functional.one_hot(preds, num_classes).float(), targets)
    return meter.compute(train_counts=[200, 50, 5] + [5] * (num_classes - 3))


# Imbalanced val (8 images of class 0, 2 of class 1), by hand: epoch 1 predicts class 0 for all,
# top-1 8/10 = 80 %, mean per class (100 + 0) / 2 = 50 %; epoch 2 gets 5 of class 0 and both of
# class 1, top-1 7/10 = 70 %, mean per class (62.5 + 100) / 2 = 81.25 %.
EPOCH_1 = {0: [0] * 8, 1: [0, 0]}
EPOCH_2 = {0: [0] * 5 + [1] * 3, 1: [1, 1]}


def test_the_hand_made_case():
    one, two = meter_of(EPOCH_1), meter_of(EPOCH_2)
    assert (one["top1"], one["mean_class_acc"]) == (80.0, 50.0)
    assert (two["top1"], two["mean_class_acc"]) == (70.0, 81.25)


def test_balanced_val_selects_exactly_as_top1(demo_data, tmp_path):
    """val_small: 10 images of each digit. The default and --select-metric top1 make the same run:
    the same best epoch, best.pth under best_top1, the same weights; only the recorded flag differs."""
    results = {}
    for metric in ("mean_class_acc", "top1"):
        out = tmp_path / metric
        flags = run_flags(demo_data, out, "--epochs", "2") + (["--select-metric", metric] if metric == "top1" else [])
        results[metric] = (trainer.main(flags), load_checkpoint(out / "best.pth"),
                           json.loads((out / "metrics.json").read_text()),
                           [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()])
    (mean, mean_best, mean_json, mean_log), (top, top_best, top_json, top_log) = results.values()
    assert mean_json["select_metric"] == "mean_class_acc" and top_json["select_metric"] == "top1"
    assert mean_best["args"]["select_metric"] == "mean_class_acc"
    assert mean["selected_epoch"] == top["selected_epoch"] and mean["selection"] == top["selection"]
    assert mean["selection"].startswith("best val top-1 ")
    assert mean_best["best_top1"] == top_best["best_top1"] and "best_mean_class_acc" not in mean_best
    assert all(torch.equal(mean_best["model"][k], top_best["model"][k]) for k in top_best["model"])
    # every epoch's mean per-class accuracy is its top-1 on this balanced split
    assert [r["val_mean_class_acc"] for r in mean_log] == pytest.approx([r["val_top1"] for r in top_log], abs=1e-9)


@pytest.mark.parametrize("metric, epoch, selection", [
    ("top1", 1, "best val top-1 80.00 at epoch 1"),
    ("mean_class_acc", 2, "best val mean per-class accuracy 81.25 at epoch 2"),
])
def test_imbalanced_val_selects_on_the_chosen_metric(demo_data, tmp_path, monkeypatch, metric, epoch, selection):
    """An imbalanced val list (train_small) whose evaluations are the hand-made case above."""
    scripted = [meter_of(EPOCH_1), meter_of(EPOCH_2)]
    evaluate = ClassificationTask.evaluate

    def fake_evaluate(self, ctx, loader, **kw):
        return scripted.pop(0) if loader is self.val_dl else evaluate(self, ctx, loader, **kw)

    monkeypatch.setattr(ClassificationTask, "evaluate", fake_evaluate)
    out = tmp_path / "run"
    flags = run_flags(demo_data, out, "--epochs", "2", "--select-metric", metric)
    flags[flags.index("--val-list") + 1] = str(demo_data / "train_small.txt")
    result = trainer.main(flags)
    best = load_checkpoint(out / "best.pth")
    assert result["selected_epoch"] == epoch == best["epoch"] and result["selection"] == selection
    assert best[f"best_{metric}"] == {"top1": 80.0, "mean_class_acc": 81.25}[metric]
    assert json.loads((out / "metrics.json").read_text())["select_metric"] == metric


def test_balanced_means_every_present_class_has_as_many_images(demo_data):
    from gpaco.data import SplitDataset

    assert _balanced(SplitDataset(demo_data / "val_small.txt", demo_data))
    assert not _balanced(SplitDataset(demo_data / "train_small.txt", demo_data))
    assert _balanced(None)


def test_a_resume_keeps_the_runs_select_metric(demo_data, tmp_path, capsys):
    out = tmp_path / "run"
    trainer.main(run_flags(demo_data, out, "--epochs", "2", "--stop-after", "1"))
    assert load_checkpoint(out / "checkpoint.pth")["args"]["select_metric"] == "mean_class_acc"
    with pytest.raises(SystemExit) as exc:
        trainer.cli(run_flags(demo_data, out, "--epochs", "2", "--resume", "auto", "--select-metric", "top1"))
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: --resume: --select-metric top1, but the run chose its best checkpoint so far on mean_class_acc; "
        "resume with --select-metric mean_class_acc (or leave it out), or start a new run in another --output-dir")
    # a checkpoint from before the flag selected on top-1: a resume keeps that
    ckpt = load_checkpoint(out / "checkpoint.pth")
    del ckpt["args"]["select_metric"]
    save_checkpoint(ckpt, out / "checkpoint.pth")
    with pytest.raises(SystemExit, match="but the run chose its best checkpoint so far on top1"):
        trainer.main(run_flags(demo_data, out, "--epochs", "2", "--resume", "auto", "--select-metric",
                               "mean_class_acc"))
    result = trainer.main(run_flags(demo_data, out, "--epochs", "2", "--resume", "auto"))
    assert result["select_metric"] == "top1" and result["selection"].startswith("best val top-1 ")
