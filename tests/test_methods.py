"""The method registry: every method is consistent, and a new method is one class.

``test_toy_method_through_the_registry_alone`` adds focal loss (Lin et al. 2017) the way
docs/contributing.md says: a criterion module, a method class and one ``register_method``
call, nothing else edited, then trains it on the demo data, saves, and evaluates the checkpoint.
(tests/test_method_hooks.py: methods that own their step -- a teacher, an attack.)
"""
import argparse

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gpaco.classification import evaluate as evaluator, train as trainer
from gpaco.classification.args import build_train_parser, parse_train_args
from gpaco.methods import (
    ClassificationMethod, add_method_flags, all_methods, build_criterion, flag, get_method, method_names,
    register_method, unregister_method,
)
from gpaco.models.contrastive import build_classifier


class FocalLoss(nn.Module):
    """Focal loss: mean of -(1 - p_y)^gamma log p_y."""

    def __init__(self, *, num_classes=None, class_counts=None, focal_gamma: float = 2.0):
        super().__init__()
        self.gamma = focal_gamma

    def forward(self, logits, targets):
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, targets[:, None]).squeeze(1)
        return (-(1 - log_p.exp()) ** self.gamma * log_p).mean()


class Focal(ClassificationMethod):
    name, summary = "focal", "focal loss (test toy)"
    flags = (flag("--focal-gamma", type=float, default=2.0, help="focusing parameter"),)
    loss_options = ("focal_gamma",)
    default_aug, cifar_aug = "randcls", "cifar_regular"
    checkpoint_prefixes = {"backbone": "backbone.", "classifier": "fc."}

    def build_model(self, arch, num_classes, **options):
        return build_classifier(arch, num_classes, **options)

    def build_criterion(self, **options):
        return FocalLoss(**options)


FOCAL = Focal()


@pytest.fixture
def focal():
    register_method(FOCAL)
    try:
        yield FOCAL
    finally:
        unregister_method("focal")


def test_focal_loss_hand_computed():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    p = torch.softmax(logits, 1)[:, 0]
    expected = (-(1 - p) ** 2 * p.log()).mean()
    assert FocalLoss(focal_gamma=2.0)(logits, torch.tensor([0, 0])).item() == pytest.approx(expected.item())
    assert FocalLoss(focal_gamma=0.0)(logits, torch.tensor([0, 0])).item() == pytest.approx(
        F.cross_entropy(logits, torch.tensor([0, 0])).item())


def test_toy_method_through_the_registry_alone(focal, demo_data, tmp_path):
    assert "focal" in method_names()
    assert "--focal-gamma" in build_train_parser().format_help()
    args = parse_train_args(["--train-list", "x", "--method", "focal", "--focal-gamma", "1.5"])
    assert args.aug == "randcls" and args.focal_gamma == 1.5
    with pytest.raises(SystemExit, match="--focal-gamma is an option of --method focal, not ce"):
        parse_train_args(["--train-list", "x", "--method", "ce", "--focal-gamma", "1.5"])

    out = tmp_path / "focal"
    common = ["--data-root", str(demo_data), "--image-size", "32", "--resize-size", "32", "--norm", "mnist",
              "--workers", "0"]
    result = trainer.main(common + [
        "--train-list", str(demo_data / "train_small.txt"), "--val-list", str(demo_data / "val_small.txt"),
        "--test-list", str(demo_data / "test_small.txt"), "--arch", "resnet8", "--batch-size", "32",
        "--epochs", "1", "--warmup-epochs", "0", "--lr", "0.05", "--print-freq", "0", "--aug", "digits",
        "--method", "focal", "--focal-gamma", "2", "--output-dir", str(out)])
    assert (out / "best.pth").is_file() and result["num_samples"] > 0
    ckpt = torch.load(out / "best.pth", weights_only=True)
    assert ckpt["method"] == "focal" and ckpt["args"]["focal_gamma"] == 2.0
    ev = evaluator.main(["--checkpoint", str(out / "best.pth"), "--test-list", str(demo_data / "test_small.txt"),
                         "--batch-size", "50", "--output-dir", str(tmp_path / "eval"), *common])
    assert ev["top1"] == pytest.approx(result["top1"]) and ev["num_samples"] == result["num_samples"]


