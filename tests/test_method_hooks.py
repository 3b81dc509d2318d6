"""Methods that own their training step, defined here and nowhere else.

Two toy methods are registered from this file alone (no gpaco module edited) and run through
``tools/train.py``'s engine on the demo data: they train, save, stop on SIGTERM mid-epoch and
resume bit-identically, and evaluate with ``tools/eval.py``.

* ``toy_kd``: knowledge distillation from a frozen teacher built from a demo run's checkpoint
  (its ``model_config``): the teacher runs in eval mode, is not in the optimizer, not in the
  saved state and not inside the (DDP-wrapped) model.
* ``toy_fgsm``: adversarial training: the step attacks the batch with one-step FGSM in eval
  mode, then trains on the attacked images.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import demo_flags
from gpaco.checkpoint import load_checkpoint
from gpaco.classification import evaluate as evaluator, train as trainer
from gpaco.engine.preemption import FAULT_ENV
from gpaco.engine.step import Batch, FitContext, StepOutput
from gpaco.losses.criteria import CrossEntropyLoss
from gpaco.methods import ClassificationMethod, flag, register_method, unregister_method
from gpaco.methods.rebuild import build_from_config
from gpaco.models.contrastive import build_classifier


class _Plain(ClassificationMethod):
    """A linear classifier and cross-entropy; the toys change only the step."""

    default_aug, cifar_aug = "randcls", "cifar_regular"
    checkpoint_prefixes = {"backbone": "backbone.", "classifier": "fc."}

    def build_model(self, arch, num_classes, **options):
        return build_classifier(arch, num_classes, **options)

    def build_criterion(self, **options):
        return CrossEntropyLoss(prior=False, **options)


class ToyKD(_Plain):
    """CE + weight x T^2 x KL(teacher || student) at temperature T (Hinton et al. 2015)."""

    name, summary = "toy_kd", "distillation from a frozen teacher (test toy)"
    flags = (flag("--teacher", default=None, metavar="PATH", help="the teacher's best.pth"),
             flag("--toy-kd-temperature", type=float, default=4.0, range="(0, inf)", help="distillation temperature"),
             flag("--toy-kd-weight", type=float, default=1.0, range="[0, inf)", help="weight of the KL term"))
    seen_modes: list = []  # the teacher's mode at every step (class-level: the run works on a copy)

    def validate(self, options):
        if not options.get("teacher"):
            raise ValueError("--method toy_kd needs --teacher PATH")

    def setup(self, ctx: FitContext) -> None:
        ckpt = load_checkpoint(ctx.options["teacher"])
        teacher = build_from_config(ckpt["model_config"])
        teacher.load_state_dict(ckpt["model"])
        self.teacher = teacher.to(ctx.device).eval().requires_grad_(False)
        self.ctx = ctx

    def training_step(self, ctx: FitContext, batch: Batch) -> StepOutput:
        with torch.no_grad():
            teacher_logits = self.teacher(batch.images)
        ToyKD.seen_modes.append(self.teacher.training)
        with ctx.autocast():
            logits = ctx.model(batch.images)
        t = ctx.options["toy_kd_temperature"]
        kl = F.kl_div(F.log_softmax(logits.float() / t, 1), F.log_softmax(teacher_logits.float() / t, 1),
                      log_target=True, reduction="batchmean")
        loss = ctx.criterion(logits, batch.loss_targets) + ctx.options["toy_kd_weight"] * t * t * kl
        return StepOutput(loss, logits=logits, parts={"kl": kl.detach()})


class ToyFGSM(_Plain):
    """One-step FGSM (Goodfellow et al. 2015) on the normalised images, then CE on them."""

    name, summary = "toy_fgsm", "adversarial training with one-step FGSM (test toy)"
    flags = (flag("--fgsm-eps", type=float, default=0.1, range="[0, inf)", help="L-inf step of the attack"),)
    record: dict = {}

    def training_step(self, ctx: FitContext, batch: Batch) -> StepOutput:
        model = ctx.module  # the attack's backward must not touch DDP's gradient sync
        model.eval()
        clean = batch.images.detach().requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(model(clean), batch.targets), clean)
        attacked = (clean + ctx.options["fgsm_eps"] * grad.sign()).detach()
        model.train()
        with ctx.autocast():
            logits = ctx.model(attacked)
        ToyFGSM.record.update(clean=batch.images.detach().clone(), attacked=attacked)
        return StepOutput(ctx.criterion(logits, batch.loss_targets), logits=logits)


@pytest.fixture
def toys():
    methods = (ToyKD(), ToyFGSM())
    for m in methods:
        register_method(m)
    try:
        yield methods
    finally:
        for m in methods:
            unregister_method(m.name)


@pytest.fixture(scope="module")
def teacher(demo_data, tmp_path_factory):
    """A demo CE run's best.pth: the teacher of toy_kd."""
    out = tmp_path_factory.mktemp("teacher")
    trainer.main(demo_flags(demo_data) + ["--method", "ce", "--epochs", "1", "--batch-size", "32",
                                          "--warmup-epochs", "0", "--lr", "0.05", "--output-dir", str(out)])
    return out / "best.pth"


