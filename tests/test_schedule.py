import json
import math

import pytest
import torch

from gpaco.engine.schedule import (
    LRSchedule,
    apply_lr,
    build_schedule,
    lr_at_epoch_cifar_step,
    lr_at_epoch_cosine,
    lr_at_iter_mae,
)


@pytest.fixture(scope="module")
def table(refvectors):
    return json.loads((refvectors / "lr_schedules.json").read_text())


@pytest.mark.parametrize("case", ["imagenet_lt_r50_paco", "places_r152"])
def test_cosine_matches_reference(table, case):
    c = table[case]
    sched = build_schedule("cosine", base_lr=c["lr"], epochs=c["epochs"], warmup_epochs=c["warmup"])
    assert len(c["per_epoch"]) == c["epochs"]
    for e, want in enumerate(c["per_epoch"]):
        got = lr_at_epoch_cosine(e, base_lr=c["lr"], epochs=c["epochs"], warmup_epochs=c["warmup"])
        assert got == pytest.approx(want, abs=1e-12, rel=0)
        # per-epoch: the iteration is ignored
        assert sched(e, 7, 100) == got == sched(e)
    # the off-by-one cosine never reaches 0
    assert 0 < c["per_epoch"][-1] < 0.01 * c["lr"]


def test_cifar_step_matches_reference(table):
    c = table["cifar_paco"]
    sched = build_schedule("step_cifar", base_lr=c["lr"])
    for e, want in enumerate(c["per_epoch"]):
        assert lr_at_epoch_cifar_step(e, base_lr=c["lr"]) == pytest.approx(want, abs=1e-12, rel=0)
        assert sched(e, 3, 10) == pytest.approx(want, abs=1e-12, rel=0)
    # the quirks: epoch 10 overshoots to 1.1*lr; the decay starts after the milestone
    assert c["per_epoch"][10] == pytest.approx(1.1 * c["lr"])
    assert c["per_epoch"][320] == c["lr"] and c["per_epoch"][321] == pytest.approx(0.1 * c["lr"])
    assert c["per_epoch"][360] == pytest.approx(0.1 * c["lr"]) and c["per_epoch"][361] == pytest.approx(0.01 * c["lr"])


def test_schedules_are_bit_exact(table):
    # Same operation order as the original: exact equality, not just 1e-12.
    for case in ("imagenet_lt_r50_paco", "places_r152"):
        c = table[case]
        assert [lr_at_epoch_cosine(e, base_lr=c["lr"], epochs=c["epochs"], warmup_epochs=c["warmup"])
                for e in range(c["epochs"])] == c["per_epoch"]
    c = table["cifar_paco"]
    assert [lr_at_epoch_cifar_step(e, base_lr=c["lr"]) for e in range(c["epochs"])] == c["per_epoch"]


def test_mae_matches_reference(table):
    c = table["vit_b_gpaco"]
    kw = dict(base_lr=c["lr"], min_lr=c["min_lr"], epochs=c["epochs"], warmup_epochs=c["warmup"])
    for ep, want in c["at_fractional_epochs"].items():
        assert lr_at_iter_mae(float(ep), **kw) == pytest.approx(want, abs=1e-12, rel=0)
    sched = build_schedule("mae_cosine", **kw)
    assert sched.per_iteration
    # epoch 4 + 99/100 iterations == fractional epoch 4.99
    assert sched(4, 99, 100) == pytest.approx(c["at_fractional_epochs"]["4.99"], abs=1e-12, rel=0)
    assert sched(0, 50, 100) == pytest.approx(c["at_fractional_epochs"]["0.5"], abs=1e-12, rel=0)
    assert sched(99, 0, 100) == pytest.approx(c["at_fractional_epochs"]["99"], abs=1e-12, rel=0)


def test_apply_respects_lr_scale():
    a, b, c = (torch.nn.Parameter(torch.zeros(1)) for _ in range(3))
    opt = torch.optim.AdamW([{"params": [a], "lr_scale": 0.5}, {"params": [b], "lr_scale": 1.0}, {"params": [c]}], lr=1.0)
    LRSchedule.apply(opt, 0.2)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.2, 0.2]
    apply_lr(opt, 0.4)
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.4, 0.4]


def test_build_schedule_validates():
    with pytest.raises(ValueError, match="unknown LR schedule"):
        build_schedule("linear", base_lr=0.1)
    with pytest.raises(TypeError, match="missing"):
        build_schedule("cosine", base_lr=0.1, epochs=10)
    with pytest.raises(TypeError, match="unknown"):
        build_schedule("cosine", base_lr=0.1, epochs=10, warmup_epochs=1, min_lr=0.0)
    with pytest.raises(ValueError, match="warmup"):
        build_schedule("mae_cosine", base_lr=0.1, min_lr=0.0, epochs=5, warmup_epochs=5)
    s = build_schedule("step_cifar", base_lr=1.0, warmup_epochs=2, milestones=[5, 8])
    assert [s(e) for e in (0, 2, 3, 5, 6, 9)] == [0.5, 1.5, 1.0, 1.0, 0.1, 0.01]
    # no warmup at all for cosine: starts at the (off-by-one) first cosine step
    s = build_schedule("cosine", base_lr=1.0, epochs=4, warmup_epochs=0)
    assert s(0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 5)))
