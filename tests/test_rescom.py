"""ResCom as a method: the model's training step against the original's numbers, the balanced
contrast (the original's crashing balsfx_n), the schedule, flags, and a demo run that evaluates."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import demo_flags
from gpaco.classification import evaluate as evaluator, train as trainer
from gpaco.engine.schedule import build_schedule
from gpaco.losses.criteria import ResComCriterion
from gpaco.losses.rescom import rescom_mine
from gpaco.models.rescom import ResComModel, build_rescom
from test_losses_recognition_methods import DTYPES, RESCOM, check, rescom_inputs


class IdentityTrunk(nn.Identity):
    num_features = RESCOM["params"]["dim"]


def reference_model(dtype):
    """A ResComModel whose encoder is the identity, as the reference vectors were made."""
    p = RESCOM["params"]
    img, w, b, labels, queue = rescom_inputs(dtype)
    model = ResComModel(IdentityTrunk(), p["num_classes"], proj_dim=p["dim"],
                        queue_per_class=p["queue_size_per_cls"]).to(dtype)
    model.projection = nn.Identity()
    with torch.no_grad():
        model.fc.weight.copy_(w)
        model.fc.bias.copy_(b)
        model.balanced_queue.keys.copy_(queue.keys)
    return model.train(), img, labels


@pytest.mark.parametrize("dtype_name", sorted(DTYPES))
@pytest.mark.parametrize("setting", range(len(RESCOM["loss_settings"])))
def test_model_step_reproduces_the_original(setting, dtype_name):
    p, s = RESCOM["params"], RESCOM["loss_settings"][setting]
    dtype, rtol = DTYPES[dtype_name]
    ref = RESCOM["results"][dtype_name][f"setting{setting}"]
    model, img, labels = reference_model(dtype)
    crit = ResComCriterion(num_classes=p["num_classes"], class_counts=p["cls_num_list"], temperature=s["temperature"],
                           num_positives=p["select_num_pos"], num_negatives=p["select_num_neg"],
                           con_weight=s["con_weight"], effective_num_beta=s["effective_num_beta"],
                           queue_per_class=p["queue_size_per_cls"])
    bsz = p["batch_per_view"]
    out = model(img[:bsz], img[bsz:], labels[:bsz])  # enqueues view 1 before the loss is computed
    loss = crit(out, labels[:bsz])
    loss.backward()
    check(loss, ref["loss"], rtol)
    check(img.grad, ref["grad_img"], rtol)
    check(model.fc.weight.grad, ref["grad_W"], rtol)
    if "queue_after" in ref:
        c, k, d = model.balanced_queue.keys.shape
        check(model.balanced_queue.keys.reshape(c * k, d).T, ref["queue_after"], rtol)
        assert model.balanced_queue.ptr.tolist() == ref["queue_ptr_after"]
    model.eval()
    with torch.no_grad():
        check(model(img[:bsz]), (img[:bsz] @ model.fc.weight.T + model.fc.bias).detach(), 1e-12)


def test_balanced_contrast_is_the_prior_of_each_columns_class():
    """balsfx_n, hand-computed: n log(pi + 1e-9) of the class of every mined column joins s / T."""
    p = RESCOM["params"]
    dtype = torch.float64
    img, _, _, labels, queue = rescom_inputs(dtype)
    feats = F.normalize(img.detach(), dim=1)
    n_bal, temp = 0.5, 0.1
    counts = torch.tensor(p["cls_num_list"], dtype=torch.float32)
    log_prior = torch.log(counts / counts.sum() + 1e-9).double()
    num_pos, num_neg = p["select_num_pos"], p["select_num_neg"]
    sims, targets = rescom_mine(feats, labels, queue, num_positives=num_pos, num_negatives=num_neg)
    expected = 0.0
    for i in range(len(labels)):
        batch_cols = [int(labels[j]) for j in range(len(labels)) if j != i]
        others = sorted(((float(feats[i] @ queue.keys[c, s]), c) for c in range(p["num_classes"])
                         for s in range(p["queue_size_per_cls"]) if c != labels[i]), reverse=True)
        cols = batch_cols + [int(labels[i])] * num_pos + [c for _, c in others[:num_neg]]
        z = sims[i] / temp + n_bal * log_prior[cols]
        log_p = z - torch.logsumexp(z, 0)
        expected += float(-(targets[i] * log_p).sum() / (targets[i].sum() + 1e-9))
    expected /= len(labels)
    crit = ResComCriterion(class_counts=p["cls_num_list"], temperature=temp, num_positives=num_pos,
                           num_negatives=num_neg, balanced_contrast=n_bal)
    terms = crit.loss.terms(feats, torch.zeros(len(labels), p["num_classes"], dtype=dtype), labels, queue)
    assert terms.con.item() == pytest.approx(expected, rel=1e-12)
    plain = ResComCriterion(class_counts=p["cls_num_list"], temperature=temp, num_positives=num_pos,
                            num_negatives=num_neg)
    assert plain.loss.terms(feats, torch.zeros(8, 4, dtype=dtype), labels, queue).con.item() != pytest.approx(expected)


def test_cosine_min_schedule_by_hand():
    sched = build_schedule("cosine_min", base_lr=0.1, epochs=10, warmup_epochs=3)
    # 1-based epoch e: 0.1 e / 3 while e < 3, then cosine from 0.1 at e = 3 to 1e-6 at e = 10
    assert [sched(e) for e in range(2)] == pytest.approx([0.1 / 3, 0.2 / 3])
    assert sched(2) == pytest.approx(0.1)
    eta = 0.1 * 1e-5
    assert sched(6) == pytest.approx(eta + (0.1 - eta) * (1 + math.cos(math.pi * 4 / 7)) / 2)
    assert sched(9) == pytest.approx(eta)
    with pytest.raises(ValueError, match="warmup_epochs < epochs"):
        build_schedule("cosine_min", base_lr=0.1, epochs=3, warmup_epochs=3)


def test_rescom_flags_are_checked():
    from gpaco.classification.args import parse_train_args

    args = parse_train_args(["--train-list", "x", "--method", "rescom"])
    assert args.aug == "randclsgray_randclsgray" and args.rescom_queue_per_class == 10
    with pytest.raises(SystemExit, match=r"--rescom-positives must be in 0..10"):
        parse_train_args(["--train-list", "x", "--method", "rescom", "--rescom-positives", "11"])
    with pytest.raises(SystemExit, match=r"--rescom-beta must be in \[0, 1\)"):
        parse_train_args(["--train-list", "x", "--method", "rescom", "--rescom-beta", "1"])
    with pytest.raises(SystemExit, match="--rescom-negatives is an option of --method rescom, not gpaco"):
        parse_train_args(["--train-list", "x", "--method", "gpaco", "--rescom-negatives", "5"])
    with pytest.raises(ValueError, match=r"--rescom-negatives 100 exceeds the other classes' queue slots \(9 x 10\)"):
        ResComCriterion(class_counts=[5] * 10, num_negatives=100, queue_per_class=10)
    with pytest.raises(ValueError, match="--device-batch is not supported"):
        build_rescom("resnet8", 10, device_batch=4)
    with pytest.raises(SystemExit, match="--device-batch is not supported by --method rescom"):
        parse_train_args(["--train-list", "x", "--method", "rescom", "--batch-size", "64", "--device-batch", "32"])


def test_too_many_negatives_for_the_data_is_one_error_line(demo_data, tmp_path):
    """The class count is known only once the data is read: the criterion's refusal names the flag."""
    with pytest.raises(SystemExit, match=r"error: --rescom-negatives 400 exceeds the other classes' queue slots"):
        trainer.main(demo_flags(demo_data) + ["--method", "rescom", "--aug", "digits_digits", "--epochs", "1",
                                              "--output-dir", str(tmp_path / "run")])
    assert not (tmp_path / "run" / "checkpoint.pth").exists()


