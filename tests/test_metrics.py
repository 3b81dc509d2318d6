import json
import math

import numpy as np
import pytest
import torch

from gpaco.data.robustness import ALEXNET_ERRORS, CORRUPTIONS, IMAGENET_R_INDICES
from gpaco.metrics import (
    ClassificationMeter,
    SegMeter,
    ShotSplit,
    class_accuracy,
    confusion_matrix,
    corruption_errors,
    format_accuracy,
    imagenet_r_mask,
    mce_normalised_by,
    shot_accuracy,
    shot_groups,
    topk_correct,
)


@pytest.fixture(scope="module")
def shot_ref(refvectors):
    return json.loads((refvectors / "shot_acc.json").read_text())


# ---------------------------------------------------------------- shot split


def test_shot_groups_thresholds():
    g = shot_groups([150, 101, 100, 60, 20, 19, 5, 1])
    assert g.tolist() == ["many", "many", "medium", "medium", "medium", "few", "few", "few"]
    assert ShotSplit(10, 5).groups([11, 10, 5, 4]).tolist() == ["many", "medium", "medium", "few"]
    masks = ShotSplit().masks(torch.tensor([200, 50, 3]))
    assert [m.tolist() for m in masks.values()] == [[True, False, False], [False, True, False], [False, False, True]]


def test_shot_accuracy_matches_reference(shot_ref):
    out = shot_accuracy(shot_ref["preds"], shot_ref["test_labels"], shot_ref["train_class_counts"])
    for g in ("many", "medium", "few"):
        assert out[g] == pytest.approx(shot_ref[g], abs=1e-12)
    assert (out["many_classes"], out["medium_classes"], out["few_classes"]) == (2, 3, 3)


def test_meter_matches_shot_reference(shot_ref):
    preds = torch.tensor(shot_ref["preds"])
    labels = torch.tensor(shot_ref["test_labels"])
    logits = torch.nn.functional.one_hot(preds, 8).float()
    meter = ClassificationMeter(8)
    for i in range(0, len(labels), 7):  # uneven batches
        meter.update(logits[i:i + 7], labels[i:i + 7])
    meter.all_reduce()  # no process group: no-op
    out = meter.compute(shot_ref["train_class_counts"])
    assert out["num_samples"] == 80
    for g in ("many", "medium", "few"):
        assert out[g] == pytest.approx(100 * shot_ref[g], abs=1e-10)
    assert out["top1"] == pytest.approx(100 * (preds == labels).float().mean().item())


def test_empty_group_reports_nan_and_size():
    """An empty group has no accuracy: NaN (printed "—", stored null), not the original's 0.0."""
    out = shot_accuracy([0, 1, 1], [0, 1, 1], [500, 300])  # no medium/few classes
    assert out["many"] == 1.0 and math.isnan(out["medium"]) and math.isnan(out["few"])
    assert (out["many_classes"], out["medium_classes"], out["few_classes"]) == (2, 0, 0)
    # a class absent from the test labels does not count in its group
    out = shot_accuracy([0, 0], [0, 0], [500, 5])
    assert math.isnan(out["few"]) and out["few_classes"] == 0
    assert [format_accuracy(v) for v in (out["many"] * 100, out["few"], None)] == ["100.00", "—", "—"]


