"""GenDD's learning-rate schedules and AdamW beta2 rise against the original's functions
(tests/data/gendd/lr_beta2_schedules.json, from refvectors-gendd/schedules.json), bit for bit;
the optimizer's weight-decay groups; the --schedule flags."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from gpaco.classification.args import parse_train_args
from gpaco.engine.args import FlagError
from gpaco.engine.optim import build_optimizer
from gpaco.engine.schedule import (
    Beta2Schedule, apply_beta2, beta2_at_step, build_schedule, lr_at_epoch_step, schedule_from_flags,
)

DATA = Path(__file__).resolve().parent / "data" / "gendd" / "lr_beta2_schedules.json"


@pytest.fixture(scope="module")
def table():
    return json.loads(DATA.read_text())["results"]


def test_cifar_stage2_step_with_the_plateau(table):
    case = table["cifar_stage2_step"]
    a = case["args"]
    sched = build_schedule("gendd_step", base_lr=a["learning_rate"], warmup_epochs=a["warmup_epochs"],
                           milestones=a["lr_decay_epochs"])
    got = [sched(e) for e in range(a["epochs"])]
    assert got == case["lr"]  # bit-equal floats
    # the quirk: epochs 50..150 (1-based) run at 0.98 lr, never at lr
    assert set(got[49:150]) == {a["learning_rate"] * 49 / 50} and a["learning_rate"] not in got


def test_step_is_the_intended_cifar_schedule(table):
    """``--schedule step`` with the same warm-up and milestones reaches lr at epoch 50 and keeps it."""
    a = table["cifar_stage2_step"]["args"]
    original = table["cifar_stage2_step"]["lr"]
    intended = [lr_at_epoch_step(e, base_lr=a["learning_rate"], warmup_epochs=50, milestones=(150, 180, 210))
                for e in range(240)]
    assert intended[49:150] == [a["learning_rate"]] * 101
    assert intended[:49] == pytest.approx(original[:49], rel=1e-15)
    assert intended[150:] == pytest.approx(original[150:], rel=1e-15)


@pytest.mark.parametrize("key", ["imagenet_stage2_cos/0", "imagenet_stage2_cos/1", "imagenet_stage1_cos"])
def test_imagenet_cosines(table, key):
    name, _, index = key.partition("/")
    case = table[name][int(index)] if index else table[name]
    a = case["args"]
    sched = build_schedule("gendd_cosine", base_lr=a["lr"], min_lr=a["min_lr"], epochs=a["epochs"],
                           warmup_epochs=a["warmup_epochs"])
    assert [sched(e, 5, 10) for e in range(a["epochs"])] == case["lr"]
    assert case["lr"][-1] == a["min_lr"]


def test_cifar_stage1_cosine_is_gendd_cosine_without_warmup(table):
    case = table["cifar_stage1_cos"]
    a = case["args"]
    sched = build_schedule("gendd_cosine", base_lr=a["learning_rate"], min_lr=a["min_learning_rate"],
                           epochs=a["epochs"], warmup_epochs=0)
    assert [sched(e) for e in range(a["epochs"])] == case["lr"]


def test_lt_teacher_cosine_is_mae_cosine_per_epoch(table):
    case = table["lt_teacher_cos"]
    a = case["args"]
    sched = build_schedule("mae_cosine_epoch", base_lr=a["lr"], min_lr=a["min_lr"], epochs=a["epochs"],
                           warmup_epochs=a["warmup_epochs"])
    assert not sched.per_iteration
    assert [sched(e, 7, 10) for e in range(a["epochs"])] == case["lr"]
    assert case["lr"][0] == 0.0


def test_beta2_rise(table):
    case = table["beta2_schedule_cos"]
    a = case["args"]
    assert a["epochs"] * a["iters"] - 1 == case["total_steps"]
    got = [beta2_at_step(s, total_steps=case["total_steps"], beta2_min=a["adam_beta_min"],
                         beta2_max=a["adam_beta_max"]) for s in case["steps"]]
    assert got == case["beta2"]
    sched = Beta2Schedule(beta2_min=a["adam_beta_min"], beta2_max=a["adam_beta_max"], epochs=a["epochs"])
    by_position = [sched(*divmod(s, a["iters"]), a["iters"]) for s in case["steps"][:-1]]
    assert by_position == case["beta2"][:-1]  # the last listed step is one past the run
    assert sched(0, 0, 1) == a["adam_beta_min"] and Beta2Schedule(0.96, epochs=1)(0, 0, 1) == 0.96


def test_apply_beta2_drives_adamw():
    """The value set in the group is what AdamW's next step uses (its second moment)."""
    p = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = torch.optim.AdamW([p], lr=0.1, betas=(0.9, 0.95), weight_decay=0.0)
    apply_beta2(opt, 0.5)
    assert opt.param_groups[0]["betas"] == (0.9, 0.5)
    p.grad = torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64)
    opt.step()
    assert torch.equal(opt.state[p]["exp_avg_sq"], 0.5 * p.grad ** 2)


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="warmup_epochs must be > 0"):
        build_schedule("gendd_step", base_lr=0.1, warmup_epochs=0)
    with pytest.raises(ValueError, match="warmup_epochs < epochs"):
        build_schedule("gendd_cosine", base_lr=0.1, min_lr=0.0, epochs=5, warmup_epochs=5)
    with pytest.raises(ValueError, match="beta2_min"):
        Beta2Schedule(beta2_min=0.9995, epochs=3)


