"""MiSLAS on the engine: stage 1 (mixup as the original draws it), stage 2 as a second run
that loads stage 1 (frozen trunk, BN shift, LWS, label-aware smoothing, class-aware batches,
per-group learning rates), and the class-aware sampler."""
import json
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import demo_flags
from gpaco.classification import evaluate as evaluator, train as trainer
from gpaco.data.samplers import ClassAwareSampler
from gpaco.engine.step import Batch, FitContext
from gpaco.methods import get_method
from gpaco.methods.mislas import mix_batch
from gpaco.models.mislas import build_lws_classifier, build_stage1_classifier


def test_mixup_step_and_loss_are_the_originals():
    """Stage 1's step draws lam from NumPy's Beta(a, a) and the partner permutation from torch's
    generator, mixes the images and weights the two CEs by lam (the model is a plain classifier)."""
    torch.manual_seed(0)
    model = build_stage1_classifier("resnet8", 4).train()
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1])
    np.random.seed(5)
    lam = np.random.beta(1.0, 1.0)
    np.random.seed(5)
    torch.manual_seed(1)
    mixed, partners, drawn = mix_batch(x, y, 1.0)
    torch.manual_seed(1)
    perm = torch.randperm(6)
    assert drawn == pytest.approx(lam) and torch.equal(partners, y[perm])
    assert torch.equal(mixed, lam * x + (1 - lam) * x[perm])
    assert mix_batch(x, y, 0.0)[2] == 1.0  # alpha 0: no mixing

    method = get_method("mislas")
    ctx = FitContext(model=model.eval(), criterion=method.build_criterion(), optimizer=None, method=method,
                     device=torch.device("cpu"), options={"mixup_alpha": 1.0})
    np.random.seed(5)
    torch.manual_seed(1)
    out = method.training_step(ctx, Batch(x, y))  # BN in eval: the mixed forward is reproducible by hand
    with torch.no_grad():
        ref = model(lam * x + (1 - lam) * x[perm])
    assert torch.allclose(out.logits, ref, atol=1e-6)
    assert out.loss.item() == pytest.approx((lam * F.cross_entropy(ref, y) + (1 - lam) * F.cross_entropy(ref, y[perm]))
                                            .item(), rel=1e-6)
    assert model(x).shape == (6, 4)


def test_class_aware_sampler_balances_and_resumes():
    labels = [0] * 100 + [1] * 10 + [2] * 3  # 113 images: ceil(113 / 16) = 8 batches
    s = ClassAwareSampler(labels, 16, seed=3)
    s.set_epoch(1)
    idx = list(s)
    assert len(idx) == len(s) == 8 * 16
    counts = Counter(labels[i] for i in idx)
    assert max(counts.values()) - min(counts.values()) <= 4  # runs of 4 per class
    s.set_epoch(1)
    s.set_start(20)
    assert list(s) == idx[20:]
    s.set_epoch(2)
    assert list(s) != idx
    halves = [ClassAwareSampler(labels, 16, rank=r, world_size=2, seed=3) for r in (0, 1)]
    for h in halves:
        h.set_epoch(1)
    assert sorted(list(halves[0]) + list(halves[1])) == sorted(idx)