def test_cifar10_lt_has_no_few_group_anywhere(tmp_path, capsys):
    """CIFAR-10-LT (imbalance 100: 5000 .. 50 images) has no few-shot class: the meter's few is
    NaN, metrics.json holds null, and the tables print "—" with no error."""
    import json
    import subprocess
    import sys

    from gpaco.data.cifar_lt import lt_class_counts
    from gpaco.engine.logging import write_json

    counts = lt_class_counts(5000, 10, 0.01)
    assert min(counts) >= 20  # no few-shot class
    meter = ClassificationMeter(10)
    meter.update(torch.eye(10), torch.arange(10))
    m = meter.compute(counts)
    assert math.isnan(m["few"]) and m["few_classes"] == 0 and m["many"] == 100.0
    assert m["many_few_gap"] is None
    run = tmp_path / "run"
    run.mkdir()
    write_json(str(run / "metrics.json"), m)
    assert json.loads((run / "metrics.json").read_text())["few"] is None
    proc = subprocess.run([sys.executable, "tools/summarize_runs.py", str(run)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| run "))
    assert row.split(" | ")[5] == "—", row


def test_class_accuracy_nan_for_absent():
    acc, counts = class_accuracy(torch.tensor([0, 1, 0, 2]), torch.tensor([0, 1, 1, 2]), 4)
    assert counts.tolist() == [1, 2, 1, 0]
    np.testing.assert_allclose(acc[:3], [1.0, 0.5, 1.0])
    assert math.isnan(acc[3])
    with pytest.raises(ValueError, match="targets"):
        class_accuracy([0], [4], 4)


# ---------------------------------------------------------------- top-k / meter


def test_topk_correct_bruteforce_and_clipping():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=g)
    targets = torch.randint(0, 7, (50,), generator=g)
    out = topk_correct(logits, targets, ks=(1, 3, 5))
    order = logits.argsort(1, descending=True)
    for k in (1, 3, 5):
        assert out[k] == int((order[:, :k] == targets[:, None]).any(1).sum())
    small = torch.randn(10, 3, generator=g)
    t = torch.randint(0, 3, (10,), generator=g)
    assert topk_correct(small, t, ks=(1, 5)) == {1: topk_correct(small, t, (1,))[1], 5: 10}


def _reference_counts(logits, targets, c):
    pred = logits.argmax(1)
    top5 = logits.topk(min(5, c), 1).indices
    acc = np.full(c, np.nan)
    prec = np.full(c, np.nan)
    for k in range(c):
        if (targets == k).any():
            acc[k] = 100 * (pred[targets == k] == k).float().mean().item()
        if (pred == k).any():
            prec[k] = 100 * (targets[pred == k] == k).float().mean().item()
    cm = np.zeros((c, c), dtype=np.int64)
    for t, p in zip(targets.tolist(), pred.tolist()):
        cm[t, p] += 1
    top5_acc = 100 * (top5 == targets[:, None]).any(1).float().mean().item()
    return acc, prec, cm, top5_acc


def test_meter_bruteforce():
    g = torch.Generator().manual_seed(1)
    c = 12
    logits = torch.randn(200, c, generator=g)
    targets = torch.randint(0, c - 1, (200,), generator=g)  # class 11 never appears
    meter = ClassificationMeter(c)
    for chunk_l, chunk_t in zip(logits.split(33), targets.split(33)):
        meter.update(chunk_l, chunk_t)
    out = meter.compute(train_counts=[500] * 4 + [50] * 4 + [5] * 4)
    acc, prec, cm, top5 = _reference_counts(logits, targets, c)
    np.testing.assert_allclose(out["per_class"], acc, equal_nan=True)
    np.testing.assert_allclose(out["per_class_recall"], acc, equal_nan=True)
    np.testing.assert_allclose(out["per_class_precision"], prec, equal_nan=True)
    assert np.array_equal(meter.confusion.numpy(), cm)
    assert out["top5"] == pytest.approx(top5)
    assert out["many"] == pytest.approx(np.mean(acc[:4]))
    assert out["few"] == pytest.approx(np.nanmean(acc[8:]))
    assert out["few_classes"] == 3
    with pytest.raises(RuntimeError, match="twice"):
        meter.all_reduce()
        meter.all_reduce()


def test_meter_rejects_bad_input():
    meter = ClassificationMeter(3)
    with pytest.raises(ValueError, match="targets"):
        meter.update(torch.randn(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        meter.update(torch.randn(2, 4), torch.tensor([0, 1]))
    assert ClassificationMeter(200).confusion is None  # only kept for C <= 100
    m = ClassificationMeter(3, device="cpu")
    assert m.total.device.type == "cpu" and m.compute()["num_samples"] == 0


# ---------------------------------------------------------------- distributed (2 CPU processes, gloo)


def _dist_worker(rank: int, world: int, init_file: str, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(3)
        logits = torch.randn(90, 5, generator=g)
        targets = torch.randint(0, 5, (90,), generator=g)
        seg_pred = torch.randint(0, 4, (3, 6, 6), generator=g)
        seg_label = torch.randint(0, 5, (3, 6, 6), generator=g)
        seg_label[seg_label == 4] = 255
        # Disjoint shards, unequal sizes; rank 1 gets nothing for segmentation.
        shard = slice(0, 37) if rank == 0 else slice(37, 90)
        meter = ClassificationMeter(5)
        meter.update(logits[shard], targets[shard])
        meter.all_reduce()
        seg = SegMeter(4)
        if rank == 0:
            seg.update(seg_pred, seg_label)
        seg.all_reduce()
        queue.put((rank, meter.compute(), seg.compute()))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_meters_all_reduce_exact(tmp_path):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_dist_worker, args=(2, str(tmp_path / "init"), queue), nprocs=2, start_method="spawn")
    results = sorted((queue.get() for _ in range(2)), key=lambda r: r[0])

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(90, 5, generator=g)
    targets = torch.randint(0, 5, (90,), generator=g)
    seg_pred = torch.randint(0, 4, (3, 6, 6), generator=g)
    seg_label = torch.randint(0, 5, (3, 6, 6), generator=g)
    seg_label[seg_label == 4] = 255
    single = ClassificationMeter(5)
    single.update(logits, targets)
    want = single.compute()
    seg = SegMeter(4)
    seg.update(seg_pred, seg_label)
    want_seg = seg.compute()
    for _, got, got_seg in results:
        assert got["num_samples"] == 90
        assert json.dumps(got) == json.dumps(want)
        assert json.dumps(got_seg) == json.dumps(want_seg)


# ---------------------------------------------------------------- ImageNet-C / -R


def test_corruption_errors_match_reference(refvectors):
    ref = json.loads((refvectors / "imagenet_c_mce.json").read_text())
    accs = ref["corruption_top1_acc_by_severity_1to5"]
    assert list(accs) == list(CORRUPTIONS)
    assert ALEXNET_ERRORS == ref["alexnet_err"]
    out = corruption_errors(accs)
    assert out["mce_unnormalised"] == pytest.approx(ref["printed_mce_unnormalised"], abs=1e-9)
    assert out["mce_alexnet_normalised"] == pytest.approx(ref["printed_rel_mce_alexnet_normalised"], abs=1e-9)
    assert out["num_corruptions"] == 15
    assert out["corruption_errors"]["fog"] == pytest.approx(1 - np.mean(accs["fog"]))
    assert "mce_baseline_normalised" not in out
    # normalising by a run's own errors gives exactly 100; by AlexNet reproduces the standard mCE
    again = corruption_errors(accs, baseline_errors=out["corruption_errors"])
    assert again["mce_baseline_normalised"] == pytest.approx(100.0)
    assert mce_normalised_by(out["corruption_errors"], ALEXNET_ERRORS) == out["mce_alexnet_normalised"]


def test_corruption_errors_guards():
    with pytest.raises(ValueError, match="fractions"):
        corruption_errors({"fog": [55.0, 40.0]})  # percent by mistake
    out = corruption_errors({"my_blur": [0.5, 0.7]})  # not an ImageNet-C corruption
    assert out["mce_alexnet_normalised"] is None
    assert out["mce_unnormalised"] == pytest.approx(40.0)
    with pytest.raises(ValueError, match="baseline errors missing"):
        corruption_errors({"my_blur": [0.5]}, baseline_errors={"fog": 0.5})


def test_imagenet_r_mask():
    assert len(IMAGENET_R_INDICES) == 200 == len(set(IMAGENET_R_INDICES))
    mask = imagenet_r_mask()
    assert mask.dtype == torch.bool and mask.shape == (1000,) and int(mask.sum()) == 200
    assert torch.nonzero(mask).flatten().tolist() == list(IMAGENET_R_INDICES)
    assert IMAGENET_R_INDICES[:5] == (1, 2, 4, 6, 8) and IMAGENET_R_INDICES[-1] == 988
    with pytest.raises(ValueError):
        imagenet_r_mask(100)


# ---------------------------------------------------------------- segmentation


def test_confusion_matrix_and_ignore():
    cm = confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 255]), 3, ignore_index=255)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 0]]
    with pytest.raises(ValueError, match="targets"):
        confusion_matrix(torch.tensor([0]), torch.tensor([255]), 3)


