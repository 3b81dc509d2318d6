"""ResLT as a method: branch membership, the gamma-normalised evaluation, the pooling order,
and one epoch on the demo data through the registry, evaluated from its checkpoint."""
import pytest
import torch
import torch.nn.functional as F

from conftest import demo_flags
from gpaco.classification import evaluate as evaluator, train as trainer
from gpaco.data.cifar_lt import lt_class_counts
from gpaco.engine.schedule import build_schedule
from gpaco.losses.criteria import ResLTCriterion
from gpaco.methods import get_method
from gpaco.models.reslt import ResLTModel, build_reslt, gamma_normalised_weight


@pytest.mark.parametrize("num_classes, sizes, m_first, t_first", [(10, (8, 6), 2, 4), (100, (65, 30), 35, 70)])
@pytest.mark.parametrize("imb", [0.01, 0.02, 0.1])
def test_branches_from_counts_match_the_original_cifar_slices(num_classes, sizes, m_first, t_first, imb):
    counts = lt_class_counts(50000 / num_classes, num_classes, imb)
    masks = ResLTCriterion(num_classes=num_classes, class_counts=counts, branch_sizes=sizes).branch_masks
    assert masks[0].all()
    assert masks[1].nonzero().flatten().tolist() == list(range(m_first, num_classes))
    assert masks[2].nonzero().flatten().tolist() == list(range(t_first, num_classes))


def test_branch_ties_are_broken_by_class_index():
    masks = ResLTCriterion(class_counts=[5, 1, 1, 1, 9], branch_sizes=(2, 1)).branch_masks
    assert masks[1].tolist() == [False, True, True, False, False]
    assert masks[2].tolist() == [False, True, False, False, False]


def test_gamma_normalised_eval_is_the_hand_computation():
    torch.manual_seed(0)
    model = build_reslt("resnet8", 5, branch_sizes=(3, 2), head="conv", pool="before", eval_gamma=0.7).eval()
    x = torch.randn(3, 3, 16, 16)
    fmap = model.backbone.forward_features(x)
    feats = model.head(F.adaptive_avg_pool2d(fmap, 1)).flatten(1)  # [B, 3F]
    f_sum = feats.view(3, 3, -1).sum(1)
    w = model.fc.weight
    expected = f_sum @ (w / w.norm(dim=1, keepdim=True) ** 0.7).t()  # no bias
    assert torch.allclose(model(x), expected, atol=1e-5)
    assert torch.equal(gamma_normalised_weight(w, 0.0), w)
    model.eval_gamma = None  # CIFAR: the plain sum of the three branch logits (bias three times)
    expected = sum(model.fc(feats.view(3, 3, -1)[:, b]) for b in range(3))
    assert torch.allclose(model(x), expected, atol=1e-5)


def test_train_and_eval_pool_in_the_same_order_unless_asked():
    torch.manual_seed(0)
    model = ResLTModel("resnet8", 4, head="conv", pool="after")
    x = torch.randn(4, 3, 16, 16)
    model.train()
    train_out = model(x)
    assert train_out.branch_logits.shape == (3, 4, 4)
    assert torch.allclose(train_out.logits, train_out.branch_logits.sum(0))
    model.eval()
    fmap = model.backbone.forward_features(x)
    pooled_after = F.adaptive_avg_pool2d(model.head(fmap), 1).flatten(1).view(4, 3, -1)
    assert torch.allclose(model(x), model.fc(pooled_after).sum(1), atol=1e-5)
    model.original_eval_pooling = True  # the original's eval: pool before the ReLU'd head
    pooled_before = model.head(F.adaptive_avg_pool2d(fmap, 1)).flatten(1).view(4, 3, -1)
    assert torch.allclose(model(x), model.fc(pooled_before).sum(1), atol=1e-5)
    assert not torch.allclose(pooled_after, pooled_before)


@pytest.mark.parametrize("branches", [3, 2])
def test_conv_head_init_is_the_original_three_slice_block(branches):
    """The original's head conv is always F -> 3F (iNaturalist computes T and leaves it unused)
    with kaiming fan-out init, std sqrt(2 / (3F)): a two-branch head draws with that std (its
    H and M outputs are what the original's would be from the same weights); three branches
    are kaiming's init itself."""
    import math

    from gpaco.models.contrastive import make_backbone

    sizes = [3, 1][:branches - 1]
    torch.manual_seed(0)
    model = build_reslt("resnet8", 5, branch_sizes=sizes, head="conv")
    torch.manual_seed(0)  # the same draws by hand: trunk, the conv's default init, then kaiming fan-out
    _, dim = make_backbone("resnet8")
    conv = torch.nn.Conv2d(dim, branches * dim, 1, bias=False)
    torch.nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # std sqrt(2 / (K F))
    expected = conv.weight * math.sqrt(branches / 3)  # std sqrt(2 / (3 F))
    if branches == 3:
        assert torch.equal(model.head[0].weight, conv.weight)
    torch.testing.assert_close(model.head[0].weight, expected)
    assert model.head[0].weight.std().item() == pytest.approx(math.sqrt(2 / (3 * dim)), rel=0.05)


