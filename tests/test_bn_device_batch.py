"""``--bn-device-batch``: BatchNorm per group of N samples (an original's DataParallel GPUs)
while mixup, the contrast set and the loss see the whole per-process batch.

Each step is compared with a hand-built reference: the plain model run on each chunk of N
separately (BatchNorm statistics per chunk, running statistics from chunk 0 as DataParallel
keeps replica 0's), the outputs concatenated and the loss taken over the whole batch."""
import numpy as np
import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from conftest import demo_flags
from gpaco.classification import evaluate as evaluator, train as trainer
from gpaco.classification.args import parse_train_args
from gpaco.classification.task import (
    RESUME_FIXED, build_batch_augment, check_batch_config, device_batch_of, model_kwargs,
)
from gpaco.engine.args import FlagError
from gpaco.engine.step import Batch, FitContext
from gpaco.methods import get_method
from gpaco.methods.rebuild import build_from_config, model_config
from gpaco.models.reslt import ResLTOutput
from gpaco.models.view_bn import _ViewBatchNorm

COUNTS = [40, 20, 10, 5, 2]
OPTIONS = {"ce": {}, "reslt": {"head": "conv", "branch_sizes": [3, 1]}, "mislas": {}}
LOSS = {"ce": {}, "reslt": {"beta": 0.9, "branch_sizes": [3, 1]}, "mislas": {}}


def models(name: str, n: int = 4):
    """(model with --bn-device-batch n, the same model without), both in training mode."""
    method = get_method(name)
    torch.manual_seed(0)
    grouped = method.build_model("resnet8", 5, bn_device_batch=n, **OPTIONS[name]).train()
    torch.manual_seed(0)
    plain = method.build_model("resnet8", 5, **OPTIONS[name]).train()
    return method, grouped, plain


def bn_buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def chunked(plain, x: torch.Tensor, n: int):
    """The plain model on each chunk of n rows; outputs concatenated. Returns (output, chunk 0's
    BatchNorm buffers), to be restored after backward (which checks the buffers' versions)."""
    outs, buffers = [], None
    for i, chunk in enumerate(x.split(n)):
        outs.append(plain(chunk))
        if i == 0:
            buffers = bn_buffers(plain)
    if isinstance(outs[0], ResLTOutput):
        return ResLTOutput(torch.cat([o.branch_logits for o in outs], 1), torch.cat([o.logits for o in outs])), buffers
    return torch.cat(outs), buffers


def restore(model, buffers) -> None:
    with torch.no_grad():
        for k, v in buffers.items():
            model.state_dict()[k].copy_(v)


def assert_same_training(grouped, plain) -> None:
    for (name, p), (_, q) in zip(grouped.named_parameters(), plain.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)
    ref = bn_buffers(plain)
    assert ref and ref.keys() == bn_buffers(grouped).keys()
    for k, v in bn_buffers(grouped).items():
        torch.testing.assert_close(v, ref[k], atol=1e-6, rtol=1e-5, msg=k)


def context(method, model, criterion, **options) -> FitContext:
    return FitContext(model=model, criterion=criterion, optimizer=None, method=method, device=torch.device("cpu"),
                      options=options)


@pytest.mark.parametrize("name", ["ce", "reslt"])
def test_step_is_batchnorm_per_chunk_and_the_loss_over_the_batch(name):
    """A CE / ResLT step with --bn-device-batch 4 on a batch of 8: losses, gradients and
    BatchNorm running statistics of the plain model run on each chunk of 4."""
    method, grouped, plain = models(name)
    bns = [m for m in grouped.modules() if isinstance(m, _BatchNorm)]
    assert bns and all(isinstance(m, _ViewBatchNorm) and m.device_batch == 4 for m in bns)
    criterion = method.build_criterion(num_classes=5, class_counts=COUNTS, **LOSS[name])
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 16, 16, generator=gen), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])

    out = method.training_step(context(method, grouped, criterion), Batch(x, y))
    out.loss.backward()
    ref_out, buffers = chunked(plain, x, 4)
    ref = criterion(ref_out, y)
    ref.backward()
    restore(plain, buffers)
    torch.testing.assert_close(out.loss, ref)
    assert_same_training(grouped, plain)
    # evaluation (eval-mode BatchNorm) is unaffected
    grouped.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(grouped(x), plain(x))
        # and the grouping matters: whole-batch statistics give another loss
        assert not torch.allclose(criterion(plain.train()(x), y), ref)


