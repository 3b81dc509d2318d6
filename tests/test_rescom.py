"""ResCom as a method: the model's training step against the original's numbers, the balanced
contrast (the original's crashing balsfx_n), the schedule, flags, a demo run that evaluates, and
``--device-batch`` (BatchNorm and the in-batch contrast per virtual device) against one
process per device."""
import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import demo_flags, run_worker
from gpaco.classification import evaluate as evaluator, train as trainer
from gpaco.engine.schedule import build_schedule
from gpaco.losses.criteria import ResComCriterion
from gpaco.losses.rescom import rescom_mine
from gpaco.methods import get_method
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
    assert parse_train_args(["--train-list", "x", "--method", "rescom", "--batch-size", "64",
                             "--device-batch", "32"]).device_batch == 32
    with pytest.raises(SystemExit, match="--bn-device-batch is not for --method rescom: .* use --device-batch"):
        parse_train_args(["--train-list", "x", "--method", "rescom", "--batch-size", "64", "--bn-device-batch", "32"])
    with pytest.raises(ValueError, match="--bn-device-batch is not for --method rescom"):
        get_method("rescom").build_model("resnet8", 10, bn_device_batch=4)


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


# ----------------------------------------------------------------------------- --device-batch

def test_device_batch_is_each_device_on_its_own():
    """--device-batch 4 on a batch of 8: BatchNorm over each device's 8 images (both views of
    its 4 samples), each device's own in-batch contrast set, the loss the mean of the devices'
    losses, the queue written with view 1 in batch order: the same as running a plain model
    on each device's samples (hand-built; running statistics from device 0, as DDP's rank 0)."""
    torch.manual_seed(0)
    grouped = build_rescom("resnet8", 4, proj_dim=8, queue_per_class=3, device_batch=4).train()
    torch.manual_seed(0)
    plain = build_rescom("resnet8", 4, proj_dim=8, queue_per_class=3).train()
    crit = ResComCriterion(class_counts=[40, 20, 10, 5], temperature=0.2, num_positives=2, num_negatives=5,
                           effective_num_beta=0.9)
    gen = torch.Generator().manual_seed(1)
    im_q, im_k = torch.randn(8, 3, 16, 16, generator=gen), torch.randn(8, 3, 16, 16, generator=gen)
    labels = torch.tensor([0, 1, 2, 3, 1, 1, 0, 2])

    out = grouped(im_q, im_k, labels)
    assert out.features.shape == (2, 8, 8) and out.labels.tolist() == [[0, 1, 2, 3] * 2, [1, 1, 0, 2] * 2]
    loss = crit(out, labels)
    loss.backward()

    ref_losses, ref_features, buffers = [], [], None
    queue = copy.deepcopy(plain.balanced_queue)  # every device mines the queue as it was before the step
    for g, rows in enumerate((slice(0, 4), slice(4, 8))):
        plain.balanced_queue.load_state_dict(queue.state_dict())
        device_out = plain(im_q[rows], im_k[rows], labels[rows])
        ref_losses.append(crit(device_out, labels[rows]))
        ref_features.append(device_out.features.detach())
        if g == 0:  # device 0's running statistics are the run's
            buffers = copy.deepcopy({k: v for k, v in plain.state_dict().items() if "running" in k or "tracked" in k})
    ref = torch.stack(ref_losses).mean()
    ref.backward()
    with torch.no_grad():  # after backward: the batch norms' backward checks their buffers' versions
        for k, v in buffers.items():
            plain.state_dict()[k].copy_(v)
    queue.enqueue(torch.cat([f[:4] for f in ref_features]), labels)  # then view 1 of both, in batch order
    plain.balanced_queue.load_state_dict(queue.state_dict())
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(out.features.detach(), torch.stack(ref_features))
    for (name, p), (_, q) in zip(grouped.named_parameters(), plain.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)
    for (name, b), (_, c) in zip(grouped.named_buffers(), plain.named_buffers()):
        torch.testing.assert_close(b, c, atol=1e-6, rtol=1e-5, msg=name)
    # the train accuracy reads view 1 in batch order
    from gpaco.losses.criteria import output_logits
    torch.testing.assert_close(output_logits(out, 8), torch.cat([out.logits[0, :4], out.logits[1, :4]]))


def _run_worker(out: Path, nproc: int, device_batch: str) -> dict:
    run_worker(Path(__file__).with_name("rescom_device_batch_worker.py"), out, device_batch, nproc=nproc)
    return torch.load(out, weights_only=True)


def _close(a: torch.Tensor, b: torch.Tensor, scale: float, what: str) -> None:
    """Equal within float32 rounding: |a - b| <= 1e-5 x scale (scale: the reference's magnitude)."""
    if not b.dtype.is_floating_point:
        assert torch.equal(a, b), what
        return
    err = (a.double() - b.double()).abs().max().item()
    assert err <= 1e-5 * scale, f"{what}: max error {err:.3g} > 1e-5 x {scale:.3g}"


@pytest.mark.slow
@pytest.mark.distributed
def test_device_batch_equals_one_process_per_device(tmp_path):
    """--device-batch 8 on one process trains what 2 processes of 8 (torchrun, DDP) train:
    losses (global and per virtual device), DDP-averaged gradients, parameters, BatchNorm
    running statistics (rank 0's) and the class-balanced queue, over two steps (the second
    mines the keys the first enqueued)."""
    ref = _run_worker(tmp_path / "ddp.pt", 2, "none")
    got = _run_worker(tmp_path / "grouped.pt", 1, "8")
    assert ref["world_size"] == 2 and got["world_size"] == 1
    for step in range(2):
        _close(got["loss"][step], ref["loss"][step], ref["loss"][step].abs().item(), f"step {step} loss")
        dev_ref = ref["device_losses"][step]
        assert got["device_losses"][step].shape == dev_ref.shape == (2,)
        _close(got["device_losses"][step], dev_ref, dev_ref.abs().max().item(), f"step {step} per-device losses")
        grads = ref["grads"][step]
        assert got["grads"][step].keys() == grads.keys()
        # a Linear bias before BatchNorm (the projection) has a zero gradient up to rounding
        scale = max(g.abs().max().item() for g in grads.values())
        for name, g in grads.items():
            _close(got["grads"][step][name], g, scale, f"step {step} grad {name}")
    assert got["state"].keys() == ref["state"].keys()
    for name, v in ref["state"].items():
        scale = v.abs().max().item() if v.dtype.is_floating_point else 1.0
        _close(got["state"][name], v, max(scale, 1e-3), name)
    assert any(".running_var" in k for k in ref["state"]) and "balanced_queue.keys" in ref["state"]
    assert int(ref["state"]["balanced_queue.ptr"].sum()) > 0