def test_rescom_trains_on_the_demo_and_its_checkpoint_evaluates(demo_data, tmp_path):
    out = tmp_path / "rescom"
    result = trainer.main(demo_flags(demo_data) + [
        "--batch-size", "32", "--epochs", "2", "--lr", "0.05", "--schedule", "cosine_min", "--warmup-epochs", "1",
        "--method", "rescom", "--aug", "digits_digits", "--proj-dim", "16", "--rescom-queue-per-class", "4",
        "--rescom-negatives", "20", "--rescom-beta", "0.999", "--output-dir", str(out)])
    ckpt = torch.load(out / "best.pth", weights_only=True)
    assert ckpt["method"] == "rescom" and ckpt["model"]["balanced_queue.keys"].shape == (10, 4, 16)
    # the queue was written: some slots moved from their random start, and every key is unit-norm
    assert int(ckpt["model"]["balanced_queue.ptr"].sum()) > 0
    torch.testing.assert_close(ckpt["model"]["balanced_queue.keys"].norm(dim=-1), torch.ones(10, 4))
    ev = evaluator.main(["--checkpoint", str(out / "best.pth"), "--test-list", str(demo_data / "test_small.txt"),
                         "--batch-size", "50", "--output-dir", str(tmp_path / "eval"),
                         *demo_flags(demo_data, lists=False)])
    assert ev["top1"] == pytest.approx(result["top1"]) and ev["num_samples"] == result["num_samples"]
    assert not ev["checkpoints"][0].get("missing")