def test_segmeter_bruteforce():
    g = torch.Generator().manual_seed(2)
    c = 5
    scores = torch.randn(2, c, 8, 8, generator=g)
    labels = torch.randint(0, 4, (2, 8, 8), generator=g)  # class 4 never labelled
    labels[0, :2] = 255
    scores[:, 4] -= 100  # ... and never predicted -> NaN
    scores[:, 3] -= 100  # class 3 labelled but never predicted -> IoU 0
    meter = SegMeter(c)
    meter.update(scores[:1], labels[:1])
    meter.update(scores[1:].argmax(1), labels[1:])
    out = meter.compute()
    pred = scores.argmax(1)
    keep = labels != 255
    p, t = pred[keep], labels[keep]
    ious, accs = [], []
    for k in range(c):
        inter = ((p == k) & (t == k)).sum().item()
        union = ((p == k) | (t == k)).sum().item()
        ious.append(100 * inter / union if union else float("nan"))
        accs.append(100 * inter / (t == k).sum().item() if (t == k).any() else float("nan"))
    np.testing.assert_allclose(out["per_class_iou"], ious, equal_nan=True)
    np.testing.assert_allclose(out["per_class_acc"], accs, equal_nan=True)
    assert math.isnan(out["per_class_iou"][4]) and out["per_class_iou"][3] == 0.0
    assert out["miou"] == pytest.approx(np.nanmean(ious))  # NaN class excluded from the mean
    assert out["macc"] == pytest.approx(np.nanmean(accs))
    assert out["aacc"] == pytest.approx(100 * (p == t).float().mean().item())
    assert out["num_pixels"] == int(keep.sum())