def test_device_batch_groups_every_batchnorm():
    """--device-batch with ResLT: BatchNorm of the trunk and the head per virtual device."""
    from gpaco.models.view_bn import _ViewBatchNorm

    model = get_method("reslt").build_model("resnet8", 5, branch_sizes=[3], head="conv", device_batch=4)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert model.head[1] in bns and all(isinstance(m, _ViewBatchNorm) and m.device_batch == 4 for m in bns)


def test_reslt_loss_on_the_model_output_uses_every_branch():
    torch.manual_seed(0)
    counts = [50, 20, 5]
    crit = get_method("reslt").build_criterion(num_classes=3, class_counts=counts, beta=0.5, branch_sizes=[2, 1])
    z = torch.randn(3, 4, 3, requires_grad=True)
    from gpaco.models.reslt import ResLTOutput

    loss = crit(ResLTOutput(z, z.sum(0)), torch.tensor([0, 1, 2, 2]))
    loss.backward()
    assert torch.isfinite(loss) and (z.grad.abs().sum((1, 2)) > 0).all()
    with pytest.raises(ValueError, match="3 class counts for 4 classes"):
        ResLTCriterion(num_classes=4, class_counts=counts)


def test_step_and_plain_cosine_schedules():
    reslt = build_schedule("step", base_lr=0.1, warmup_epochs=5, milestones=(160, 180), warmup_start=1 / 3)
    assert reslt(0) == pytest.approx(0.1 * (1 / 3 * 0.8 + 0.2))
    assert reslt(4) == pytest.approx(0.1) and reslt(159) == 0.1
    assert reslt(160) == pytest.approx(0.01) and reslt(180) == pytest.approx(0.001)
    mislas = build_schedule("step", base_lr=0.1, warmup_epochs=5, milestones=(160, 180))
    assert [mislas(e) for e in range(5)] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])
    cos = build_schedule("cosine_plain", base_lr=0.1, epochs=10)
    assert cos(0) == pytest.approx(0.1) and cos(5) == pytest.approx(0.05)
    assert build_schedule("constant", base_lr=0.3)(99) == 0.3


def test_reslt_flags_are_checked():
    from gpaco.classification.args import parse_train_args

    args = parse_train_args(["--train-list", "x", "--method", "reslt", "--reslt-branch-sizes", "6600",
                             "--reslt-gamma", "0.3"])
    assert args.reslt_branch_sizes == [6600] and args.aug == "randcls"
    with pytest.raises(SystemExit, match="--reslt-branch-sizes must be positive"):
        parse_train_args(["--train-list", "x", "--method", "reslt", "--reslt-branch-sizes", "0"])
    with pytest.raises(SystemExit, match=r"--reslt-beta is an option of --method reslt(/\S+)?, not ce"):
        parse_train_args(["--train-list", "x", "--method", "ce", "--reslt-beta", "0.5"])


def test_reslt_trains_on_the_demo_and_its_checkpoint_evaluates(demo_data, tmp_path):
    out = tmp_path / "reslt"
    result = trainer.main(demo_flags(demo_data) + [
        "--batch-size", "32", "--epochs", "1", "--lr", "0.05", "--schedule", "step", "--warmup-epochs", "1",
        "--method", "reslt", "--reslt-beta", "0.9", "--reslt-branch-sizes", "8", "6", "--reslt-head", "conv",
        "--reslt-gamma", "0.5", "--output-dir", str(out)])
    assert (out / "best.pth").is_file() and result["num_samples"] > 0
    ckpt = torch.load(out / "best.pth", weights_only=True)
    assert ckpt["method"] == "reslt" and any(k.startswith("head.") for k in ckpt["model"])
    ev = evaluator.main(["--checkpoint", str(out / "best.pth"), "--test-list", str(demo_data / "test_small.txt"),
                         "--batch-size", "50", "--output-dir", str(tmp_path / "eval"),
                         *demo_flags(demo_data, lists=False)])
    assert ev["top1"] == pytest.approx(result["top1"]) and ev["num_samples"] == result["num_samples"]
    assert not ev["checkpoints"][0].get("missing")


def test_nesterov_sgd_update_by_hand():
    """--nesterov (ResLT's CIFAR recipes): v = m v + (g + wd p); p -= lr (g + wd p + m v)."""
    from gpaco.engine.optim import build_optimizer

    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    lr, m, wd = 0.1, 0.9, 0.5
    opt = build_optimizer(model, lr=lr, momentum=m, wd=wd, nesterov=True)
    assert opt.param_groups[0]["nesterov"] is True
    p, v = 1.0, 0.0
    for g in (2.0, -1.0):
        model.weight.grad = torch.full((1, 1), g)
        opt.step()
        d = g + wd * p
        v = m * v + d
        p -= lr * (d + m * v)
        assert model.weight.item() == pytest.approx(p, rel=1e-6)
    assert p == pytest.approx(0.525 - 0.1 * ((-1.0 + 0.2625) + 0.9 * (0.9 * 2.5 - 1.0 + 0.2625)))  # by hand
    with pytest.raises(ValueError, match="Nesterov momentum is for SGD with momentum > 0"):
        build_optimizer(model, name="adamw", lr=lr, nesterov=True)
