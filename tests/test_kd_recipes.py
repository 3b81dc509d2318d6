"""The knowledge-distillation recipes (sh/KD/): the released configurations' hyperparameters,
teachers, learning-rate schedules, paper numbers, and a dry run of each family.

* ``sh/KD/CIFAR100/``: the 11 teacher/student configurations of the DKL repository, each with
  IKL (DKLv1 ``cifar100_kd_dkl_configs/*.yaml``) and GKL (DKLv2 ``cifar100_config_gkl/*.yaml``),
  on mdistiller's solver.
* ``sh/KD/ImageNet/``: ResNet-34 -> ResNet-18 and ResNet-50 -> MobileNetV1, IKL and GKL.
* ``sh/KD/ImageNetLT/``: the imbalanced-distillation scripts (``sh/Distill/*.sh`` of DKLv1 and
  DKLv2 ``Imbalanced_KD-dkl``): three CE baselines, KL-KD, IKL and GKL, the teachers being the
  baselines' own runs.

The tables below are the released scripts' and configurations' numbers, written out by hand;
every check except the dry runs prints a recipe's argv (``GPACO_PRINT_ARGV=1``) and parses it.
"""
from __future__ import annotations

import gc
import math
import re

import pytest

from test_recipes import ROOT, SH, _dry_env, _env as _recipe_env, entry_main, flag, parse, print_argv

KD = SH / "KD"
OWN_ENV = ("TEACHER_WEIGHTS",)


def _env(**overrides):
    env = {k: v for k, v in _recipe_env().items() if k not in OWN_ENV}
    env.update(overrides)
    return env


def _header(recipe: str) -> str:
    lines = []
    for line in (ROOT / recipe).read_text().splitlines()[1:]:
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def _flat(text: str) -> str:
    """A header as one line (comment marks and line breaks gone), for phrases that wrap."""
    return " ".join(line.lstrip("#").strip() for line in text.splitlines())


# ----------------------------------------------------------------------------- the tables

# CIFAR-100: config -> (teacher (mdistiller name, --arch), student --arch, lr, IKL (alpha, beta),
# GKL (alpha, beta, gamma, GI)).
CIFAR = {
    "res110_res32": (("resnet110", "kd_resnet110"), "kd_resnet32", 0.05, (1, 12), (1, 4, 0.1, False)),
    "res32x4_res8x4": (("resnet32x4", "kd_resnet32x4"), "kd_resnet8x4", 0.05, (1, 8), (1, 16, 0.05, True)),
    "res32x4_shuv1": (("resnet32x4", "kd_resnet32x4"), "kd_shufflev1", 0.01, (1, 8), (1, 8, 0, True)),
    "res32x4_shuv2": (("resnet32x4", "kd_resnet32x4"), "kd_shufflev2", 0.01, (3, 12), (3, 12, 0.1, True)),
    "res50_mv2": (("ResNet50", "kd_resnet50"), "kd_mobilenetv2", 0.01, (1, 12), (1, 8, 0.05, True)),
    "res56_res20": (("resnet56", "kd_resnet56"), "kd_resnet20", 0.05, (1, 4), (1, 4, 0.2, True)),
    "vgg13_mv2": (("vgg13", "kd_vgg13"), "kd_mobilenetv2", 0.01, (4, 12), (4, 12, 0.1, True)),
    "vgg13_vgg8": (("vgg13", "kd_vgg13"), "kd_vgg8", 0.05, (1, 12), (1, 8, 0.2, True)),
    "wrn40_2_shuv1": (("wrn_40_2", "kd_wrn_40_2"), "kd_shufflev1", 0.01, (1, 4), (1, 8, 0, False)),
    "wrn40_2_wrn_16_2": (("wrn_40_2", "kd_wrn_40_2"), "kd_wrn_16_2", 0.05, (3, 12), (3, 20, 0.3, False)),
    "wrn40_2_wrn_40_1": (("wrn_40_2", "kd_wrn_40_2"), "kd_wrn_40_1", 0.05, (1, 8), (1, 12, 0.3, False)),
}
CIFAR_SOLVER = dict(dataset="cifar100", num_classes=100, imb_factor=1.0, image_size=32, aug="cifar_crop_flip",
                    epochs=240, batch_size=64, bn_device_batch=64, device_batch=None, momentum=0.9, wd=5e-4,
                    schedule="step", warmup_epochs=0, milestones=[150, 180, 210], kd_temperature=4.0,
                    kd_warmup_epochs=20, kd_ce_weight=1.0, kd_drop_last=False)

