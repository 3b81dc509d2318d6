"""The distillation methods kl_kd / ikl_kd / gkl_kd (gpaco/methods/kd.py) and their frozen
teacher (gpaco/methods/teacher.py).

* the released KD loops' traces (tests/data/kd, the distillation-loop and ImageNet-LT-driver
  traces) driven through the method's own training step and epoch-end hook: CE weight,
  warm-up factor, class-wise statistics, per-batch losses and student gradients;
* the class statistics of an epoch under torchrun (2 processes) equal one process's, and a
  mid-epoch save restores every process's share;
* a distillation run stopped by SIGTERM mid-epoch and resumed ends bit-identical to the
  uninterrupted run, class statistics included;
* the teacher: every file layout, frozen, outside the optimizer / saved model / student,
  its accuracy line, one error line for a wrong ``--teacher-arch``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import demo_flags, run_worker
from gpaco.checkpoint import load_checkpoint
from gpaco.classification import train as trainer
from gpaco.engine.args import FlagError
from gpaco.engine.preemption import FAULT_ENV
from gpaco.engine.step import Batch, FitContext
from gpaco.losses.kd import ClassStats, gkl_loss
from gpaco.methods import flag_problem, get_method
from gpaco.methods.kd import warmup_factor
from gpaco.methods.teacher import load_teacher
from gpaco.models import build_kd_net, to_original_state_dict
from gpaco.models.contrastive import build_classifier

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data" / "kd"
DTYPES = {"float64": torch.float64, "float32": torch.float32}
RTOL = {"float64": 1e-7, "float32": 1e-5}


def close(got, exp, rtol):
    """max|got - exp| <= rtol * max|exp| (the vectors' own criterion)."""
    got, exp = torch.as_tensor(got).double(), torch.as_tensor(exp, dtype=torch.float64)
    err, scale = (got - exp).abs().max().item(), exp.abs().max().item()
    assert err <= rtol * scale, f"max abs error {err:.3g} > {rtol:g} x {scale:.3g}"


# --------------------------------------------------------------------------- traces through the step

class Fixed(nn.Module):
    """Returns the logits it holds, whatever the images: the student (a trainable leaf) or the
    teacher of a trace."""

    def __init__(self, logits: torch.Tensor, trainable: bool) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits, requires_grad=trainable)

    def forward(self, images):
        return self.logits


def trace_options(trace):
    """(method name, flag values by dest, 1-based epoch of each trace epoch) of a trace."""
    if "cfg" in trace:  # the mdistiller loop: 1-based epochs, warm-up, CE weight
        cfg = trace["cfg"]
        name = "gkl_kd" if "GAMMA" in cfg else "ikl_kd"
        opts = {"kd_temperature": cfg["T"], "kd_alpha": cfg["ALPHA"], "kd_beta": cfg["BETA"], "kd_t2": cfg["T2"],
                "kd_gi": cfg["GI"], "kd_warmup_epochs": cfg["WARMUP"], "kd_ce_weight": cfg["CE_WEIGHT"],
                "num_classes": cfg["NUM_CLASSES"]}
        if "GAMMA" in cfg:
            opts["kd_gamma"] = cfg["GAMMA"]
        return name, opts
    args = trace["args"]  # the ImageNet-LT driver: no warm-up, CE weight 1
    name = {"IKL_KD": "ikl_kd", "GKL_KD": "gkl_kd", "KL_KD": "kl_kd"}[args["distill_loss"]]
    opts = {"kd_temperature": args["temperature"], "kd_alpha": args["alpha"], "kd_beta": args["beta"],
            "kd_t2": args["T2"], "kd_gi": args["GI"], "kd_weight": args["distill_w"], "kd_warmup_epochs": 0,
            "num_classes": args["num_classes"]}
    if "gamma" in args:
        opts["kd_gamma"] = args["gamma"]
    return name, opts