def test_mislas_mixup_is_drawn_over_the_whole_batch():
    """MiSLAS stage 1 (DataParallel in the original): the mixup partner of a sample may sit in
    another BatchNorm group; the mixed batch then goes through BatchNorm per chunk of 4."""
    method, grouped, plain = models("mislas")
    criterion = method.build_criterion()
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 3, 16, 16, generator=gen), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    np.random.seed(5)
    torch.manual_seed(3)
    out = method.training_step(context(method, grouped, criterion, mixup_alpha=0.2), Batch(x, y))
    out.loss.backward()
    np.random.seed(5)
    lam = float(np.random.beta(0.2, 0.2))
    torch.manual_seed(3)
    perm = torch.randperm(8)
    assert any((i < 4) != (int(p) < 4) for i, p in enumerate(perm)), "the permutation crosses the groups"
    logits, buffers = chunked(plain, lam * x + (1 - lam) * x[perm], 4)
    ref = lam * torch.nn.functional.cross_entropy(logits, y) + (1 - lam) * torch.nn.functional.cross_entropy(
        logits, y[perm])
    ref.backward()
    restore(plain, buffers)
    torch.testing.assert_close(out.logits, logits.detach())
    torch.testing.assert_close(out.loss, ref)
    assert_same_training(grouped, plain)


def test_timm_mixup_pairs_across_the_whole_batch():
    """--mixup with --bn-device-batch: timm's batch mixup pairs sample i with 7 - i of the
    whole per-process batch (with --device-batch 4 it would pair within each group)."""
    args = parse_train_args(["--train-list", "x", "--method", "ce", "--batch-size", "8", "--bn-device-batch", "4",
                             "--mixup", "0.8"])
    assert device_batch_of(args) is None
    _, mixup = build_batch_augment(args, 5, torch.device("cpu"), 8, device_batch_of(args))
    np.random.seed(0)  # timm draws lambda from NumPy's global generator
    x, y = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 5
    mixed, _ = mixup(x.clone(), y)
    pairs = x.flip(0)  # the whole batch reversed: 0 <-> 7, ..., 3 <-> 4 (groups of 4 would pair 0 <-> 3)
    lam = ((mixed[0] - pairs[0]) / (x[0] - pairs[0])).median().item()
    assert 0.0 < lam < 1.0
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * pairs, atol=1e-4, rtol=1e-4)


def test_flag_checks():
    base = ["--train-list", "x", "--method", "ce", "--batch-size", "24"]
    with pytest.raises(SystemExit, match=r"error: --bn-device-batch 5 must divide --batch-size 24"):
        parse_train_args(base + ["--bn-device-batch", "5"])
    with pytest.raises(SystemExit, match=r"--bn-device-batch must be"):
        parse_train_args(base + ["--bn-device-batch", "0"])
    with pytest.raises(SystemExit, match=r"error: --bn-device-batch 8 and --device-batch 8: pass one"):
        parse_train_args(base + ["--bn-device-batch", "8", "--device-batch", "8"])
    args = parse_train_args(base + ["--bn-device-batch", "8"])
    assert check_batch_config(args, 3) == 8
    with pytest.raises(FlagError, match=r"--bn-device-batch 8 must divide the per-process batch 12 \(--batch-size "
                                        r"24 / 2 process\(es\)\)"):
        check_batch_config(args, 2)
    assert "bn_device_batch" in RESUME_FIXED