# ImageNet: pair -> (teacher --arch, torchvision file, student --arch, IKL (alpha, beta), GKL (alpha, beta, gamma)).
IMAGENET = {
    "res34_res18": ("resnet34", "resnet34-333f7ec4.pth", "resnet18", (1, 0.5), (1, 0.5, 0.6)),
    "res50_mv1": ("resnet50", "resnet50-19c8e357.pth", "kd_mobilenetv1", (4, 1), (4, 1, 0.5)),
}
IMAGENET_SOLVER = dict(dataset="split", num_classes=1000, image_size=224, norm="imagenet", aug="crop_flip",
                       epochs=100, batch_size=512, bn_device_batch=64, device_batch=None, lr=0.2, momentum=0.9,
                       wd=1e-4, schedule="step", warmup_epochs=0, milestones=[30, 60, 90], kd_temperature=1.0,
                       kd_t2=1.0, kd_gi=True, kd_ce_weight=1.0, kd_drop_last=False)

# ImageNet-LT: recipe suffix -> (student, teacher baseline suffix or None, method, KD flags).
IMAGENET_LT = {
    "R18_baseline": ("resnet18", None, "ce", {}),
    "R50_baseline": ("resnet50", None, "ce", {}),
    "X101_baseline": ("resnext101_32x4d", None, "ce", {}),
    "X101R18_distill": ("resnet18", "X101_baseline", "kl_kd", dict(kd_weight=4.0)),
    "X101R50_distill": ("resnet50", "X101_baseline", "kl_kd", dict(kd_weight=3.0)),
    "R18R18_distill": ("resnet18", "R18_baseline", "kl_kd", dict(kd_weight=4.0)),
    "R50R50_distill": ("resnet50", "R50_baseline", "kl_kd", dict(kd_weight=1.0)),
    "X101R18_ikl": ("resnet18", "X101_baseline", "ikl_kd", dict(kd_alpha=4.0, kd_beta=4.0)),
    "X101R50_ikl": ("resnet50", "X101_baseline", "ikl_kd", dict(kd_alpha=3.0, kd_beta=4.0)),
    "R18R18_ikl": ("resnet18", "R18_baseline", "ikl_kd", dict(kd_alpha=1.0, kd_beta=0.5)),
    "R50R50_ikl": ("resnet50", "R50_baseline", "ikl_kd", dict(kd_alpha=1.0, kd_beta=1.0)),
    "X101R18_gkl": ("resnet18", "X101_baseline", "gkl_kd", dict(kd_alpha=4.0, kd_beta=4.0, kd_gamma=0.3)),
    "X101R50_gkl": ("resnet50", "X101_baseline", "gkl_kd", dict(kd_alpha=3.0, kd_beta=4.0, kd_gamma=0.3)),
    "R50R50_gkl": ("resnet50", "R50_baseline", "gkl_kd", dict(kd_alpha=1.0, kd_beta=1.0, kd_gamma=0.3)),
}
LT_SOLVER = dict(dataset="split", num_classes=1000, image_size=224, norm="imagenet", aug="crop_flip", epochs=90,
                 batch_size=128, device_batch=32, bn_device_batch=None, lr=0.05, momentum=0.9, wd=5e-4,
                 schedule="cosine", warmup_epochs=10)
# the drivers' defaults: T 1 everywhere; IKL (DKLv1) GI off with T2 100; GKL (DKLv2) GI on with T2 1; no warm-up
LT_METHOD = {
    "kl_kd": dict(kd_temperature=1.0, kd_warmup_epochs=0, kd_ce_weight=1.0, kd_drop_last=True),
    "ikl_kd": dict(kd_temperature=1.0, kd_t2=100.0, kd_gi=False, kd_warmup_epochs=0, kd_ce_weight=1.0,
                   kd_drop_last=True),
    "gkl_kd": dict(kd_temperature=1.0, kd_t2=1.0, kd_gi=True, kd_warmup_epochs=0, kd_ce_weight=1.0,
                   kd_drop_last=True),
}
ARCH_OF = {"R18_baseline": "resnet18", "R50_baseline": "resnet50", "X101_baseline": "resnext101_32x4d"}