def traces():
    out = []
    for file in ("dkl_ikl.json", "gkl.json"):
        data = json.loads((DATA / file).read_text())
        out += [pytest.param(tr, kind, id=f"{data['name']}-{tr['name']}-{kind}")
                for key in ("distiller_trace", "imbalanced_trace") for tr in data[key] for kind in DTYPES]
    return out


@pytest.mark.parametrize("trace,kind", traces())
def test_released_traces_through_the_method_step(trace, kind):
    """Each batch through ``training_step`` (teacher and student logits fixed by the trace),
    each epoch closed by ``on_train_epoch_end``: the losses, the CE and KD parts, the student
    gradients and the class matrix used and produced each epoch are the released code's."""
    dtype, rtol = DTYPES[kind], RTOL[kind]
    name, opts = trace_options(trace)
    method = get_method(name).for_run()
    method.kd = method.settings(opts)
    C = opts["num_classes"]
    method.stats = ClassStats(C, dtype=dtype) if method.class_stats else None
    student = Fixed(torch.zeros(1, C, dtype=dtype), trainable=True)
    method.teacher = teacher = Fixed(torch.zeros(1, C, dtype=dtype), trainable=False)
    ctx = FitContext(model=student, criterion=method.build_criterion(), optimizer=None, method=method,
                     device=torch.device("cpu"), options=opts)
    for e, (epoch_in, epoch_out) in enumerate(zip(trace["inputs"]["epochs"], trace[kind])):
        ctx.epoch = epoch_out["epoch"] - 1 if "epoch" in epoch_out else e  # the loop's 0-based epoch
        if epoch_out["prior_used"] is not None:
            close(method.stats.matrix, epoch_out["prior_used"], rtol)
        for batch_in, batch_out in zip(epoch_in, epoch_out["batches"]):
            y = torch.tensor(batch_in["target"])
            student.logits = nn.Parameter(torch.tensor(batch_in["student"], dtype=dtype))
            teacher.logits = nn.Parameter(torch.tensor(batch_in["teacher"], dtype=dtype), requires_grad=False)
            out = method.training_step(ctx, Batch(torch.zeros(len(y), 1), y))
            out.loss.backward()
            close(out.loss.item(), batch_out["loss"], rtol)
            if "loss_ce" in batch_out:
                close(out.parts["ce"].item(), batch_out["loss_ce"], rtol)
                close(out.parts["kd"].item(), batch_out["loss_kd"], rtol)
            close(student.logits.grad, batch_out["grad_student"], rtol)
        method.on_train_epoch_end(ctx)
        if epoch_out["prior_after"] is not None:
            close(method.stats.matrix, epoch_out["prior_after"], rtol)


def test_settings_defaults_and_flag_ownership():
    """Defaults of the released configurations; flags of one method refused by the others."""
    ikl, gkl, kl = (get_method(n) for n in ("ikl_kd", "gkl_kd", "kl_kd"))
    s = ikl.settings({})
    assert (s["kd_temperature"], s["kd_alpha"], s["kd_beta"], s["kd_t2"], s["kd_gi"], s["kd_warmup_epochs"],
            s["kd_ce_weight"]) == (1.0, 1.0, 1.0, 100.0, False, 1, 1.0)
    s = gkl.settings({"kd_t2": 4.0})
    assert (s["kd_gamma"], s["kd_t2"], s["kd_gi"], s["kd_warmup_epochs"]) == (1.0, 4.0, True, 5)
    assert kl.settings({})["kd_weight"] == 1.0 and kl.settings({})["kd_warmup_epochs"] == 0
    assert [warmup_factor(e, 20) for e in (0, 1, 19, 30)] == [0.05, 0.1, 1.0, 1.0]
    assert warmup_factor(0, 0) == warmup_factor(0, 1) == 1.0
    assert "--kd-gamma is an option of --method gkl_kd, not ikl_kd" in flag_problem(ikl, {"kd_gamma": 0.5})
    assert "not kl_kd" in flag_problem(kl, {"kd_alpha": 2.0})
    assert "--teacher-weights" in flag_problem(ikl, {})
    assert flag_problem(ikl, {"dry_run": True}) is None