def test_recorded_with_the_model_and_rebuilt():
    """The build option is recorded in model_config: a rebuild has the same per-group
    BatchNorms (GPaCo's keep their two views)."""
    args = parse_train_args(["--train-list", "x", "--method", "gpaco", "--batch-size", "64", "--queue-size", "128",
                             "--bn-device-batch", "16"])
    options = {**model_kwargs(args), "proj_dim": 8}
    assert options["bn_device_batch"] == 16 and "device_batch" not in options
    cfg = model_config("gpaco", "classification", "resnet8", 5, options)
    assert cfg["options"]["bn_device_batch"] == 16
    model = build_from_config(cfg)
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert bns and all(isinstance(m, _ViewBatchNorm) and m.device_batch == 16 and m.views == 2 for m in bns)


def test_demo_run_records_it_evaluates_and_refuses_another_on_resume(demo_data, tmp_path):
    out = tmp_path / "run"
    flags = demo_flags(demo_data) + ["--method", "ce", "--batch-size", "32", "--epochs", "1", "--lr", "0.05",
                                     "--warmup-epochs", "0", "--output-dir", str(out)]
    result = trainer.main(flags + ["--bn-device-batch", "16"])
    ckpt = torch.load(out / "best.pth", weights_only=True)
    assert ckpt["model_config"]["options"]["bn_device_batch"] == 16 and ckpt["args"]["bn_device_batch"] == 16
    ev = evaluator.main(["--checkpoint", str(out / "best.pth"), "--test-list", str(demo_data / "test_small.txt"),
                         "--batch-size", "50", "--output-dir", str(tmp_path / "eval"),
                         *demo_flags(demo_data, lists=False)])
    assert ev["top1"] == pytest.approx(result["top1"])
    with pytest.raises(SystemExit, match=r"--resume: --bn-device-batch 16 -> 8 change the model"):
        trainer.main(flags + ["--bn-device-batch", "8", "--epochs", "2", "--resume", "auto"])


@pytest.mark.parametrize("affine,frozen", [(True, True), (True, False), (False, False)])
def test_grouped_batchnorm_backward_with_frozen_or_non_affine_layers(affine, frozen):
    """The CPU fast path's backward works for a frozen BatchNorm (a frozen trunk under
    --bn-device-batch) and a non-affine one: the input gradient is the per-group layers'."""
    from gpaco.models.view_bn import convert_view_batchnorm

    torch.manual_seed(0)
    bn, ref = torch.nn.BatchNorm2d(4, affine=affine), torch.nn.BatchNorm2d(4, affine=affine)
    if frozen:
        bn.requires_grad_(False)
        ref.requires_grad_(False)
    convert_view_batchnorm(bn, device_batch=2)
    x = torch.randn(4, 4, 3, 3, requires_grad=True)
    (gx,) = torch.autograd.grad(bn(x).pow(2).sum(), x)
    (g_ref,) = torch.autograd.grad(ref(x[:2]).pow(2).sum() + ref(x[2:]).pow(2).sum(), x)
    torch.testing.assert_close(gx, g_ref)


def test_partial_batch_splits_into_ceil_groups():
    """A kept last, partial batch (MiSLAS stage 1) of 6 under groups of 4 is 2 groups of 3, not an
    error and not one group of 6; the group-0 statistics update the running ones."""
    from gpaco.models.view_bn import convert_view_batchnorm

    torch.manual_seed(0)
    bn, ref = torch.nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    convert_view_batchnorm(bn, device_batch=4)
    x = torch.randn(6, 3, 2, 2, requires_grad=True)
    y = bn(x)
    y_ref = torch.cat([ref(x[:3]), torch.nn.functional.batch_norm(x[3:], None, None, ref.weight, ref.bias, True)])
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    (gx,) = torch.autograd.grad(y.pow(3).sum(), x)
    (g_ref,) = torch.autograd.grad(y_ref.pow(3).sum(), x)
    torch.testing.assert_close(gx, g_ref)