def _expected():
    """recipe -> (parsed flags it must have, default TEACHER_WEIGHTS or None)."""
    out = {}
    for cfg, ((t_name, t_arch), s_arch, lr, (ia, ib), (ga, gb, gg, gi)) in CIFAR.items():
        teacher = f"data/cifar_teachers/{t_name}_vanilla/ckpt_epoch_240.pth"
        common = dict(CIFAR_SOLVER, arch=s_arch, teacher_arch=t_arch, lr=lr)
        out[f"sh/KD/CIFAR100/ikl_{cfg}.sh"] = (
            dict(common, method="ikl_kd", kd_alpha=float(ia), kd_beta=float(ib), kd_t2=100.0, kd_gi=False), teacher)
        out[f"sh/KD/CIFAR100/gkl_{cfg}.sh"] = (
            dict(common, method="gkl_kd", kd_alpha=float(ga), kd_beta=float(gb), kd_gamma=float(gg), kd_t2=4.0,
                 kd_gi=gi), teacher)
    for pair, (t_arch, wfile, s_arch, (ia, ib), (ga, gb, gg)) in IMAGENET.items():
        teacher = f"data/imagenet_teachers/{wfile}"
        common = dict(IMAGENET_SOLVER, arch=s_arch, teacher_arch=t_arch)
        out[f"sh/KD/ImageNet/ikl_{pair}.sh"] = (
            dict(common, method="ikl_kd", kd_alpha=float(ia), kd_beta=float(ib), kd_warmup_epochs=1), teacher)
        out[f"sh/KD/ImageNet/gkl_{pair}.sh"] = (
            dict(common, method="gkl_kd", kd_alpha=float(ga), kd_beta=float(gb), kd_gamma=float(gg),
                 kd_warmup_epochs=5), teacher)
    for name, (student, baseline, method, kd) in IMAGENET_LT.items():
        flags = dict(LT_SOLVER, method=method, arch=student)
        teacher = None
        if baseline is not None:
            flags.update(LT_METHOD[method], teacher_arch=ARCH_OF[baseline], **kd)
            teacher = f"runs/KD/ImageNetLT/ImageNetLT_train_{baseline}/best.pth"
        out[f"sh/KD/ImageNetLT/ImageNetLT_train_{name}.sh"] = (flags, teacher)
    return out


EXPECTED = _expected()
KD_RECIPES = sorted(p.relative_to(ROOT).as_posix() for p in KD.rglob("*.sh"))


# ----------------------------------------------------------------------------- argv checks

def test_every_kd_recipe_is_in_the_table():
    assert len(EXPECTED) == 22 + 4 + 14
    assert KD_RECIPES == sorted(EXPECTED)


@pytest.mark.parametrize("recipe", sorted(EXPECTED))
def test_kd_recipe_hyperparameters(recipe):
    """Each recipe passes the released configuration's numbers (parsed, so a typo'd flag fails)."""
    want, teacher = EXPECTED[recipe]
    script, argv = print_argv(recipe, _env())
    assert script == "tools/train.py"
    args = parse(script, argv)
    got = {k: getattr(args, k) for k in want}
    assert got == want
    assert flag(argv, "--teacher-weights") == teacher
    if teacher is None:
        assert "--teacher-arch" not in argv


@pytest.mark.parametrize("recipe", [r for r in sorted(EXPECTED) if EXPECTED[r][1] is not None][:1] +
                         ["sh/KD/ImageNetLT/ImageNetLT_train_X101R18_ikl.sh"])
def test_teacher_weights_env_overrides_the_default(recipe, tmp_path):
    path = str(tmp_path / "my teacher.pth")
    _, argv = print_argv(recipe, _env(TEACHER_WEIGHTS=path))
    assert flag(argv, "--teacher-weights") == path


