"""Recipes that train what the original released, and say so.

* ResCom CIFAR: the released code computes its CIFAR learning-rate schedule but never writes it
  into the optimizer, so its CIFAR runs (and the README's CIFAR numbers) used a constant lr. The
  recipes train that by default; ``RESCOM_SCHEDULE=step`` gives the schedule the code meant
  (10 warmup epochs, x0.1 after epochs 320 and 360), epoch for epoch.
* ResCom ImageNet-C: the evaluation recipe of the README's mCE / NmCE row evaluates the
  ImageNet-LT ResNet-50 run on ImageNet-C and quotes both numbers.
* ResLT: the plain-ResLT recipes quote no number the ResLT README does not give.

Every check prints a recipe's argv (``GPACO_PRINT_ARGV=1``): no training runs, a few seconds.
"""
from __future__ import annotations

import re
import subprocess

import pytest

from test_recipes import ROOT, SH, _env as _recipe_env, flag, parse, print_argv

# Variables these recipes read beyond tests/test_recipes.py's RECIPE_ENV: never from the caller's shell.
OWN_ENV = ("RESCOM_SCHEDULE", "IMAGENET_C_ROOT", "IMAGENET_R_ROOT", "IMAGENET_SKETCH_ROOT")


def _env(**overrides):
    env = {k: v for k, v in _recipe_env().items() if k not in OWN_ENV}
    env.update(overrides)
    return env

RESCOM_CIFAR = sorted(p.relative_to(ROOT).as_posix() for p in (SH / "ResCom").glob("CIFAR*.sh"))


def _header(recipe: str) -> str:
    lines = []
    for line in (ROOT / recipe).read_text().splitlines()[1:]:
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def released_rescom_cifar_lr(epoch: int, base_lr: float) -> float:
    """The lr the released ResCom code trains CIFAR with at 0-based ``epoch``: its CIFAR branch
    computes a schedule but never assigns it to the optimizer's param groups."""
    return base_lr


def intended_rescom_cifar_lr(epoch: int, base_lr: float, warm: int = 10) -> float:
    """The CIFAR schedule the released code computes, on its 1-based epoch ``e = epoch + 1``:
    ``lr*e/warm`` while ``e < warm``, then lr, x0.1 for ``e > 320``, x0.01 for ``e > 360``."""
    e = epoch + 1
    if e < warm:
        return base_lr / warm * e
    if e > 360:
        return base_lr * 0.01
    if e > 320:
        return base_lr * 0.1
    return base_lr


def _schedule(args):
    from gpaco.engine.schedule import schedule_from_flags

    return schedule_from_flags(args.schedule, vars(args))


def test_rescom_cifar_recipes_found():
    assert len(RESCOM_CIFAR) == 6, RESCOM_CIFAR


@pytest.mark.parametrize("recipe", RESCOM_CIFAR)
def test_rescom_cifar_default_is_the_released_constant_lr(recipe):
    script, argv = print_argv(recipe, _env())
    args = parse(script, argv)
    assert args.schedule == "constant" and args.lr == 0.1 and args.epochs == 400
    sched = _schedule(args)
    got = [sched(e) for e in range(args.epochs)]
    assert got == [released_rescom_cifar_lr(e, 0.1) for e in range(args.epochs)]


