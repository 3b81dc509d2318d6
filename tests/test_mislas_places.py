"""MiSLAS's Places-LT network (``--new-last-block``): a pretrained trunk frozen in eval mode whose
last residual block is new and trains with the classifier; stage 2 re-estimates that block's
BatchNorm statistics only. Also stage 1's last partial batch."""
import inspect
import json

import pytest
import torch
from timm.models.resnet import Bottleneck, ResNet

from conftest import demo_flags
from gpaco.classification import evaluate as evaluator, train as trainer
from gpaco.engine.optim import build_optimizer
from gpaco.engine.step import Batch, FitContext
from gpaco.methods import get_method
from gpaco.models.mislas import build_lws_classifier, build_stage1_classifier

BLOCK = "backbone.layer4.1."  # the last block of the small trunk below


def pretrained_trunk(seed: int = 0) -> ResNet:
    """A small Bottleneck ResNet (layer4 of two blocks, 2048-d as ResNet-152) standing in for a
    pretrained one: BatchNorm affines and running statistics far from a fresh layer's 1/0."""
    torch.manual_seed(seed)
    trunk = ResNet(Bottleneck, layers=(1, 1, 1, 2), num_classes=0)
    for m in trunk.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.num_batches_tracked.fill_(1000)
    return trunk


def changed(before: dict, after: dict) -> set:
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_stage1_trains_only_the_new_block_and_the_classifier():
    """The last block is re-initialised (PyTorch's default init, fresh BatchNorm), the rest of the
    trunk keeps its pretrained weights; after SGD steps on mixup batches only that block and
    ``fc`` changed, and no trunk BatchNorm statistic moved (the trunk runs in eval mode, without
    autograd)."""
    trunk = pretrained_trunk()
    pretrained = {f"backbone.{k}": v.clone() for k, v in trunk.state_dict().items()}
    model = build_stage1_classifier(trunk, 5, new_last_block=True)
    assert model.block_name == "layer4.1"
    start = {k: v.clone() for k, v in model.state_dict().items()}
    for k, v in pretrained.items():
        if not k.startswith(BLOCK):
            assert torch.equal(start[k], v), k  # the pretrained trunk, untouched
    for name, m in model.block.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # a fresh layer: weight 1, bias 0, statistics reset
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any(), name
            assert not m.running_mean.any() and torch.equal(m.running_var, torch.ones_like(m.running_var))
            assert m.num_batches_tracked.item() == 0
        elif isinstance(m, torch.nn.Conv2d):  # PyTorch's default (kaiming-uniform, a = sqrt(5)): |w| <= fan_in^-1/2
            old = pretrained[f"{BLOCK}{name}.weight"]
            assert not torch.equal(m.weight, old) and m.weight.abs().max() <= m.weight[0].numel() ** -0.5, name
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith((BLOCK, "fc."))}

    method = get_method("mislas")
    optimizer = build_optimizer(model, lr=0.1, wd=5e-4)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == \
        {id(p) for n, p in model.named_parameters() if n in trainable}
    seen = []
    hook = model.backbone.layer4[0].register_forward_hook(lambda m, i, out: seen.append(out.requires_grad))
    model.train()
    assert not model.backbone.training and not model.backbone.layer4[0].training and model.block.training
    ctx = FitContext(model=model, criterion=method.build_criterion(), optimizer=optimizer, method=method,
                     device=torch.device("cpu"), options={"mixup_alpha": 0.2})
    torch.manual_seed(1)
    for _ in range(3):
        out = method.training_step(ctx, Batch(torch.randn(8, 3, 32, 32) * 2 + 1, torch.randint(0, 5, (8,))))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    hook.remove()
    assert seen == [False] * 3  # the frozen trunk builds no graph (the original ran it under no_grad)
    moved = changed(start, model.state_dict())
    assert {k for k in moved if not k.startswith((BLOCK, "fc."))} == set()  # trunk weights and BN statistics
    assert {k for k in start if k.startswith((BLOCK, "fc.")) and "num_batches" not in k} <= moved
    model.eval()
    assert not model.block.training