def _train(demo_data, out, method_flags, *extra):
    return trainer.main(demo_flags(demo_data) + ["--batch-size", "32", "--epochs", "2", "--warmup-epochs", "0",
                                                 "--lr", "0.05", "--seed", "3", "--output-dir", str(out),
                                                 *method_flags, *extra])


def _same_run(a, b):
    ca, cb = (torch.load(d / "checkpoint.pth", weights_only=True) for d in (a, b))
    assert ca["model"].keys() == cb["model"].keys()
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    assert json.loads((a / "metrics.json").read_text()) == json.loads((b / "metrics.json").read_text())


def _stop_and_resume(demo_data, tmp_path, monkeypatch, method_flags):
    straight = tmp_path / "straight"
    result = _train(demo_data, straight, method_flags)
    out = tmp_path / "stopped"
    monkeypatch.setenv(FAULT_ENV, "sigterm_step4")  # micro-batch 4 of epoch 1
    assert _train(demo_data, out, method_flags) == {"preempted": True, "signal": "SIGTERM", "epoch": 0, "step": 4}
    monkeypatch.delenv(FAULT_ENV)
    _train(demo_data, out, method_flags, "--resume", "auto")
    _same_run(straight, out)
    ev = evaluator.main(["--checkpoint", str(straight / "best.pth"), "--test-list",
                         str(demo_data / "test_small.txt"), "--batch-size", "50", "--output-dir",
                         str(tmp_path / "eval"), *demo_flags(demo_data, lists=False)])
    assert ev["top1"] == pytest.approx(result["top1"]) and ev["num_samples"] == result["num_samples"]
    return straight, result


@pytest.mark.slow
def test_distillation_with_a_frozen_teacher(toys, demo_data, teacher, tmp_path, monkeypatch):
    before = load_checkpoint(str(teacher))["model"]
    ToyKD.seen_modes.clear()
    flags = ["--method", "toy_kd", "--teacher", str(teacher), "--toy-kd-temperature", "2"]
    straight, result = _stop_and_resume(demo_data, tmp_path, monkeypatch, flags)
    assert result["num_samples"] > 0
    assert ToyKD.seen_modes and not any(ToyKD.seen_modes)  # eval mode at every step, the student's train() aside
    ckpt = load_checkpoint(str(straight / "checkpoint.pth"))
    assert not any(k.startswith("teacher") for k in ckpt["model"]) and ckpt["method_state"] == {}
    after = load_checkpoint(str(teacher))["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)  # the teacher file is untouched
    # the teacher is outside the optimizer and outside the model DDP would wrap
    method = ToyKD()
    model = method.build_model("resnet8", 10)
    ctx = FitContext(model=model, criterion=method.build_criterion(), optimizer=torch.optim.SGD(model.parameters(),
                     lr=0.1), method=method, device=torch.device("cpu"), options={"teacher": str(teacher)})
    method.setup(ctx)
    optimized = {id(p) for g in ctx.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in optimized for p in method.teacher.parameters())
    assert not any(m is method.teacher for m in ctx.module.modules())
    assert not any(p.requires_grad for p in method.teacher.parameters())


@pytest.mark.slow
def test_adversarial_training_with_fgsm(toys, demo_data, tmp_path, monkeypatch):
    _stop_and_resume(demo_data, tmp_path, monkeypatch, ["--method", "toy_fgsm", "--fgsm-eps", "0.25"])
    clean, attacked = ToyFGSM.record["clean"], ToyFGSM.record["attacked"]
    step = (attacked - clean).abs()
    assert torch.allclose(step[step > 0], torch.tensor(0.25), atol=1e-6) and (step > 0).float().mean() > 0.5


def test_fgsm_attack_runs_in_eval_mode():
    """BatchNorm statistics do not move during the attack; the training forward sees the attacked batch."""
    method = ToyFGSM()
    torch.manual_seed(0)
    model = method.build_model("resnet8", 4)
    modes = []
    model.register_forward_pre_hook(lambda m, args: modes.append((m.training, args[0].detach().clone())))
    ctx = FitContext(model=model, criterion=method.build_criterion(), optimizer=None, method=method,
                     device=torch.device("cpu"), options={"fgsm_eps": 0.5})
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model.train()
    method.training_step(ctx, Batch(x, y))
    (attack_mode, attack_in), (train_mode, train_in) = modes
    assert not attack_mode and train_mode and torch.equal(attack_in, x)
    assert torch.allclose((train_in - x).abs(), torch.full_like(x, 0.5))
    changed = [k for k, v in model.state_dict().items() if "running_mean" in k and not torch.equal(v, stats[k])]
    assert changed  # one BN update: the training forward's, the attack's left none
    model.eval()
