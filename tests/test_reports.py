"""Readable run outputs: per-class fairness figures, summary.csv, TensorBoard tags, the figures of a run."""
import json
import math

import pytest
import torch

from conftest import demo_flags
from gpaco.classification.report import fairness_line, plot_curves
from gpaco.engine.logging import RunLogger, read_summary, tensorboard_tag
from gpaco.metrics import ClassificationMeter, class_fairness

PNG = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- fairness figures


def test_class_fairness_hand_computed():
    out = class_fairness([1.0, 0.5, 0.0])
    # mean 0.5; deviations 0.5, 0, -0.5: variance (0.25 + 0 + 0.25) / 3 = 1/6
    assert out["worst_class_acc"] == 0.0
    assert out["class_acc_std"] == pytest.approx(math.sqrt(1 / 6))  # 0.4082
    assert out["class_acc_cv"] == pytest.approx(math.sqrt(1 / 6) / 0.5)  # 0.8165
    assert "many_few_gap" not in out  # needs the training counts


def test_class_fairness_skips_absent_classes_and_takes_the_shot_gap():
    # classes 0..3 trained on 200 / 150 / 50 / 5 images: many {0, 1}, medium {2}, few {3}; class 4 has no test sample
    out = class_fairness([90.0, 70.0, 50.0, 10.0, float("nan")], [200, 150, 50, 5, 3])
    assert out["worst_class_acc"] == 10.0
    assert out["class_acc_std"] == pytest.approx(math.sqrt((35 ** 2 + 15 ** 2 + 5 ** 2 + 45 ** 2) / 4))  # mean 55
    assert out["class_acc_cv"] == pytest.approx(out["class_acc_std"] / 55.0)
    assert out["many_few_gap"] == pytest.approx(80.0 - 10.0)  # many = mean(90, 70)


def test_class_fairness_worked_example_of_the_docs():
    out = class_fairness([100.0, 50.0, 0.0], [300, 50, 5])  # docs/method.md#metrics
    assert [round(out[k], 3) for k in ("worst_class_acc", "class_acc_std", "class_acc_cv", "many_few_gap")] == \
        [0.0, 40.825, 0.816, 100.0]
    flat = class_fairness([50.0, 50.0, 50.0], [300, 50, 5])
    assert (flat["worst_class_acc"], flat["class_acc_std"], flat["class_acc_cv"], flat["many_few_gap"]) == (50, 0, 0, 0)


def test_class_fairness_undefined_cases():
    assert class_fairness([0.0, 0.0])["class_acc_cv"] is None  # mean 0: no coefficient of variation
    assert class_fairness([50.0, 40.0], [200, 50])["many_few_gap"] is None  # no few class
    assert class_fairness([float("nan")]) == {"worst_class_acc": None, "class_acc_std": None, "class_acc_cv": None}


def test_meter_reports_fairness_and_confusion():
    meter = ClassificationMeter(3)
    logits = torch.eye(3)[[0, 0, 1, 0, 2, 0]]  # predictions 0 0 1 0 2 0
    meter.update(logits, torch.tensor([0, 0, 1, 1, 2, 2]))  # per class: 100, 50, 50 %
    out = meter.compute([300, 50, 5])
    assert out["worst_class_acc"] == pytest.approx(50.0)
    assert out["class_acc_std"] == pytest.approx(math.sqrt(((100 / 3) ** 2 + 2 * (50 / 3) ** 2) / 3))  # mean 66.7
    assert out["many_few_gap"] == pytest.approx(50.0)
    assert out["confusion"] == [[2, 0, 0], [1, 1, 0], [1, 0, 1]]
    line = fairness_line(out)
    assert line.startswith("per class: worst 50.00 | std 23.57 | CV ") and line.endswith("many - few 50.00")
    assert fairness_line({"worst_class_acc": None}) == "per class: no class has a test sample"


def test_compare_tables_show_the_fairness_figures():
    from gpaco.classification.compare import compare_table, side_by_side_table

    def run(per_class, train):
        metrics = {"top1": 50.0, "per_class": per_class, **class_fairness(per_class, train)}
        return {"metrics": metrics, "per_class": per_class, "train_counts": train}

    a, b = run([100.0, 50.0, 0.0], [300, 50, 5]), run([60.0, 50.0, 40.0], [300, 50, 5])
    lines = {ln[:16].strip(): ln.split()[-3:] for ln in compare_table(a, b).splitlines()[1:]}
    assert lines["worst class acc"] == ["0.00", "40.00", "40.00"]
    assert lines["gap many - few"] == ["100.00", "20.00", "-80.00"]
    assert lines["per-class CV"] == ["0.82", "0.16", "-0.65"]
    table = side_by_side_table([a, b], ["A", "B"])
    assert [ln.split()[-2:] for ln in table.splitlines() if ln.startswith("worst class acc")] == [["0.00", "40.00"]]


# --------------------------------------------------------------------------- summary.csv and TensorBoard tags


def test_tensorboard_tags_are_grouped():
    assert [tensorboard_tag(k) for k in ("train_loss", "val_top1", "test_worst_class_acc", "lr", "skipped_images",
                                         "val/miou")] == \
        ["train/loss", "val/top1", "test/worst_class_acc", "lr", "train/skipped_images", "val/miou"]


