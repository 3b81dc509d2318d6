"""Adversarial training (``ikl_at``, ``gkl_at``, ``trades_at``, ``pgd_at``): the attack schedule,
the LR schedule and three-epoch training traces against the released DKL code's own numbers
(tests/data/kd/README.md), run through the methods' own step."""
import gzip
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import gpaco.methods.adversarial as adversarial
from gpaco.engine.schedule import lr_at_epoch_cosine
from gpaco.engine.step import Batch, FitContext
from gpaco.methods import get_method
from gpaco.methods.adversarial import attack_schedule

DATA = Path(__file__).resolve().parent / "data" / "kd"
DTYPES = {"float64": torch.float64, "float32": torch.float32}
TRACE_RTOL = {"float64": 1e-7, "float32": 1e-4}


def load(name):
    with gzip.open(DATA / name, "rt") as f:
        return json.load(f)


FILES = {"ikl_at": load("adv_ikl.json.gz"), "gkl_at": load("adv_gkl.json.gz")}


def close(got, exp, rtol, what=""):
    """max|got - exp| <= rtol * max|exp| (the vectors' own criterion)."""
    got = torch.as_tensor(got).double()
    exp = torch.as_tensor(exp, dtype=torch.float64)
    assert got.shape == exp.shape, f"{what}: shape {tuple(got.shape)} != {tuple(exp.shape)}"
    err, scale = (got - exp).abs().max().item(), exp.abs().max().item()
    assert err <= rtol * scale, f"{what}: max abs error {err:.3g} > {rtol:g} x {scale:.3g}"


# --------------------------------------------------------------------------- schedules

@pytest.mark.parametrize("method", sorted(FILES))
def test_attack_schedule_is_the_released_one(method):
    runs = FILES[method]["attack_schedule"]["runs"]
    assert {r["budget"] for r in runs} == {"high", "low"}
    for run in runs:
        for v in run["values"]:
            radius, step, steps = attack_schedule(v["epoch"], run["epochs"], epsilon=8, budget=run["budget"])
            assert steps == v["iters_attack"]
            assert radius == pytest.approx(v["varepsilon"], rel=1e-15)
            assert step == pytest.approx(v["step_size"], rel=1e-15)


def test_attack_schedule_overrides_and_errors():
    assert attack_schedule(3, 4, epsilon=8, ramp=False) == pytest.approx((8 / 255, 4 / 255, 5))
    assert attack_schedule(2, 4, steps=10, step_size=2) == pytest.approx((4 / 255, 2 / 255, 10))
    with pytest.raises(ValueError, match="--at-budget"):
        attack_schedule(1, 4, budget="medium")
    with pytest.raises(ValueError, match="epoch 5 is not in 1..4"):
        attack_schedule(5, 4)


@pytest.mark.parametrize("method", sorted(FILES))
def test_lr_schedule_is_the_engine_cosine(method):
    for run in FILES[method]["lr_schedule"]["runs"]:
        for v in run["values"]:
            got = lr_at_epoch_cosine(v["epoch"] - 1, base_lr=run["lr"], epochs=run["epochs"],
                                     warmup_epochs=run["warmup"])
            assert got == pytest.approx(v["lr"], rel=1e-13)


# --------------------------------------------------------------------------- training traces

class TinyNet(nn.Module):
    """The traces' network: flatten -> Linear -> BatchNorm1d -> ReLU -> Linear."""

    def __init__(self, d_in, hidden, classes):
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x.flatten(1)))))


def trace_options(method, trace):
    p = trace["params"]
    cifar10 = "cifar10" in Path(trace["file"]).name and "cifar100" not in Path(trace["file"]).name
    options = dict(epochs=p["epochs"], lr=p["lr"], num_classes=p["num_classes"], norm="none",
                   at_epsilon=float(p["epsilon"]), at_budget=p["train_budget"], at_ramp=True,
                   awp_gamma=p["awp_gamma"], awp_warmup=p["awp_warmup"], at_alpha=p["alpha"], at_beta=p["beta"],
                   at_temperature=p["T"], attack_alpha=1.0, attack_beta=0.0 if cifar10 else 1.0,
                   at_average_decay=0.9)
    if method == "ikl_at":
        options.update(at_aug_weight=p["gamma"], at_stats_momentum=p["m"])
    else:
        options.update(at_aug_weight=p["aug_weight"], at_gamma=p["gamma"])
    return options