def test_imagenet_lt_teachers_are_baseline_runs():
    """Every ImageNet-LT distillation reads the best.pth of a baseline recipe of the teacher's arch."""
    for name, (_, baseline, _, _) in IMAGENET_LT.items():
        if baseline is None:
            continue
        recipe = f"sh/KD/ImageNetLT/ImageNetLT_train_{baseline}.sh"
        _, argv = print_argv(recipe, _env())
        assert flag(argv, "--method") == "ce" and flag(argv, "--arch") == ARCH_OF[baseline]
        assert flag(argv, "--output-dir") == f"runs/KD/ImageNetLT/ImageNetLT_train_{baseline}"


def _mdistiller_lr(epoch0: int, base_lr: float, stages) -> float:
    """mdistiller's rule on its 1-based epoch: lr * 0.1 ** (number of stages < epoch)."""
    e = epoch0 + 1
    return base_lr * 0.1 ** sum(1 for s in stages if s < e)


def _imagenet_lt_lr(epoch0: int, base_lr: float, epochs: int = 90, warm: int = 10) -> float:
    """The imbalanced driver's rule on its 0-based epoch: warmup lr (e+1)/10, then a cosine over e - 9."""
    if epoch0 < warm:
        return base_lr * (epoch0 + 1) / warm
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * (epoch0 - warm + 1) / (epochs - warm + 1)))


@pytest.mark.parametrize("recipe,original", [
    ("sh/KD/CIFAR100/ikl_res32x4_res8x4.sh", lambda e, lr: _mdistiller_lr(e, lr, (150, 180, 210))),
    ("sh/KD/CIFAR100/gkl_res32x4_shuv1.sh", lambda e, lr: _mdistiller_lr(e, lr, (150, 180, 210))),
    ("sh/KD/ImageNet/gkl_res34_res18.sh", lambda e, lr: _mdistiller_lr(e, lr, (30, 60, 90))),
    ("sh/KD/ImageNetLT/ImageNetLT_train_X101R18_gkl.sh", _imagenet_lt_lr),
])
def test_kd_recipe_lr_schedule_is_the_originals(recipe, original):
    """Epoch by epoch, the recipe's schedule is the original's (mdistiller's stage rule on 1-based
    epochs; the imbalanced driver's warmup + cosine)."""
    from gpaco.engine.schedule import schedule_from_flags

    script, argv = print_argv(recipe, _env())
    args = parse(script, argv)
    sched = schedule_from_flags(args.schedule, vars(args))
    for epoch in range(args.epochs):
        assert sched(epoch) == pytest.approx(original(epoch, args.lr), rel=1e-12, abs=0.0), epoch


# ----------------------------------------------------------------------------- headers

PAPER = {
    "sh/KD/ImageNet/ikl_res34_res18.sh": ("71.91", "DKLv1/KD-dkl/README.md line 12"),
    "sh/KD/ImageNet/ikl_res50_mv1.sh": ("72.84", "DKLv1/KD-dkl/README.md line 18"),
    "sh/KD/ImageNet/gkl_res50_mv1.sh": ("72.92", "DKLv2/KD-dkl/README.md line 18"),
    "sh/KD/ImageNetLT/ImageNetLT_train_R18_baseline.sh": ("41.150", "DKLv1/Imbalanced_KD-dkl/README.md line 9"),
    "sh/KD/ImageNetLT/ImageNetLT_train_R50_baseline.sh": ("45.476", "DKLv1/Imbalanced_KD-dkl/README.md line 10"),
    "sh/KD/ImageNetLT/ImageNetLT_train_X101_baseline.sh": ("48.024", "DKLv1/Imbalanced_KD-dkl/README.md line 11"),
    "sh/KD/ImageNetLT/ImageNetLT_train_X101R18_distill.sh": ("44.318", "DKLv1/Imbalanced_KD-dkl/README.md line 12"),
    "sh/KD/ImageNetLT/ImageNetLT_train_X101R50_distill.sh": ("48.310", "DKLv1/Imbalanced_KD-dkl/README.md line 13"),
    "sh/KD/ImageNetLT/ImageNetLT_train_X101R18_ikl.sh": ("45.208", "DKLv1/Imbalanced_KD-dkl/README.md line 14"),
    "sh/KD/ImageNetLT/ImageNetLT_train_X101R50_ikl.sh": ("49.224", "DKLv1/Imbalanced_KD-dkl/README.md line 15"),
    "sh/KD/ImageNetLT/ImageNetLT_train_R18R18_distill.sh": ("42.732", "DKLv1/Imbalanced_KD-dkl/README.md line 23"),
    "sh/KD/ImageNetLT/ImageNetLT_train_R50R50_distill.sh": ("47.036", "DKLv1/Imbalanced_KD-dkl/README.md line 24"),
    "sh/KD/ImageNetLT/ImageNetLT_train_R18R18_ikl.sh": ("43.062", "DKLv1/Imbalanced_KD-dkl/README.md line 25"),
    "sh/KD/ImageNetLT/ImageNetLT_train_R50R50_ikl.sh": ("47.504", "DKLv1/Imbalanced_KD-dkl/README.md line 26"),
    "sh/KD/ImageNetLT/ImageNetLT_train_X101R18_gkl.sh": ("45.40", "DKLv2/Imbalanced_KD-dkl/README.md line 14"),
    "sh/KD/ImageNetLT/ImageNetLT_train_X101R50_gkl.sh": ("49.40", "DKLv2/Imbalanced_KD-dkl/README.md line 15"),
}