@pytest.mark.parametrize("recipe", RESCOM_CIFAR)
def test_rescom_cifar_step_variable_gives_the_intended_schedule(recipe):
    script, argv = print_argv(recipe, _env(RESCOM_SCHEDULE="step"))
    args = parse(script, argv)
    assert args.schedule == "step"
    assert args.milestones == [320, 360] and args.warmup_epochs == 10 and args.warmup_start == 0.0
    sched = _schedule(args)
    for e in range(args.epochs):
        assert sched(e) == pytest.approx(intended_rescom_cifar_lr(e, 0.1), rel=1e-12), f"epoch {e}"
    # spot values: warmup 0.01 .. 0.09, full lr from epoch 9 (1-based 10), the two decays
    assert [round(sched(e), 12) for e in (0, 8, 9, 319, 320, 359, 360, 399)] == \
        [0.01, 0.09, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    # everything but the schedule is the default argv's
    _, default_argv = print_argv(recipe, _env())
    strip = {"--schedule", "--warmup-epochs", "--milestones"}
    assert _without(argv, strip) == _without(default_argv, strip)


def _without(argv, names):
    out, skip = [], False
    for a in argv:
        if a in names:
            skip = True
            continue
        if skip and not a.startswith("--"):
            continue
        skip = False
        out.append(a)
    return out


@pytest.mark.parametrize("recipe", RESCOM_CIFAR)
def test_rescom_cifar_header_documents_the_switch(recipe):
    header = _header(recipe)
    assert "RESCOM_SCHEDULE=constant" in header and "RESCOM_SCHEDULE=step" in header
    assert "--milestones 320 360" in header and "docs/migrating.md" in header


def test_rescom_cifar_rejects_an_unknown_schedule():
    proc = subprocess.run(["bash", str(ROOT / RESCOM_CIFAR[0])], env=_env(RESCOM_SCHEDULE="cosine",
                                                                       GPACO_PRINT_ARGV="1"),
                          cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "RESCOM_SCHEDULE=cosine" in proc.stderr and "constant" in proc.stderr and "step" in proc.stderr


IMAGENET_C = "sh/ResCom/ImageNetC_eval_R50.sh"


def test_rescom_imagenet_c_recipe_evaluates_the_imagenet_lt_r50_run():
    script, argv = print_argv(IMAGENET_C, _env(IMAGENET_C_ROOT="/datasets/imagenet-c"))
    assert script == "tools/eval.py"
    args = parse(script, argv)
    assert args.method == "rescom" and args.arch == "resnet50" and args.num_classes == 1000
    assert args.checkpoint == "runs/ResCom/ImageNetLT_train_R50/best.pth"
    assert (SH / "ResCom/ImageNetLT_train_R50.sh").is_file()
    assert args.corrupted_root == "/datasets/imagenet-c"
    assert args.test_list.endswith("ImageNet_LT_test.txt")
    header = _header(IMAGENET_C)
    for number in ("69.4", "89.2", "58.7"):
        assert number in header, number
    assert "ResCom README" in header


def test_rescom_imagenet_c_recipe_has_a_default_corruption_folder():
    _, argv = print_argv(IMAGENET_C, _env())
    assert flag(argv, "--corrupted-root") == "data/imagenet-c"


# Numbers the ResLT README gives: RIDE-ResLT 57.6 (ImageNet-LT) and 72.9 (iNaturalist), and the
# RIDE baselines without ResLT, 55.1 and 70.8. The plain-ResLT rows are links only.
RESLT_README_NUMBERS = {"57.6", "72.9", "55.1", "70.8"}


@pytest.mark.parametrize("recipe", sorted(p.relative_to(ROOT).as_posix() for p in (SH / "ResLT").glob("*.sh")
                                          if "RIDE" not in p.name and "ride" not in p.name))
def test_plain_reslt_headers_quote_no_unsourced_number(recipe):
    line = next((l for l in _header(recipe).splitlines() if "Paper row" in l), "")
    line = re.sub(r"imb(alance factor)? \d+(\.\d+)?", "", line)  # the dataset's ratio is not a result
    numbers = set(re.findall(r"(?<![\d.])\d+\.\d(?!\d)", line))
    assert not numbers - RESLT_README_NUMBERS, f"{recipe}: {sorted(numbers)} is not in the ResLT README"
    assert "third-party" not in _header(recipe)
    # the README's 55.1 is RIDE without ResLT: never a plain-ResLT row's number
    assert "55.1" not in line and "52.9" not in line and "89.7" not in line