@pytest.mark.parametrize("group_flag", ["device_batch", "bn_device_batch"])
def test_loss_per_device_group_averages_groups(group_flag):
    """--device-batch / --bn-device-batch N: CE and KD per group of N, averaged (GKL's
    normaliser per group), as each GPU of the original computed its own loss."""
    torch.manual_seed(0)
    method = get_method("gkl_kd").for_run()
    opts = {"num_classes": 6, group_flag: 4, "kd_gamma": 0.5, "kd_gi": False}
    method.kd, method.stats = method.settings(opts), ClassStats(6)
    s, t, y = torch.randn(8, 6), 3 * torch.randn(8, 6), torch.randint(0, 6, (8,))
    student, method.teacher = Fixed(s.clone(), True), Fixed(t, False)
    ctx = FitContext(model=student, criterion=method.build_criterion(), optimizer=None, method=method,
                     device=torch.device("cpu"), options=opts, epoch=4)
    out = method.training_step(ctx, Batch(torch.zeros(8, 1), y))
    ce = torch.nn.functional.cross_entropy
    per_group = [ce(s[i:i + 4], y[i:i + 4]) + gkl_loss(s[i:i + 4], t[i:i + 4], gamma=0.5) for i in (0, 4)]
    close(out.loss.item(), sum(per_group).item() / 2, 1e-6)
    assert abs(out.loss.item() - (ce(s, y) + gkl_loss(s, t, gamma=0.5)).item()) > 1e-4  # not the whole-batch loss


# --------------------------------------------------------------------------- the teacher

def _net_logits(net, x):
    net.eval()
    with torch.no_grad():
        return net(x)


def test_teacher_layouts(tmp_path, demo_data, kd_teacher):
    """An mdistiller file, a bare (torchvision-style) state dict with DDP prefixes and a gpaco
    run folder all give a frozen teacher with the source network's logits."""
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    md = build_kd_net("kd_resnet8x4", 10)  # the original's layout
    torch.save({"model": md.state_dict(), "epoch": 240, "best_acc": 71.2}, tmp_path / "ckpt_epoch_240.pth")
    teacher = load_teacher(str(tmp_path / "ckpt_epoch_240.pth"), arch="kd_resnet8x4", num_classes=10)
    assert torch.allclose(teacher(x), _net_logits(md, x), atol=1e-5)
    tv = build_classifier("resnet8", 10)  # a plain state dict, torchvision's key style, saved from DDP
    plain = {f"module.{k}": v for k, v in to_original_state_dict(tv.state_dict(), "resnet8").items()}
    torch.save(plain, tmp_path / "plain.pth")
    teacher = load_teacher(str(tmp_path / "plain.pth"), arch="resnet8", num_classes=10)
    assert torch.allclose(teacher(x), _net_logits(tv, x), atol=1e-5)
    teacher = load_teacher(str(kd_teacher), arch=None, num_classes=10)  # the run folder: its best.pth
    run_net = build_classifier("resnet8", 10)
    run_net.load_state_dict(load_checkpoint(kd_teacher / "best.pth")["model"])
    assert teacher.arch == "resnet8" and teacher.source.endswith("best.pth")
    assert torch.equal(teacher(x), _net_logits(run_net, x))
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())


def test_wrong_teacher_arch_is_one_error_line(tmp_path, kd_teacher):
    torch.save({"model": build_kd_net("kd_resnet8x4", 10).state_dict()}, tmp_path / "t.pth")
    for weights, arch, says in ((tmp_path / "t.pth", "kd_resnet20", "--teacher-arch kd_resnet20 does not fit"),
                                (tmp_path / "t.pth", None, "give --teacher-arch"),
                                (kd_teacher, "kd_resnet8x4", "holds a resnet8"),
                                (tmp_path / "none.pth", "resnet8", "no such file")):
        with pytest.raises((FlagError, FileNotFoundError)) as e:
            load_teacher(str(weights), arch=arch, num_classes=10)
        text = str(e.value)
        assert says in text and "\n" not in text, text