def test_stage2_shift_bn_re_estimates_only_the_new_block():
    """Stage 2 with ``new_last_block``: the whole trunk is frozen; ``shift_bn`` puts that block
    alone in train mode, so only its BatchNorm statistics move; without it nothing moves."""
    x = torch.randn(8, 3, 32, 32) * 3 + 1
    for shift in (True, False):
        model = build_lws_classifier(pretrained_trunk(), 5, shift_bn=shift, new_last_block=True).train()
        assert {n for n, p in model.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias", "lws.scale"}
        assert not model.backbone.training and not model.backbone.layer4[0].training
        assert model.backbone.layer4[1].training is shift
        before = {k: v.clone() for k, v in model.state_dict().items()}
        model(x).sum().backward()
        moved = changed(before, model.state_dict())
        stats = {k for k in before if k.startswith(BLOCK) and ("running_" in k or "num_batches" in k)}
        assert moved == (stats if shift else set()), sorted(moved ^ stats)[:4]
    plain = build_lws_classifier(pretrained_trunk(), 5, shift_bn=True).train()  # without it: the whole trunk shifts
    assert plain.backbone.training and plain.backbone.layer1.training


def test_two_stages_through_the_trainer_rebuild_and_refuse_mismatches(demo_data, tmp_path):
    """Stage 1 records ``new_last_block`` in its model config; stage 2 given the flag loads it and
    shifts only the new block's statistics (resnet8: ``layer3.0``); the evaluator rebuilds the
    stage-2 model from its checkpoint alone. A stage 2 without the flag, and ``--freeze`` with
    it, are refused in one line naming the flag."""
    s1 = tmp_path / "stage1"
    trainer.main(demo_flags(demo_data) + [
        "--method", "mislas", "--new-last-block", "--mixup-alpha", "1.0", "--batch-size", "32", "--epochs", "1",
        "--lr", "0.05", "--schedule", "step", "--warmup-epochs", "1", "--output-dir", str(s1)])
    ckpt = torch.load(s1 / "best.pth", weights_only=True)
    assert ckpt["model_config"]["options"]["new_last_block"] is True
    stage1 = ckpt["model"]

    base = demo_flags(demo_data) + ["--method", "mislas_stage2", "--stage1", str(s1 / "best.pth"), "--batch-size",
                                    "32", "--epochs", "1", "--lr", "0.1", "--schedule", "cosine_plain"]
    with pytest.raises(SystemExit, match="trained with --new-last-block: give stage 2 --new-last-block"):
        trainer.main(base + ["--shift-bn", "--output-dir", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="--new-last-block already freezes all of the trunk except.*drop --freeze"):
        trainer.main(demo_flags(demo_data) + ["--method", "mislas", "--new-last-block", "--freeze",
                                              "all_but_last_block", "--output-dir", str(tmp_path / "y")])

    s2 = tmp_path / "stage2"
    result = trainer.main(base + ["--new-last-block", "--shift-bn", "--output-dir", str(s2)])
    stage2 = torch.load(s2 / "best.pth", weights_only=True)["model"]
    moved = {k for k, v in stage1.items() if k.startswith("backbone.") and not torch.equal(stage2[k], v)}
    assert moved and all(k.startswith("backbone.layer3.0.") and ("running_" in k or "num_batches" in k)
                         for k in moved), sorted(moved)
    assert not torch.equal(stage2["fc.weight"], stage1["fc.weight"])
    ev = evaluator.main(["--checkpoint", str(s2 / "best.pth"), "--test-list", str(demo_data / "test_small.txt"),
                         "--batch-size", "50", "--output-dir", str(tmp_path / "eval"),
                         *demo_flags(demo_data, lists=False)])
    assert ev["top1"] == pytest.approx(result["top1"])


def test_stage1_keeps_the_last_partial_batch(demo_data, tmp_path):
    """The original's stage-1 loader keeps the last, partial batch: an epoch trains on every
    one of the 235 images (7 batches of 32 and one of 11), not 224."""
    from gpaco.data.build import train_loader

    assert get_method("mislas").drop_last is False
    if "drop_last" not in inspect.signature(train_loader).parameters:
        pytest.skip("the engine does not read Method.drop_last yet (gpaco/data/build.py train_loader)")
    trainer.main(demo_flags(demo_data) + [
        "--method", "mislas", "--mixup-alpha", "1.0", "--batch-size", "32", "--epochs", "1", "--lr", "0.05",
        "--schedule", "step", "--warmup-epochs", "1", "--output-dir", str(tmp_path / "s1")])
    rec = json.loads((tmp_path / "s1" / "log.jsonl").read_text().splitlines()[0])
    assert round(rec["train_images_per_s"] * rec["train_time_s"]) == 235