def test_meter_ece_is_mislas_ece_and_the_report_draws_it(tmp_path):
    from gpaco.classification.report import write_eval_report
    from gpaco.losses.mislas import expected_calibration_error

    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(200, 6, generator=g)
    targets = torch.randint(0, 6, (200,), generator=g)
    meter = ClassificationMeter(6)
    meter.update(logits[:77], targets[:77])
    meter.update(logits[77:], targets[77:])
    out = meter.compute([50, 40, 30, 20, 10, 5])
    assert out["ece"] == pytest.approx(100 * expected_calibration_error(logits, targets), abs=1e-6)
    assert sum(out["calibration"]["count"]) == 200 and out["calibration"]["bins"] == 15
    written = write_eval_report(str(tmp_path), out, [50, 40, 30, 20, 10, 5])
    assert str(tmp_path / "reliability.png") in written and (tmp_path / "reliability.png").stat().st_size > 0
    # perfectly calibrated by construction: one bin at confidence 1 with every sample right
    sure = ClassificationMeter(3)
    sure.update(torch.tensor([[100.0, 0, 0], [0, 100.0, 0]]), torch.tensor([0, 1]))
    assert sure.compute()["ece"] == pytest.approx(0.0, abs=1e-6)


def test_meter_refuses_float_labels_and_reports_no_accuracy_it_cannot_measure():
    """Float labels would be truncated to classes silently; NaN logits (a diverged model) and
    an empty split have no accuracy: NaN, with the non-finite rows counted, not 0.0."""
    meter = ClassificationMeter(3)
    with pytest.raises(ValueError, match="targets must be class indices"):
        meter.update(torch.zeros(2, 3), torch.tensor([0.7, 1.0]))
    empty = ClassificationMeter(3).compute()
    assert empty["num_samples"] == 0 and math.isnan(empty["top1"]) and math.isnan(empty["top5"])
    meter.update(torch.tensor([[1.0, 0.0, 0.0], [float("nan"), 0.0, 0.0]]), torch.tensor([0, 1]))
    out = meter.compute()
    assert out["num_samples"] == 2 and out["nonfinite_logits"] == 1 and math.isnan(out["top1"])
    fine = ClassificationMeter(3)
    fine.update(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]), torch.tensor([0, 1]))
    assert fine.compute()["top1"] == 100.0 and "nonfinite_logits" not in fine.compute()