def test_teacher_is_frozen_and_outside_the_student(kd_teacher):
    """After setup: the teacher is on the method, not in the student, the optimizer or the
    student's state; it stays in eval mode through a training step and gets no gradient."""
    method = get_method("ikl_kd").for_run()
    torch.manual_seed(0)
    student = method.build_model("resnet8", 10)
    ctx = FitContext(model=student, criterion=method.build_criterion(), method=method, device=torch.device("cpu"),
                     optimizer=torch.optim.SGD(student.parameters(), lr=0.1),
                     options={"teacher_weights": str(kd_teacher), "num_classes": 10, "dataset": "x",
                              "arch": "resnet8", "kd_gi": True})
    method.setup(ctx)
    teacher = method.teacher
    optimized = {id(p) for g in ctx.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in optimized for p in teacher.parameters())
    assert not any(m is teacher or m is teacher.net for m in student.modules())
    assert set(student.state_dict()) == set(method.build_model("resnet8", 10).state_dict())
    student.train()
    out = method.training_step(ctx, Batch(torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4, 5])))
    out.loss.backward()
    assert not teacher.training and all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None for p in student.parameters())
    assert method.stats.accumulator.sum().item() == pytest.approx(6.0)  # one distribution per sample


def test_drop_last_follows_the_dataset(kd_teacher):
    """CIFAR keeps each epoch's last batch (mdistiller), split lists drop it (the ImageNet-LT
    driver); --kd-drop-last / --no-kd-drop-last choose."""
    for dataset, flag, expect in (("cifar100", None, False), ("imagenet_lt", None, True), ("cifar100", True, True),
                                  ("imagenet_lt", False, False)):
        method = get_method("kl_kd").for_run()
        model = method.build_model("resnet8", 10)
        ctx = FitContext(model=model, criterion=method.build_criterion(), optimizer=None, method=method,
                         device=torch.device("cpu"), options={"teacher_weights": str(kd_teacher), "num_classes": 10,
                                                              "dataset": dataset, "kd_drop_last": flag})
        method.setup(ctx)
        assert method.drop_last is expect and method.stats is None


# --------------------------------------------------------------------------- runs

@pytest.fixture(scope="module")
def kd_teacher(demo_data, tmp_path_factory):
    """A demo CE run's folder: the teacher of the distillation tests."""
    out = tmp_path_factory.mktemp("kd_teacher")
    trainer.main(demo_flags(demo_data) + ["--method", "ce", "--epochs", "1", "--batch-size", "32",
                                          "--warmup-epochs", "0", "--lr", "0.05", "--output-dir", str(out)])
    return out


def _distil(demo_data, out, teacher, *extra):
    return trainer.main(demo_flags(demo_data) + [
        "--method", "gkl_kd", "--teacher-weights", str(teacher), "--kd-warmup-epochs", "2", "--kd-gamma", "0.5",
        "--kd-t2", "2", "--batch-size", "32", "--epochs", "2", "--warmup-epochs", "0", "--lr", "0.05", "--seed", "3",
        "--output-dir", str(out), *extra])