def test_summary_csv_one_row_per_step_and_resume(tmp_path):
    with RunLogger(tmp_path, enabled=True) as log:
        log.log_epoch({"epoch": 1, "train_loss": 2.0, "lr": 0.1})
        log.log_epoch({"epoch": 2, "train_loss": 1.5, "lr": 0.1, "val_top1": 40.0})  # new column: header rewritten
        log.log_epoch({"epoch": 3, "train_loss": 1.2, "lr": 0.1, "val_top1": 45.0, "per_class": [1, 2]})
    text = (tmp_path / "summary.csv").read_text()
    assert text.splitlines()[0] == "epoch,train_loss,lr,val_top1" and text.count("epoch") == 1
    # the checkpoint was at epoch 2; the resumed run logs epoch 3 again, then 4: no duplicate
    with RunLogger(tmp_path, enabled=True) as log:
        log.log_epoch({"epoch": 3, "train_loss": 1.1, "lr": 0.05, "val_top1": 50.0})
        log.log_epoch({"epoch": 4, "train_loss": 1.0, "lr": 0.05})
    rows = read_summary(tmp_path / "summary.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert [r["val_top1"] for r in rows] == ["", "40.0", "50.0", ""] and rows[2]["train_loss"] == "1.1"
    # a line cut short by a crash is skipped
    with open(tmp_path / "summary.csv", "a") as f:
        f.write("5,0.9")
    assert len(read_summary(tmp_path / "summary.csv")) == 4


def test_summary_csv_merges_records_of_one_iteration(tmp_path):
    with RunLogger(tmp_path, enabled=True) as log:  # segmentation: training and validation at the same iteration
        log.log_epoch({"iter": 100, "loss": 0.5, "lr": 0.01})
        log.log_epoch({"iter": 100, "val_miou": 30.0})
        log.log_epoch({"iter": 200, "loss": 0.4, "lr": 0.009})
    rows = read_summary(tmp_path / "summary.csv")
    assert [(r["iter"], r["loss"], r["val_miou"]) for r in rows] == [("100", "0.5", "30.0"), ("200", "0.4", "")]


def test_plot_curves(tmp_path):
    rows = [{"epoch": "1", "train_loss": "2.0", "val_top1": "", "val_many": ""},
            {"epoch": "2", "train_loss": "1.5", "val_top1": "40", "val_many": "60", "val_few": "10"}]
    assert plot_curves(rows, str(tmp_path / "curves.png"))
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG
    assert not plot_curves([], str(tmp_path / "none.png")) and not (tmp_path / "none.png").exists()


# --------------------------------------------------------------------------- a tiny training run


@pytest.fixture(scope="module")
def run_dir(demo_data, tmp_path_factory):
    """Two CE epochs on the full demo train list (so the many group is not empty), stopped after
    the first and resumed: a few seconds."""
    from gpaco.classification import train as trainer

    out = tmp_path_factory.mktemp("reports") / "run"
    flags = demo_flags(demo_data) + ["--train-list", str(demo_data / "train.txt"), "--method", "ce",
                                     "--epochs", "2", "--batch-size", "64", "--lr", "0.05", "--warmup-epochs", "0",
                                     "--output-dir", str(out)]
    assert trainer.main(flags + ["--stop-after", "1"]) == {"stopped_at_epoch": 1}
    trainer.main(flags + ["--resume", "auto"])
    return out


def test_training_writes_readable_outputs(run_dir):
    for name in ("curves.png", "confusion.png", "per_class.png", "reliability.png"):
        assert (run_dir / name).read_bytes()[:8] == PNG, name
    rows = read_summary(run_dir / "summary.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]  # the resumed run continued the file
    assert (run_dir / "summary.csv").read_text().count("epoch,") == 1
    for key in ("train_loss", "lr", "val_top1", "val_many", "val_few", "val_worst_class_acc", "val_class_acc_cv"):
        assert all(r[key] != "" for r in rows), key
    metrics = json.loads((run_dir / "metrics.json").read_text())
    want = class_fairness(metrics["per_class"], [int(r) for r in _train_counts(run_dir)])
    for key, value in want.items():
        assert metrics[key] == pytest.approx(value), key
    assert metrics["many_few_gap"] == pytest.approx(metrics["many"] - metrics["few"])


def _train_counts(run_dir):
    return [line.split(",")[1] for line in (run_dir / "per_class.csv").read_text().splitlines()[1:]]


def test_tensorboard_tags_of_a_run(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in run_dir.glob("events.out.tfevents*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"lr", "train/loss", "train/top1", "val/top1", "val/few", "val/worst_class_acc", "test/top1",
            "test/class_acc_std", "test/many_few_gap"} <= tags
    assert all(t == "lr" or t.split("/")[0] in ("train", "val", "test") for t in tags), tags


def test_eval_prints_and_records_fairness(run_dir, demo_data, tmp_path, capsys):
    from gpaco.classification import evaluate as evaluator

    capsys.readouterr()
    ev = evaluator.main(["--checkpoint", str(run_dir / "best.pth"), *demo_flags(demo_data, lists=False),
                         "--test-list", str(demo_data / "test_small.txt"), "--output-dir", str(tmp_path)])
    assert fairness_line(ev) in capsys.readouterr().out
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["worst_class_acc"] == pytest.approx(min(a for a in saved["per_class"] if a is not None))
    assert (tmp_path / "confusion.png").read_bytes()[:8] == PNG
