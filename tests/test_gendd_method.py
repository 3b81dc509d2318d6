"""GenDD's methods ``gendd`` / ``gendd_stage1`` (gpaco/methods/gendd.py) and models
(gpaco/models/gendd.py).

* the original's stage-2 training forward (tests/data/gendd/train_step.json.gz, from
  refvectors-gendd: CIFAR hard labels with feature mixup, ImageNet soft labels, label-free
  teacher probabilities) through :class:`GenDDStudent` with the recorded draws injected:
  loss, probe logits and CE, the rows, every gradient (float64 to 1e-7, float32 to 1e-4);
* its test-time forward (sampling.json's ``forward_test_stage2``) through ``predict``;
* the methods through tools/train.py on the demo data: stage 1 -> stage 2, a SIGTERM mid-epoch
  and ``--resume auto`` ending bit-identical to the uninterrupted run (denoiser, optimizer with
  its beta2, sampler), the probe's accuracy reported, tools/eval.py on the checkpoint;
* the state-dict mapping of stage 1 and of the authors' files; the flags' errors.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import demo_flags
from gpaco.checkpoint import load_checkpoint
from gpaco.classification import train as trainer
from gpaco.classification.predict import evaluate
from gpaco.engine.args import FlagError
from gpaco.engine.preemption import FAULT_ENV
from gpaco.engine.schedule import Beta2Schedule
from gpaco.engine.step import Batch, FitContext
from gpaco.methods import flag_problem, get_method
from gpaco.methods.gendd import step_seed
from gpaco.models import build_classifier, to_original_state_dict
from gpaco.models.gendd import (
    GenDDStudent, Stage2Draws, Stage2Settings, build_gendd_stage1, build_gendd_student,
    from_original_state_dict, load_stage1,
)

DATA = Path(__file__).resolve().parent / "data" / "gendd"
DTYPES = {"float64": torch.float64, "float32": torch.float32}
RTOL = {"float64": 1e-7, "float32": 1e-4}


def load(name):
    with gzip.open(DATA / name, "rt") as f:
        return json.load(f)


STEP, SAMPLING = load("train_step.json.gz"), load("sampling.json.gz")


def close(got, exp, rtol, what=""):
    """max|got - exp| <= rtol * max|exp| (the vectors' criterion)."""
    got = torch.as_tensor(got).detach().double()
    exp = torch.as_tensor(exp, dtype=torch.float64)
    assert got.shape == exp.shape, f"{what}: shape {tuple(got.shape)} != {tuple(exp.shape)}"
    err, scale = (got - exp).abs().max().item(), exp.abs().max().item()
    assert err <= rtol * scale, f"{what}: max abs error {err:.3g} > {rtol:g} x {scale:.3g}"


def reference_student(inputs, params, dtype, **kw) -> GenDDStudent:
    """The vectors' DiffModel as ours: the 'image' is the pooled student feature (identity trunk)."""
    model = GenDDStudent(nn.Identity(), params["feature_dim"], params["num_classes"], teacher_dim=params["target_dim"],
                         token_dim=params.get("token_dim", 4), width=params["width"], depth=params["depth"], **kw)
    state = {"fc.weight": inputs["student_fc_weight"], "fc.bias": inputs["student_fc_bias"],
             "cls_projector.weight": inputs["ln_weight"], "cls_projector.bias": inputs["ln_bias"],
             "cls_centers": inputs["teacher_fc_weight"], "cls_bias": inputs["teacher_fc_bias"],
             **{f"diffloss.net.{k}": v for k, v in inputs["denoiser_weights"].items()}}
    model.load_state_dict({k: torch.tensor(v, dtype=dtype) for k, v in state.items()})
    return model.to(dtype)


# --------------------------------------------------------------------------- the training forward


@pytest.mark.parametrize("kind", DTYPES)
@pytest.mark.parametrize("case_name", list(STEP["cases"]))
def test_training_forward_matches_the_original(case_name, kind):
    dtype, rtol = DTYPES[kind], RTOL[kind]
    case, params, inputs = STEP["cases"][case_name], STEP["params"], STEP["inputs"]
    ref = STEP["results"][kind][case_name]
    model = reference_student(inputs, params, dtype).train()
    feat = torch.tensor(inputs["student_feat"], dtype=dtype, requires_grad=True)
    teacher = torch.tensor(inputs["teacher_feat"], dtype=dtype)
    labels = torch.tensor(case["labels_value"], dtype=torch.long if case["labels"] == "hard" else dtype)
    settings = Stage2Settings(contraction=case["smooth"], mixup_beta=case["beta"],
                              batch_mul=params["diffusion_batch_mul"], cond_drop=params["cond_drop_prob"])
    draws = Stage2Draws(drop_u=torch.tensor(case["drop_u"], dtype=dtype), t=torch.tensor(case["t"]),
                        noise=torch.tensor(case["noise"], dtype=dtype),
                        perm=torch.tensor(case["perm"]) if "perm" in case else None, m=case.get("m"))
    out = model(feat, teacher, labels, settings=settings, draws=draws)
    close(out.loss, ref["loss"], rtol, "loss")
    close(out.probe_logits, ref["logits"], rtol, "logits")
    close(out.target_rows, ref["target_rows"], rtol, "target rows")
    close(out.cond_rows, ref["z_rows"], rtol, "z rows")
    assert out.token_index.tolist() == ref["chunk_idx_rows"]
    if "ce_loss" in ref:
        close(F.cross_entropy(out.probe_logits, labels), ref["ce_loss"], rtol, "ce")
    out.loss.backward()
    close(feat.grad, ref["grad_student_feat"], rtol, "grad student feature")
    close(model.cls_projector.weight.grad, ref["grad_ln_weight"], rtol, "grad LayerNorm weight")
    close(model.cls_projector.bias.grad, ref["grad_ln_bias"], rtol, "grad LayerNorm bias")
    for name, grad in ref["grad_params"].items():
        close(model.diffloss.net.get_parameter(name).grad, grad, rtol, f"grad {name}")
    assert model.fc.weight.grad is None  # the diffusion loss never reaches the probe


def test_draws_follow_the_generator_and_the_settings():
    s = Stage2Settings(contraction=0.5, mixup_beta=1.0, batch_mul=3, cond_drop=0.2)
    a, b = (Stage2Draws.draw(s, batch=4, num_tokens=2, token_dim=5, generator=torch.Generator().manual_seed(7))
            for _ in range(2))
    assert a.noise.shape == (24, 5) and a.t.shape == a.drop_u.shape == (24,) and sorted(a.perm.tolist()) == [0, 1, 2, 3]
    assert 0 < a.m < 1 and a.t.dtype == torch.long and 0 <= a.t.min() and a.t.max() < 1000
    assert torch.equal(a.noise, b.noise) and torch.equal(a.t, b.t) and a.m == b.m and torch.equal(a.perm, b.perm)
    plain = Stage2Draws.draw(Stage2Settings(mixup_beta=0.0), batch=4, num_tokens=2, token_dim=5,
                             generator=torch.Generator().manual_seed(7))
    assert plain.perm is None and plain.m is None
    assert len({step_seed(0, e, s, r) for e in range(3) for s in range(50) for r in range(4)}) == 600


def test_training_forward_refuses_draws_that_do_not_fit():
    model = GenDDStudent(nn.Identity(), 6, 5, teacher_dim=12, token_dim=4, width=8, depth=1)
    draws = Stage2Draws.draw(Stage2Settings(mixup_beta=0.0, batch_mul=1), batch=2, num_tokens=3, token_dim=4,
                             generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="mixup"):
        model(torch.randn(2, 6), torch.randn(2, 12), torch.tensor([0, 1]), settings=Stage2Settings(batch_mul=1),
              draws=draws)


# --------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("kind", DTYPES)
def test_test_forward_matches_the_original(kind):
    """The original's forward_test_stage2 (ImageNet DiffModel: 64 steps, 2 samples, cfg 2) through predict."""
    dtype, rtol = DTYPES[kind], RTOL[kind]
    f, ref = SAMPLING["forward_test_stage2_inputs"], SAMPLING["results"][kind]["forward_test_stage2"]
    params = dict(SAMPLING["params"], feature_dim=f["feature_dim"], target_dim=f["target_dim"],
                  num_classes=f["num_classes"], token_dim=SAMPLING["params"]["target_channels"])
    model = reference_student(f, params, dtype, sampling_steps=f["num_sampling_steps"], num_samples=f["num_sampling"],
                              cfg=f["cfg"]).eval()
    out = model.predict(torch.tensor(f["student_feat"], dtype=dtype),
                        init_noise=torch.tensor(f["init_noise"], dtype=dtype),
                        step_noise=torch.tensor(f["step_noise"], dtype=dtype))
    close(out["logits"], ref["logits"], rtol, "logits")
    close(out["probe"], ref["logits_new"], rtol, "logits_new")


def test_evaluation_noise_is_reseeded_per_pass_and_the_probe_is_reported():
    torch.manual_seed(0)
    model = GenDDStudent(nn.Identity(), 6, 5, teacher_dim=8, token_dim=4, width=8, depth=1, sampling_steps="5")
    with torch.no_grad():
        for p in model.diffloss.parameters():
            p.normal_(0, 0.1)  # a denoiser whose samples depend on the noise
        model.set_teacher_classifier(torch.randn(5, 8), torch.randn(5))
    x = torch.randn(7, 6)
    model.eval()
    first, second = model(x), model(x)
    assert not torch.equal(first, second)  # the generator advances within a pass
    model.train().eval()
    assert torch.equal(model(x), first)  # every pass starts from the same noise
    loader = [(x, torch.tensor([0, 1, 2, 3, 4, 0, 1]))]
    metrics = evaluate(model, loader, num_classes=5, device=torch.device("cpu"),
                       forward=get_method("gendd").eval_forward)
    probe_top1 = (model.fc(x).argmax(1) == loader[0][1]).double().mean().item() * 100
    assert metrics["heads"]["probe"]["top1"] == pytest.approx(probe_top1)
    assert metrics["top1"] == pytest.approx((first.argmax(1) == loader[0][1]).double().mean().item() * 100)


# --------------------------------------------------------------------------- checkpoints


def test_stage1_model_and_loading_into_stage2(tmp_path):
    torch.manual_seed(0)
    stage1 = build_gendd_stage1("resnet8", 10, teacher_dim=32)
    assert isinstance(stage1.proj, nn.Linear) and not stage1.fc.weight.requires_grad
    w, b = torch.randn(10, 32), torch.randn(10)
    stage1.set_teacher_classifier(w, b)
    x = torch.randn(2, 3, 32, 32)
    stage1.eval()
    assert torch.allclose(stage1(x), F.linear(stage1.proj(stage1.backbone(x)), w, b))
    assert isinstance(build_gendd_stage1("resnet8", 10, teacher_dim=64).proj, nn.Identity)  # F = D
    torch.save({"model": stage1.state_dict(), "epoch": 3}, tmp_path / "best.pth")
    student = build_gendd_student("resnet8", 10, teacher_dim=32, token_dim=16, width=8, depth=1)
    said = load_stage1(student, str(tmp_path / "best.pth"))
    assert "proj" in said and "dropped" in said
    for k, v in student.state_dict().items():
        if k.startswith(("backbone.", "fc.")):
            assert torch.equal(v, stage1.state_dict()[k]), k
    with pytest.raises(ValueError, match="does not fit"):
        load_stage1(build_gendd_student("resnet20", 10, teacher_dim=32, token_dim=16, width=8, depth=1),
                    str(tmp_path / "best.pth"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_stage1(student, str(tmp_path / "none.pth"))


def test_the_authors_layout_maps_onto_ours(tmp_path):
    """A DiffModel state dict (student under model., its head by the original's name) loads
    into ours, stage 1 through --gendd-stage1."""
    torch.manual_seed(0)
    ours = build_gendd_student("kd_vgg8", 100, teacher_dim=64, token_dim=16, width=8, depth=1)
    student = {k: v for k, v in ours.state_dict().items() if k.startswith(("backbone.", "fc."))}
    theirs = {f"model.{k}": v for k, v in to_original_state_dict(student, "kd_vgg8").items()}
    assert any(k.startswith("model.classifier.") for k in theirs)  # vgg's head name
    theirs.update({k: v for k, v in ours.state_dict().items() if k.startswith(("diffloss.", "cls_projector."))})
    theirs.update({"cls_centers": ours.cls_centers + 1, "classifier.weight": ours.cls_centers + 1,
                   "classifier.bias": ours.cls_bias + 2, "chunk_idx": torch.arange(4)[None]})
    mapped = from_original_state_dict(theirs, "kd_vgg8")
    assert set(mapped) == set(ours.state_dict())
    fresh = build_gendd_student("kd_vgg8", 100, teacher_dim=64, token_dim=16, width=8, depth=1)
    fresh.load_state_dict(mapped)
    assert torch.equal(fresh.cls_bias, ours.cls_bias + 2)
    torch.save({"model": theirs}, tmp_path / "ckpt_stage1.pth")  # the CIFAR driver's key
    load_stage1(fresh, str(tmp_path / "ckpt_stage1.pth"), arch="kd_vgg8")
    with pytest.raises(ValueError, match="authors' layout"):
        load_stage1(fresh, str(tmp_path / "ckpt_stage1.pth"))


def _authors_file(ours, arch: str, *, stage1: bool = False) -> dict:
    """``ours`` in the authors' DiffModel layout, as their drivers save it."""
    state = ours.state_dict()
    student = {k: v for k, v in state.items() if k.startswith(("backbone.", "fc."))}
    theirs = {f"module.model.{k}": v for k, v in to_original_state_dict(student, arch).items()}
    theirs.update({f"module.{k}": v for k, v in state.items() if k.startswith(("diffloss.", "cls_projector.", "proj."))})
    theirs.update({"module.classifier.weight": state["cls_centers"], "module.classifier.bias": state["cls_bias"]})
    if not stage1:
        theirs.update({"module.cls_centers": state["cls_centers"], "module.chunk_idx": torch.arange(4)[None]})
    return {"epoch": 100, "state_dict": theirs, "best_acc1": 72.4}  # the ImageNet driver's model_best


@pytest.mark.parametrize("arch", ["kd_vgg8", "kd_resnet8x4", "kd_mobilenetv2", "kd_shufflev1"])
def test_the_authors_files_are_detected_and_evaluate_as_ours(tmp_path, arch):
    """gpaco-eval / gpaco-convert on an authors' file, no method or sizes given: the layout
    is recognised, stage 2 (a denoiser) or stage 1, the denoiser's size read off its tensors,
    and the model predicts as the one the file was written from."""
    from gpaco.methods.rebuild import build_model_from_checkpoint, convert_file
    from gpaco.models.convert import read_checkpoint

    torch.manual_seed(0)
    ours = build_gendd_student(arch, 10, teacher_dim=32, token_dim=8, width=16, depth=2, sampling_steps="4")
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.01 * torch.randn_like(p))
        ours.cls_centers.normal_(), ours.cls_bias.normal_()
    torch.save(_authors_file(ours, arch), tmp_path / "model_best.pth.tar")
    loaded = read_checkpoint(str(tmp_path / "model_best.pth.tar"))
    assert loaded.layout == "gendd_original"
    model, report = build_model_from_checkpoint(loaded, arch=arch, flag_values={"gendd_steps": "4"})
    assert report.method == "gendd" and report.missing == []
    assert [k for k, _ in report.unused] == ["chunk_idx"]
    assert (model.token_dim, model.num_tokens, len(model.diffloss.net.res_blocks)) == (8, 4, 2)
    for k, v in ours.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    x = torch.randn(3, 3, 32, 32)
    ours.eval(), model.eval()
    with torch.no_grad():
        theirs_out, ours_out = model.predict(x), ours.predict(x)
    assert torch.equal(theirs_out["logits"], ours_out["logits"]) and torch.equal(theirs_out["probe"], ours_out["probe"])

    report, _ = convert_file(str(tmp_path / "model_best.pth.tar"), str(tmp_path / "converted.pth"), arch=arch)
    again, _ = build_model_from_checkpoint(read_checkpoint(str(tmp_path / "converted.pth")))
    assert all(torch.equal(again.state_dict()[k], v) for k, v in ours.state_dict().items())

    stage1 = build_gendd_stage1(arch, 10, teacher_dim=32)
    torch.save(_authors_file(stage1, arch, stage1=True), tmp_path / "stage1.pth.tar")
    model, report = build_model_from_checkpoint(read_checkpoint(str(tmp_path / "stage1.pth.tar")), arch=arch)
    assert report.method == "gendd_stage1" and report.missing == [] and report.unused == []
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stage1.state_dict().items())


def test_the_authors_student_head_names_are_every_student_arch_s():
    """The layout's head pattern picks exactly the original head of every CIFAR/ImageNet
    student arch (to_classifier_state_dict's, which knows the arch), nothing of its trunk."""
    from gpaco.models.convert import assign_roles
    from gpaco.models.kd_zoo import KD_ARCHS, original_head_prefix

    for arch in list(KD_ARCHS) + ["resnet18"]:
        state = to_original_state_dict(build_classifier(arch, 10).state_dict(), arch)
        roles, unused = assign_roles({f"model.{k}": v for k, v in state.items()} | {"cls_centers": torch.ones(1)},
                                     "gendd_original")
        head = original_head_prefix(arch)
        assert set(roles["classifier"]) == {"weight", "bias"} and not unused, arch
        assert roles["backbone"].keys() == {k for k in state if not k.startswith(head)}, arch


# --------------------------------------------------------------------------- flags


def _options(**kw):
    base = {"teacher_weights": "t.pth", "gendd_teacher_dim": 64, "optimizer": "adamw", "gendd_token_dim": 64,
            "gendd_steps": "100"}
    return {**base, **kw}


@pytest.mark.parametrize("options, message", [
    ({"teacher_weights": None}, "--method gendd needs --teacher-weights PATH"),
    ({"optimizer": "sgd"}, "pass --optimizer adamw"),
    ({"gendd_token_dim": 48}, "--gendd-token-dim 48 must divide the teacher's feature size --gendd-teacher-dim 64"),
    ({"gendd_steps": "2000"}, "--gendd-steps '2000'"),
    ({"gendd_steps": "fast"}, "--gendd-steps 'fast'"),
    ({"gendd_contraction": 1.5}, "--gendd-contraction must be in [0, 1], got 1.5"),
    ({"gendd_cond_drop": -0.1}, "--gendd-cond-drop must be in [0, 1], got -0.1"),
    ({"gendd_samples": 0}, "--gendd-samples must be >= 1, got 0"),
    ({"gendd_beta2_min": 1.0}, "--gendd-beta2-min must be in [0, 0.999], got 1.0"),
])
def test_bad_flags_are_one_line(options, message):
    problem = flag_problem(get_method("gendd"), _options(**options))
    assert problem is not None and message in problem and "\n" not in problem


def test_teacher_of_another_feature_size_is_one_flag_error(tmp_path):
    """setup checks --gendd-teacher-dim (default: the student's feature size) against the teacher,
    copies the teacher classifier into the model and builds the original's AdamW groups."""
    teacher = build_classifier("kd_resnet8x4", 10)  # 256-d features; the resnet8 student has 64
    torch.save({"model": to_original_state_dict(teacher.state_dict(), "kd_resnet8x4")}, tmp_path / "t.pth")
    options = {"teacher_weights": str(tmp_path / "t.pth"), "teacher_arch": "kd_resnet8x4", "num_classes": 10,
               "dataset": "split", "epochs": 2, "lr": 1e-3, "wd": 0.05, "seed": 0}

    def setup(**model_options):
        method = get_method("gendd").for_run()
        model = method.build_model("resnet8", 10, token_dim=32, width=8, depth=1, **model_options)
        ctx = FitContext(model=model, criterion=nn.Identity(), optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                         method=method, device=torch.device("cpu"), options=options)
        method.setup(ctx)
        return ctx, model

    with pytest.raises(FlagError, match=r"--gendd-teacher-dim is 64 \(by default the student's feature size\), "
                                        r"but the teacher kd_resnet8x4 .* has 256-d features: pass "
                                        r"--gendd-teacher-dim 256"):
        setup()
    ctx, model = setup(teacher_dim=256)
    assert torch.equal(model.cls_centers, teacher.fc.weight) and torch.equal(model.cls_bias, teacher.fc.bias)
    assert isinstance(ctx.optimizer, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    plain = {names[id(p)] for g in ctx.optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert plain == {n for n in names.values() if n.startswith("diffloss.")}
    assert {g["betas"] for g in ctx.optimizer.param_groups} == {(0.9, 0.96)}


@pytest.mark.parametrize("label_free", [False, True])
def test_training_step(tmp_path, label_free):
    """loss = diffusion + CE of the probe (label-free: diffusion alone, the labels never read, the
    targets the teacher's probabilities, the probe frozen); the step's beta2 is set."""
    torch.manual_seed(0)
    teacher = build_classifier("resnet8", 10)
    torch.save({"model": to_original_state_dict(teacher.state_dict(), "resnet8")}, tmp_path / "t.pth")
    teacher.eval()
    options = {"teacher_weights": str(tmp_path / "t.pth"), "teacher_arch": "resnet8", "num_classes": 10,
               "dataset": "split", "epochs": 2, "lr": 1e-3, "wd": 0.05, "seed": 5, "gendd_label_free": label_free,
               "gendd_contraction": 0.5, "gendd_batch_mul": 2}
    method = get_method("gendd").for_run()
    model = method.build_model("resnet8", 10, token_dim=16, width=8, depth=1, freeze_probe=label_free)
    ctx = FitContext(model=model, criterion=method.build_criterion(num_classes=10), method=method,
                     optimizer=torch.optim.SGD(model.parameters(), lr=0.1), device=torch.device("cpu"),
                     options=options, steps_per_epoch=5, epoch=1, step=2)
    method.setup(ctx)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([1, 2, 3, 4])
    out = method.training_step(ctx, Batch(images, torch.full((4,), -1) if label_free else labels))
    assert {g["betas"][1] for g in ctx.optimizer.param_groups} == {Beta2Schedule(0.96, epochs=2)(1, 2, 5)}
    f_t = teacher.backbone(images).detach()
    targets = F.softmax(teacher(images), dim=1).detach() if label_free else labels
    want = model(images, f_t, targets, settings=method.stage2, draws=method.draws(ctx, 4))
    if label_free:
        assert out.logits is None and set(out.parts) == {"diffusion"}
        assert torch.allclose(out.loss, want.loss) and not model.fc.weight.requires_grad
        assert all(p is not model.fc.weight for g in ctx.optimizer.param_groups for p in g["params"])
    else:
        ce = F.cross_entropy(want.probe_logits, labels)
        assert torch.allclose(out.loss, want.loss + ce) and torch.allclose(out.parts["ce"], ce)
        assert torch.equal(out.logits, want.probe_logits)


def test_flags_of_one_stage_are_refused_by_the_other():
    assert "is an option of --method gendd" in flag_problem(get_method("gendd_stage1"),
                                                            _options(gendd_samples=5))
    assert flag_problem(get_method("gendd_stage1"), _options()) is None


# --------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def teacher_run(demo_data, tmp_path_factory):
    """A demo CE run's folder: the teacher (resnet8, 64-d features)."""
    out = tmp_path_factory.mktemp("gendd_teacher")
    trainer.main(demo_flags(demo_data) + ["--method", "ce", "--epochs", "1", "--batch-size", "32",
                                          "--warmup-epochs", "0", "--lr", "0.05", "--output-dir", str(out)])
    return out


def _stage2(demo_data, out, teacher, *extra):
    return trainer.main(demo_flags(demo_data) + [
        "--method", "gendd", "--teacher-weights", str(teacher), "--gendd-teacher-dim", "64", "--gendd-token-dim", "16",
        "--gendd-width", "32", "--gendd-depth", "1", "--gendd-batch-mul", "2", "--gendd-steps", "4",
        "--gendd-contraction", "0.8", "--optimizer", "adamw", "--wd", "0.05", "--lr", "2e-3", "--batch-size", "32",
        "--epochs", "1", "--schedule", "constant", "--seed", "3",
        "--output-dir", str(out), *extra])


@pytest.mark.slow
def test_stage1_then_stage2_sigterm_and_resume_are_exact(demo_data, teacher_run, tmp_path, monkeypatch, capsys):
    """Stage 1, then stage 2 from it; a SIGTERM at step 4 of 7 and --resume auto end with the
    uninterrupted run's weights (denoiser included), optimizer state (beta2 included) and
    metrics (the sampled evaluation included); the probe's accuracy is reported."""
    stage1 = tmp_path / "stage1"
    trainer.main(demo_flags(demo_data) + [
        "--method", "gendd_stage1", "--teacher-weights", str(teacher_run), "--gendd-teacher-dim", "64",
        "--optimizer", "adamw", "--lr", "3e-3", "--wd", "0.05", "--batch-size", "32", "--epochs", "1",
        "--schedule", "constant", "--output-dir", str(stage1)])
    s1 = load_checkpoint(stage1 / "checkpoint.pth")
    teacher = load_checkpoint(teacher_run / "best.pth")["model"]
    assert torch.equal(s1["model"]["cls_centers"], teacher["fc.weight"])
    assert [g["weight_decay"] for g in s1["optimizer"]["param_groups"]] == [0.05]  # one group, 1-D included
    capsys.readouterr()

    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    _stage2(demo_data, straight, teacher_run, "--gendd-stage1", str(stage1 / "checkpoint.pth"))
    said = capsys.readouterr().out
    assert "loaded stage 1 from" in said and "teacher resnet8 from" in said
    assert "; probe top-1 " in said.split("[epoch 1] val top-1")[1].splitlines()[0]
    monkeypatch.setenv(FAULT_ENV, "sigterm_step4")
    assert _stage2(demo_data, stopped, teacher_run, "--gendd-stage1", str(stage1 / "checkpoint.pth")) == \
        {"preempted": True, "signal": "SIGTERM", "epoch": 0, "step": 4}
    monkeypatch.delenv(FAULT_ENV)
    at_stop = load_checkpoint(stopped / "checkpoint.pth")["optimizer"]["param_groups"]
    assert {g["betas"][1] for g in at_stop} == {Beta2Schedule(0.96, epochs=1)(0, 3, 7)}  # the 4th step's (7 per epoch)
    _stage2(demo_data, stopped, teacher_run, "--gendd-stage1", str(stage1 / "checkpoint.pth"), "--resume", "auto")
    a, b = (load_checkpoint(d / "checkpoint.pth") for d in (straight, stopped))
    assert any(k.startswith("diffloss.net.") for k in a["model"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for p, state in a["optimizer"]["state"].items():
        for k, v in state.items():
            assert torch.equal(v, b["optimizer"]["state"][p][k]), (p, k)
    groups = a["optimizer"]["param_groups"]
    assert [g["betas"] for g in groups] == [g["betas"] for g in b["optimizer"]["param_groups"]]
    assert {g["betas"][1] for g in groups} == {0.999}  # the last step of the run ends the rise
    assert {g["weight_decay"] for g in groups} == {0.0, 0.05}
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (straight, stopped)]
    assert metrics[0] == metrics[1] and "probe" in metrics[0]["heads"]

    # tools/eval.py rebuilds the model from the checkpoint; --gendd-samples overrides at evaluation
    from gpaco.classification import evaluate as evaluator
    # and the evaluation noise is reseeded per pass: the same batches give the run's own test numbers
    common = demo_flags(demo_data, lists=False) + ["--checkpoint", str(straight / "best.pth"), "--test-list",
                                                   str(demo_data / "test_small.txt"), "--batch-size", "32"]
    again = evaluator.main(common + ["--output-dir", str(tmp_path / "eval")])
    assert again["top1"] == metrics[0]["top1"] and again["checkpoints"][0]["missing"] == []
    assert again["heads"]["probe"] == metrics[0]["heads"]["probe"]
    more = evaluator.main(common + ["--gendd-samples", "3", "--output-dir", str(tmp_path / "eval3")])
    assert more["num_samples"] == again["num_samples"] and more["confusion"] != again["confusion"]
