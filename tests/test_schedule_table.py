"""The SCHEDULES table as the one source of LR schedules: schedule_from_flags against the
per-schedule branches the classification trainer had, and poly against segmentation's poly_lr
(docs/method.md#learning-rate-schedules)."""
from __future__ import annotations

import argparse
import inspect
import json

import pytest

from gpaco.classification.args import parse_train_args
from gpaco.engine.schedule import (
    FLAG_OF_KEYWORD, SCHEDULE_ALIASES, SCHEDULES, LRSchedule, build_schedule, poly_lr, schedule_from_flags,
)
from gpaco.segmentation import train as seg_train

CHOICES = ("cosine", "cosine_epoch", "step_cifar", "mae_cosine", "cosine_plain", "step", "cosine_min", "constant")


def branchy_build_lr_schedule(args: argparse.Namespace) -> LRSchedule:
    """gpaco/classification/train.py's build_lr_schedule before the table (a frozen copy)."""
    if args.schedule == "step_cifar":
        return build_schedule("step_cifar", base_lr=args.lr, warmup_epochs=args.warmup_epochs)
    if args.schedule == "mae_cosine":
        return build_schedule("mae_cosine", base_lr=args.lr, min_lr=args.min_lr, epochs=args.epochs,
                              warmup_epochs=args.warmup_epochs)
    if args.schedule == "cosine_plain":
        return build_schedule("cosine_plain", base_lr=args.lr, epochs=args.epochs)
    if args.schedule == "step":
        return build_schedule("step", base_lr=args.lr, warmup_epochs=args.warmup_epochs, milestones=args.milestones,
                              warmup_start=args.warmup_start)
    if args.schedule == "cosine_min":
        return build_schedule("cosine_min", base_lr=args.lr, epochs=args.epochs, warmup_epochs=args.warmup_epochs)
    if args.schedule == "constant":
        return build_schedule("constant", base_lr=args.lr)
    return build_schedule("cosine", base_lr=args.lr, epochs=args.epochs, warmup_epochs=args.warmup_epochs)


def classification_args(schedule: str, *extra: str) -> argparse.Namespace:
    return parse_train_args(["--train-list", "x", "--schedule", schedule, *extra])


FLAG_SETS = (
    (),
    ("--epochs", "400", "--lr", "0.02"),
    ("--epochs", "200", "--lr", "0.1", "--warmup-epochs", "5", "--milestones", "160", "180",
     "--warmup-start", "0.3333333333333333"),
    ("--epochs", "100", "--lr", "0.0005", "--min-lr", "1e-6", "--warmup-epochs", "5"),
    ("--epochs", "3", "--lr", "0.3", "--milestones", "1", "2"),  # warmup shortened to fit
    ("--epochs", "12", "--blr", "1e-3", "--batch-size", "96", "--accum-iter", "2", "--warmup-epochs", "2",
     "--milestones", "4", "9", "--warmup-start", "0.5"),
)