def test_sigterm_mid_epoch_then_resume_is_bit_identical(demo_data, kd_teacher, tmp_path, monkeypatch, capsys):
    """GKL with class-wise statistics (GI on): SIGTERM at epoch 1 step 4, --resume auto; the
    weights, the class matrix and the metrics equal the uninterrupted run's. The checkpoint
    holds the student only; the teacher's accuracy is printed before training."""
    straight, out = tmp_path / "straight", tmp_path / "stopped"
    _distil(demo_data, straight, kd_teacher)
    said = capsys.readouterr().out
    assert f"teacher resnet8 from {kd_teacher / 'best.pth'}: top-1 " in said and " on test (many " in said
    assert said.index("teacher resnet8") < said.index("[epoch 1]")
    monkeypatch.setenv(FAULT_ENV, "sigterm_step4")
    assert _distil(demo_data, out, kd_teacher) == {"preempted": True, "signal": "SIGTERM", "epoch": 0, "step": 4}
    monkeypatch.delenv(FAULT_ENV)
    stopped = load_checkpoint(out / "checkpoint.pth")["method_state"]
    assert stopped["class_accumulators"].sum().item() == pytest.approx(4 * 32)  # 4 steps' distributions
    _distil(demo_data, out, kd_teacher, "--resume", "auto")
    a, b = (load_checkpoint(d / "checkpoint.pth") for d in (straight, out))
    assert set(a["model"]) == set(build_classifier("resnet8", 10).state_dict())  # no teacher inside
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in ("class_matrix", "class_accumulators"):
        assert torch.equal(a["method_state"][k], b["method_state"][k]), k
    assert not torch.allclose(a["method_state"]["class_matrix"], torch.full((10, 10), 0.1))
    assert json.loads((straight / "metrics.json").read_text()) == json.loads((out / "metrics.json").read_text())


WORKER = Path(__file__).with_name("kd_stats_worker.py")


@pytest.mark.slow
@pytest.mark.distributed
def test_class_stats_over_processes_equal_one_process(tmp_path):
    """One epoch of gkl_kd steps on the same global batches: the class matrix of 2 processes
    (accumulators all-reduced at the epoch's end) is the one-process matrix, and a mid-epoch
    save restores each process's own share."""
    torch.manual_seed(0)
    teacher = build_classifier("resnet8", 5)
    torch.save({"model": to_original_state_dict(teacher.state_dict(), "resnet8")}, tmp_path / "teacher.pth")
    results = {}
    for nproc in (1, 2):
        out = tmp_path / f"{nproc}.pt"
        run_worker(WORKER, tmp_path / "teacher.pth", out, nproc=nproc)
        results[nproc] = torch.load(out, weights_only=True)
    one, two = results[1], results[2]
    assert two["world_size"] == 2 and one["restored"] and two["restored"]
    assert torch.allclose(two["matrix"], one["matrix"], rtol=1e-6, atol=1e-7)
    assert torch.allclose(one["matrix"].sum(1), torch.ones(5)) and not torch.allclose(one["matrix"],
                                                                                    torch.full((5, 5), 0.2))


def test_kl_kd_can_keep_the_student_classifier_at_its_random_init(demo_data, kd_teacher, tmp_path):
    """--kd-freeze-classifier (the original's CC3M KL baseline): the fc is left out of the optimizer
    and keeps its initial value (the same after 1 and 2 epochs from the same seed) while the trunk
    trains; the option is part of the model's rebuild record, so tools/eval.py rebuilds it alike."""
    runs = {}
    for epochs in (1, 2):
        out = tmp_path / f"kl_{epochs}"
        trainer.main(demo_flags(demo_data) + [
            "--method", "kl_kd", "--teacher-weights", str(kd_teacher), "--epochs", str(epochs), "--warmup-epochs", "0",
            "--batch-size", "32", "--seed", "4", "--kd-freeze-classifier", "--output-dir", str(out)])
        runs[epochs] = load_checkpoint(out / "checkpoint.pth")
    one, two = runs[1], runs[2]
    assert "'kd_freeze_classifier': True" in str(one["model_config"])
    for k in ("fc.weight", "fc.bias"):
        assert torch.equal(one["model"][k], two["model"][k]), k
    trunk = [k for k, v in one["model"].items() if k.endswith("conv1.weight")]
    assert trunk and not torch.equal(one["model"][trunk[0]], two["model"][trunk[0]])
    model = get_method("kl_kd").build_model("resnet8", 10, kd_freeze_classifier=True)
    assert not any(p.requires_grad for p in model.fc.parameters())
    assert sum(len(g["params"]) for g in one["optimizer"]["param_groups"]) == sum(
        p.requires_grad for p in model.parameters())