def test_gendd_step_edge_cases():
    # W = 1: no warm-up epoch ran, the optimizer keeps its initial lr until the first milestone
    sched = build_schedule("gendd_step", base_lr=0.5, warmup_epochs=1, milestones=(2,))
    assert [sched(e) for e in range(4)] == [0.5, 0.5, 0.5 * 0.1, 0.5 * 0.1]


# --------------------------------------------------------------------------- flags


def train_args(*extra: str):
    return parse_train_args(["--train-list", "x", *extra])


def test_schedules_from_the_command_line():
    args = train_args("--schedule", "gendd_step", "--lr", "1e-3", "--epochs", "240", "--warmup-epochs", "50",
                      "--milestones", "150", "180", "210")
    sched = schedule_from_flags(args.schedule, vars(args))
    assert sched(49) == 1e-3 * 49 / 50 and sched(150) == 1e-3 * 0.1
    args = train_args("--schedule", "gendd_cosine", "--lr", "2e-3", "--epochs", "100", "--warmup-epochs", "10")
    assert schedule_from_flags(args.schedule, vars(args))(99) == args.min_lr == 1e-6
    args = train_args("--schedule", "gendd_cosine", "--epochs", "5")  # the default warm-up: a third of a short run
    assert args.warmup_epochs == 1


@pytest.mark.parametrize("flags, message", [
    (("--schedule", "gendd_step", "--warmup-epochs", "0"), "--schedule gendd_step needs --warmup-epochs > 0"),
    (("--schedule", "gendd_cosine", "--epochs", "10", "--warmup-epochs", "10"),
     "--schedule gendd_cosine needs --warmup-epochs (10) < --epochs (10)"),
    (("--schedule", "gendd_step", "--milestones", "180", "150"), "--milestones must be ascending"),
])
def test_bad_schedule_flags(flags, message):
    with pytest.raises(FlagError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train_args(*flags)


# --------------------------------------------------------------------------- optimizer groups


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        self.cls_projector = nn.LayerNorm(4)
        self.diffloss = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.fc = nn.Linear(4, 2)


def test_adamw_groups_as_the_original():
    """wd on every parameter (BN, biases, the projector LayerNorm, the probe) except the denoiser."""
    model = _Toy()
    opt = build_optimizer(model, name="adamw", lr=1e-3, wd=0.05, decay_1d=True, no_decay_keys=("diffloss", "ln"),
                          betas=(0.9, 0.95))
    names = {id(p): n for n, p in model.named_parameters()}
    by_wd = {g["weight_decay"]: sorted(names[id(p)] for p in g["params"]) for g in opt.param_groups}
    assert by_wd[0.0] == sorted(n for n in names.values() if n.startswith("diffloss."))
    assert len(by_wd[0.05]) == len(names) - len(by_wd[0.0]) and "cls_projector.weight" in by_wd[0.05]
    assert all(g["betas"] == (0.9, 0.95) and g["lr"] == 1e-3 for g in opt.param_groups)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["eps"] == 1e-8


def test_default_adamw_groups_unchanged():
    model = _Toy()
    opt = build_optimizer(model, name="adamw", lr=1e-3, wd=0.05)
    no_decay = [p for g in opt.param_groups if g["weight_decay"] == 0.0 for p in g["params"]]
    assert {p.ndim for p in no_decay} == {1} and all(g["betas"] == (0.9, 0.999) for g in opt.param_groups)
    with pytest.raises(ValueError, match="AdamW options"):
        build_optimizer(model, name="sgd", lr=0.1, no_decay_keys=("diffloss",))
    assert math.isclose(opt.param_groups[0]["lr"], 1e-3)