def run_trace(method_name, trace, kind, monkeypatch):
    """The trace's three epochs through the method's step: per epoch (lr, losses, attack
    outputs, class matrix, state dict), and the AWP directions."""
    dtype = DTYPES[kind]
    p = trace["params"]
    previous, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(dtype)  # as the trace's float64 run (the class statistics' buffers too)
    # Two intra-op threads, as the vectors were made: in the float32 GKL autoaug trace one pixel's
    # gradient is 1e-4 of the batch's largest (-4.5e-10 in float64) and its sign, which the attack
    # steps along, follows the matmul's summation order; with one thread it flips at epoch 1 batch 2.
    torch.set_num_threads(2)
    try:
        net = TinyNet(p["d_in"], p["hidden"], p["num_classes"]).to(dtype)
        state = {k: torch.tensor(v, dtype=dtype) for k, v in trace["inputs"]["model_state"].items()}
        missing, _ = net.load_state_dict(state, strict=False)  # BatchNorm's running statistics start fresh
        assert set(missing) <= {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
        options = trace_options(method_name, trace)
        method = get_method(method_name).for_run()
        opt = torch.optim.SGD(net.parameters(), lr=p["lr"], momentum=0.9, weight_decay=p["weight_decay"])
        ctx = FitContext(model=net, criterion=method.build_criterion(), optimizer=opt, method=method,
                         device=torch.device("cpu"), options=options)
        method.setup(ctx)
        noise = iter(trace["inputs"]["start_noise"])
        method.start_noise = lambda images: torch.tensor(next(noise), dtype=dtype)
        attacks, directions = [], []

        def recording_attack(*args, **kwargs):
            attacks.append(adversarial_pgd(*args, **kwargs))
            return attacks[-1]

        def recording_awp(*args, **kwargs):
            directions.append(adversarial_awp(*args, **kwargs))
            return directions[-1]

        adversarial_pgd, adversarial_awp = adversarial.pgd_attack, adversarial.awp_direction
        monkeypatch.setattr(adversarial, "pgd_attack", recording_attack)
        monkeypatch.setattr(adversarial, "awp_direction", recording_awp)
        epochs = []
        for epoch, batches in enumerate(trace["inputs"]["batches"]):
            lr = lr_at_epoch_cosine(epoch, base_lr=p["lr"], epochs=p["epochs"], warmup_epochs=p["lr_warmup"])
            for group in opt.param_groups:
                group["lr"] = lr
            ctx.epoch, losses, first = epoch, [], len(attacks)
            for step, item in enumerate(batches):
                x = torch.tensor(item["x"], dtype=dtype)
                images = [x[0], x[1]] if p["aug"] == "autoaug" else x
                ctx.step = step
                out = method.training_step(ctx, Batch(images, torch.tensor(item["target"])))
                opt.zero_grad()
                out.loss.backward()
                opt.step()
                method.after_optimizer_step(ctx)
                losses.append(out.loss.item())
            method.on_train_epoch_end(ctx)
            epochs.append(dict(lr=lr, losses=losses, x_adv=attacks[first:], matrix=method.stats.matrix.clone(),
                               state={k: v.clone() for k, v in net.state_dict().items()}))
        return epochs, directions
    finally:
        torch.set_default_dtype(previous)
        torch.set_num_threads(threads)


TRACES = [pytest.param(m, t, kind, id=f"{m}-{t['name']}-{kind}")
          for m, data in FILES.items() for t in data["train_traces"] for kind in DTYPES]


@pytest.mark.parametrize("method_name,trace,kind", TRACES)
def test_training_trace_matches_the_released_loop(method_name, trace, kind, monkeypatch):
    rtol = TRACE_RTOL[kind]
    epochs, directions = run_trace(method_name, trace, kind, monkeypatch)
    expected = trace[kind]
    for e, (got, exp) in enumerate(zip(epochs, expected["epochs"])):
        where = f"epoch {exp['epoch']}"
        assert got["lr"] == pytest.approx(exp["lr"], rel=1e-13)
        close(got["losses"], exp["batch_losses"], rtol, f"{where} batch losses")
        for b, (x, x_exp) in enumerate(zip(got["x_adv"], exp["x_adv"])):
            close(x, x_exp, rtol, f"{where} batch {b} attack output")
        close(got["matrix"], exp["class_weight_after"], rtol, f"{where} class matrix")
        assert set(got["state"]) == set(exp["state_after"])
        for k, v in exp["state_after"].items():
            close(got["state"][k], v, rtol, f"{where} {k}")
    assert len(directions) == len(expected["awp_diff"]) > 0
    for b, (got, exp) in enumerate(zip(directions, expected["awp_diff"])):
        assert set(got) == set(exp)
        for k in exp:
            close(got[k], exp[k], rtol, f"AWP direction {b} {k}")