def test_duplicate_row_and_unknown_method_are_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_method(get_method("gpaco"))
    with pytest.raises(ValueError, match="unknown segmentation method 'paco'; choose one of ce, gpaco"):
        get_method("paco", "segmentation")


def test_conflicting_shared_flag_is_refused():
    class Bad(Focal):
        name, flags = "bad", (flag("--alpha", type=float, default=9.0),)

    register_method(Bad())
    try:
        with pytest.raises(ValueError, match="redefines --alpha"):
            add_method_flags(argparse.ArgumentParser(), "classification")
    finally:
        unregister_method("bad")


@pytest.mark.parametrize("method", all_methods(), ids=lambda m: f"{m.task}-{m.name}")
def test_every_row_is_consistent(method):
    dests = {f.dest for f in method.flags}
    assert set(method.model_options) <= dests and set(method.loss_options) <= dests
    assert {"backbone", "classifier"} <= set(method.checkpoint_prefixes)
    if method.task == "classification":
        model = method.build_model("resnet8", 10, proj_dim=8, queue_size=16)
        state = model.state_dict()
        for prefix in method.checkpoint_prefixes.values():
            assert any(k.startswith(prefix) for k in state), prefix
        criterion = method.build_criterion(num_classes=10, class_counts=[10 - c for c in range(10)])
        assert isinstance(criterion, nn.Module)


def test_build_criterion_matches_the_functional_losses():
    from gpaco.losses import paco_loss, log_prior_from_counts
    from gpaco.models.contrastive import ContrastiveOutput

    g = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(12, 4, generator=g), dim=1)
    labels = torch.randint(0, 3, (12,), generator=g)
    logits = torch.randn(4, 3, generator=g)
    out = ContrastiveOutput(feats, labels, logits, 4)
    counts = [5, 3, 1]
    crit = build_criterion("gpaco", class_counts=counts, alpha=0.1, temperature=0.3)
    ref = paco_loss(feats, labels, logits, 4, alpha=0.1, temperature=0.3, log_prior=log_prior_from_counts(counts))
    assert crit(out, labels[:4]).item() == pytest.approx(ref.item())
    with pytest.raises(ValueError, match="2 class counts for 3 classes"):
        build_criterion("gpaco", class_counts=[1, 2], num_classes=3)


def test_docs_methods_table_is_the_registry():
    from pathlib import Path

    from gpaco.methods import describe

    text = (Path(__file__).resolve().parents[1] / "docs" / "recipes.md").read_text()
    start = text.index("<!-- methods-table")
    block = text[text.index("\n", start) + 1:text.index("<!-- /methods-table -->")].strip()
    assert block == describe(all_methods()), "regenerate the table with gpaco.methods.describe(all_methods())"


def test_each_flag_checks_its_own_range():
    """A method flag carries its interval; the task layer checks no flag by name."""
    temperature = next(f for f in get_method("gpaco").flags if f.dest == "temperature")
    assert temperature.problem(0.2) is None
    assert temperature.problem(0.0) == "--temperature must be > 0, got 0.0"
    assert temperature.problem(float("nan")) == "--temperature must be a finite number, got nan"
    beta = next(f for f in get_method("reslt").flags if f.dest == "reslt_beta")
    assert beta.problem(1.0) is None and beta.problem(1.5) == "--reslt-beta must be in [0, 1], got 1.5"
    for argv, message in [(["--temperature", "0"], "--temperature must be > 0, got 0.0"),
                          (["--smoothing", "1"], "--smoothing must be in [0, 1), got 1.0"),
                          (["--alpha", "inf"], "--alpha must be a finite number, got inf"),
                          (["--queue-size", "-1"], "--queue-size must be >= 0, got -1")]:
        with pytest.raises(SystemExit, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            parse_train_args(["--train-list", "x", "--method", "gpaco", *argv])
    with pytest.raises(ValueError, match="flag range '0..1' is not an interval"):
        flag("--x", type=float, range="0..1")