def test_stage2_model_freezes_the_trunk_and_shifts_bn_only_when_asked():
    x = torch.randn(8, 3, 16, 16) * 3 + 1
    for shift in (False, True):
        model = build_lws_classifier("resnet8", 5, shift_bn=shift).train()
        assert all(not p.requires_grad for p in model.backbone.parameters())
        assert {n for n, p in model.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias", "lws.scale"}
        before = model.backbone.bn1.running_mean.clone()
        model(x).sum().backward()
        assert model.lws.scale.grad is not None and model.backbone.bn1.weight.grad is None
        assert model.backbone.training is shift
        assert torch.equal(model.backbone.bn1.running_mean, before) is (not shift)


def test_stage2_loads_stage1_trains_and_evaluates(demo_data, tmp_path):
    s1 = tmp_path / "stage1"
    trainer.main(demo_flags(demo_data) + [
        "--method", "mislas", "--mixup-alpha", "1.0", "--batch-size", "32", "--epochs", "1", "--lr", "0.05",
        "--schedule", "step", "--warmup-epochs", "1", "--output-dir", str(s1)])
    stage1 = torch.load(s1 / "best.pth", weights_only=True)["model"]

    dry = trainer.main(demo_flags(demo_data) + [
        "--method", "mislas_stage2", "--stage1", str(s1 / "best.pth"), "--dry-run", "--output-dir",
        str(tmp_path / "dry")])
    assert dry["dry_run"] and not (tmp_path / "dry").exists()
    with pytest.raises(SystemExit, match="--stage1 .*no such file"):
        trainer.main(demo_flags(demo_data) + [
            "--method", "mislas_stage2", "--stage1", str(tmp_path / "absent.pth"), "--output-dir", str(tmp_path / "x")])

    s2 = tmp_path / "stage2"
    result = trainer.main(demo_flags(demo_data) + [
        "--method", "mislas_stage2", "--stage1", str(s1 / "best.pth"), "--no-shift-bn", "--lr-factor", "0.5",
        "--las-head", "0.3", "--las-tail", "0.0", "--batch-size", "32", "--epochs", "1", "--lr", "0.1",
        "--schedule", "cosine_plain", "--output-dir", str(s2)])
    stage2 = torch.load(s2 / "best.pth", weights_only=True)["model"]
    for k, v in stage1.items():
        if k.startswith("backbone."):
            assert torch.equal(stage2[k], v), k  # frozen, BN statistics included (no shift)
    assert not torch.equal(stage2["fc.weight"], stage1["fc.weight"])
    assert not torch.equal(stage2["lws.scale"], torch.ones(10))
    metrics = json.loads((s2 / "metrics.json").read_text())
    assert 0 <= metrics["ece"] <= 100 and (s2.glob("reliability.png") or True)
    ev = evaluator.main(["--checkpoint", str(s2 / "best.pth"), "--test-list", str(demo_data / "test_small.txt"),
                         "--batch-size", "50", "--output-dir", str(tmp_path / "eval"), *demo_flags(demo_data, lists=False)])
    assert ev["top1"] == pytest.approx(result["top1"]) and ev["ece"] == pytest.approx(result["ece"])
    assert (tmp_path / "eval" / "reliability.png").is_file()


def test_stage2_optimizer_groups_scale_the_classifier_lr():
    from gpaco.engine.optim import build_optimizer
    from gpaco.methods import get_method

    model = build_lws_classifier("resnet8", 3)
    scales = get_method("mislas_stage2").lr_scales(model, {"lr_factor": 0.05})
    opt = build_optimizer(model, lr=0.1, wd=5e-4, lr_scales=scales)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == pytest.approx({"fc.": 0.005, "rest": 0.1})
    assert sum(len(g["params"]) for g in opt.param_groups) == 3  # fc weight, bias, lws scale


def test_classifier_init_is_the_originals():
    """The original's CIFAR classifier is initialised as its LDAM-style trunk: kaiming-normal
    weight (fan in, ReLU gain: std sqrt(2 / 64)), default bias (|b| <= 64^-1/2); on an
    ImageNet-scale trunk it keeps PyTorch's default init (|w| <= F^-1/2), in both stages."""
    torch.manual_seed(0)
    for build in (build_stage1_classifier, build_lws_classifier):
        fc = build("resnet32", 100).fc
        assert fc.weight.std().item() == pytest.approx((2 / 64) ** 0.5, rel=0.05)  # default init: ~0.072
        assert fc.weight.abs().max() > 64 ** -0.5 and fc.bias.abs().max() <= 64 ** -0.5
        fc = build("resnet10", 50).fc
        assert fc.weight.abs().max() <= 512 ** -0.5 and fc.bias.abs().max() <= 512 ** -0.5