@pytest.mark.parametrize("schedule", CHOICES)
@pytest.mark.parametrize("flags", FLAG_SETS, ids=range(len(FLAG_SETS)))
def test_table_matches_the_per_schedule_branches(schedule, flags):
    args = classification_args(schedule, *flags)
    want = branchy_build_lr_schedule(args)
    got = schedule_from_flags(args.schedule, vars(args))
    assert (got.name, got.per_iteration, got.fn, got.kwargs) == (want.name, want.per_iteration, want.fn, want.kwargs)
    epochs = range(args.epochs + 3)
    if want.per_iteration:
        points = [(e, it, ipe) for e in epochs for ipe in (1, 7, 100) for it in range(0, ipe, max(ipe // 7, 1))]
    else:
        points = [(e, 3, 10) for e in epochs]
    assert [got(*p) for p in points] == [want(*p) for p in points]  # bit-equal floats


def test_mae_recipe_through_the_table(refvectors):
    c = json.loads((refvectors / "lr_schedules.json").read_text())["vit_b_gpaco"]
    args = classification_args("mae_cosine", "--lr", repr(c["lr"]), "--min-lr", repr(c["min_lr"]),
                               "--epochs", str(c["epochs"]), "--warmup-epochs", str(c["warmup"]))
    sched = schedule_from_flags(args.schedule, vars(args))
    for frac, want in c["at_fractional_epochs"].items():
        epoch = int(float(frac))
        assert sched(epoch, round((float(frac) - epoch) * 100), 100) == want, frac


def poly_cases():
    defaults = vars(seg_train.parse_train_args([]))
    yield defaults
    yield {**defaults, "iters": 2}  # a dry run's max_iters
    yield {**defaults, "iters": 160000, "lr": 6e-5, "min_lr": 0.0, "power": 1.0, "warmup_iters": 1500}
    yield {**defaults, "iters": 1000, "lr": 0.01, "min_lr": 1e-4, "power": 0.9, "warmup_iters": 100,
           "warmup_ratio": 0.1}


@pytest.mark.parametrize("flags", list(poly_cases()), ids=range(4))
def test_poly_is_segmentations_poly_lr(flags):
    sched = schedule_from_flags("poly", flags)
    assert sched.name == "poly" and sched.per_iteration
    n = flags["iters"]
    its = range(n + 1)  # every iteration of the run, and the end
    want = [poly_lr(it, base_lr=flags["lr"], max_iters=n, power=flags["power"], min_lr=flags["min_lr"],
                    warmup_iters=flags["warmup_iters"], warmup_ratio=flags["warmup_ratio"]) for it in its]
    assert [sched(it) for it in its] == want  # bit-equal floats


def test_poly_optional_flags_keep_mmcv_defaults():
    sched = schedule_from_flags("poly", {"lr": 0.01, "iters": 100})
    assert [sched(it) for it in range(101)] == [poly_lr(it, base_lr=0.01, max_iters=100) for it in range(101)]


def test_table_rows_match_their_functions():
    """Each row's required/optional keywords are the function's keyword-only parameters
    without/with a default, so the table cannot drift from the functions."""
    for name, entry in SCHEDULES.items():
        params = list(inspect.signature(entry.fn).parameters.values())[1:]
        assert all(p.kind is p.KEYWORD_ONLY for p in params), name
        assert entry.required == {p.name for p in params if p.default is p.empty}, name
        assert entry.optional == {p.name for p in params if p.default is not p.empty}, name
        assert entry.from_flags <= entry.keywords, name
    assert set(SCHEDULE_ALIASES.values()) <= set(SCHEDULES)
    assert set(FLAG_OF_KEYWORD) <= {k for e in SCHEDULES.values() for k in e.keywords}


def test_flags_left_out_of_a_row_are_not_read():
    flags = vars(classification_args("step_cifar", "--milestones", "1", "2"))
    assert schedule_from_flags("step_cifar", flags).kwargs == {"base_lr": 0.02, "warmup_epochs": 10}
    flags = {"lr": 0.1, "epochs": 10, "warmup_epochs": 3, "min_lr_ratio": 0.5}
    assert "min_lr_ratio" not in schedule_from_flags("cosine_min", flags).kwargs


def test_schedule_from_flags_errors():
    with pytest.raises(ValueError, match="unknown LR schedule"):
        schedule_from_flags("linear", {"lr": 0.1})
    with pytest.raises(TypeError, match="--iters"):
        schedule_from_flags("poly", {"lr": 0.1})
    with pytest.raises(TypeError, match="--warmup-epochs"):
        schedule_from_flags("cosine", {"lr": 0.1, "epochs": 10})
    with pytest.raises(ValueError, match="max_iters"):
        schedule_from_flags("poly", {"lr": 0.1, "iters": 0})
    assert schedule_from_flags("cosine_epoch", {"lr": 0.1, "epochs": 10, "warmup_epochs": 1}).name == "cosine"