@pytest.mark.parametrize("recipe", sorted(EXPECTED))
def test_kd_recipe_header_names_its_origin(recipe):
    """The paper row with its README line (or why there is none), the original file, the GPUs."""
    header = _flat(_header(recipe))
    assert "Paper row:" in header and "Original: jiequancui/DKL " in header
    assert "The source of every hyperparameter" in header or "the source of every hyperparameter" in header
    if recipe in PAPER:
        number, line = PAPER[recipe]
        assert re.search(rf"(?<![\d.]){re.escape(number)}(?!\d)", header), number
        assert line in header
    elif recipe == "sh/KD/ImageNet/gkl_res34_res18.sh":
        # the GKL README's row repeats the IKL number: quoted as IKL's, never claimed for GKL
        assert "repeats the IKL number, 71.91" in header and "DKLv2/KD-dkl/README.md line 12" in header
    else:
        assert "Paper row: none" in header
    for number, _ in PAPER.values():  # no recipe quotes another row's number as its own
        if recipe not in PAPER or PAPER[recipe][0] != number:
            assert not re.search(rf"Paper row:[^.]*: {re.escape(number)} top-1", header), number


def test_cifar_headers_say_the_normalisation():
    """mdistiller's CIFAR-100 statistics are quoted, with what the recipe passes instead."""
    for recipe in KD_RECIPES:
        if "/CIFAR100/" in recipe:
            header = _flat(_header(recipe))
            assert "(.5071, .4867, .4408)" in header and "(.2675, .2565, .2761)" in header
            _, argv = print_argv(recipe, _env())
            assert f"--norm {flag(argv, '--norm')}" in header


# ----------------------------------------------------------------------------- dry runs

def _methods_registered() -> bool:
    from gpaco.methods import method_names

    return {"kl_kd", "ikl_kd", "gkl_kd"} <= set(method_names("classification"))


@pytest.mark.parametrize("recipe", ["sh/KD/CIFAR100/gkl_res32x4_shuv1.sh", "sh/KD/ImageNet/ikl_res34_res18.sh",
                                    "sh/KD/ImageNetLT/ImageNetLT_train_X101R18_distill.sh",
                                    "sh/KD/ImageNetLT/ImageNetLT_train_R50R50_gkl.sh"])
def test_kd_recipe_dry_run_without_teacher_file(recipe, tmp_path, capsys):
    """DRY_RUN=1 with neither the data nor the teacher file: synthetic data, a random teacher
    (with a printed warning), two steps, nothing written."""
    if not _methods_registered():
        pytest.skip("the distillation methods are not registered")
    absent = tmp_path / "absent-teacher.pth"
    script, argv = print_argv(recipe, _dry_env(tmp_path, TEACHER_WEIGHTS=str(absent)))
    assert "--dry-run" in argv and flag(argv, "--teacher-weights") == str(absent)
    try:
        result = entry_main(script)(argv)
    finally:
        gc.collect()
    assert isinstance(result, dict) and result.get("dry_run") is True
    out = capsys.readouterr().out
    assert "random weights" in out and str(absent) in out
    assert not (tmp_path / "out").exists() and not absent.exists()
