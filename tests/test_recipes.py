"""The sh/ recipes: syntax, the launcher, the paper's hyperparameters, and a dry run of each.

Every ``*.sh`` under ``sh/`` that goes through ``sh/launch.sh`` is a recipe (folders added
later are picked up automatically); the infrastructure scripts are not. A recipe is run
with ``GPACO_PRINT_ARGV=1`` (the launcher prints the entry script and its final argv and
exits), then the entry's ``main(argv)`` is called in-process with ``--dry-run``: no
interpreter start-up per recipe, and the data is a synthetic stand-in because DATA_ROOT
points to a folder that does not exist.

To support a new entry script, add it to ``ENTRY_MODULES`` (script -> module with
``main(argv)``). An unlisted ``tools/*.py`` is used if running it (not as __main__) leaves a
``main`` callable; otherwise its recipes are skipped with the reason.
"""
from __future__ import annotations

import gc
import json
import os
import runpy
import stat
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
SH = ROOT / "sh"

# Scripts under sh/ that are not recipes.
INFRA_NAMES = {"launch.sh", "slurm.sh", "setup_env.sh", "test.sh", "study.sh"}
# Entry script (as passed to launch.sh) -> module whose main(argv) runs it.
ENTRY_MODULES: Dict[str, str] = {
    "tools/train.py": "gpaco.classification.train",
    "tools/eval.py": "gpaco.classification.evaluate",
    "tools/train_seg.py": "gpaco.segmentation.train", "tools/eval_seg.py": "gpaco.segmentation.evaluate",
    "tools/eval_adversarial.py": "gpaco.classification.adversarial_eval",
}
# Environment the recipes read that must not leak in from the caller's shell.
RECIPE_ENV = ("DATA_ROOT", "TRAIN_LIST", "VAL_LIST", "TEST_LIST", "OUTPUT_DIR", "CHECKPOINT", "TRAIN_DIR",
              "PRETRAINED", "CLASS_COUNTS", "WORKERS", "SEED", "EXTRA_ARGS", "DRY_RUN", "GPACO_PRINT_ARGV",
              "GPACO_PRINT_CMD", "NGPUS", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "PYTHON",
              "RESCOM_SCHEDULE", "IMAGENET_C_ROOT", "TEACHER_WEIGHTS", "STAGE1", "PAIR", "ARCH", "TEACHER_DIM",
              "CC3M_ROOT")


def _is_infra(path: Path) -> bool:
    return path.name in INFRA_NAMES or path.name.startswith("demo")


ALL_SH = sorted(p.relative_to(ROOT).as_posix() for p in SH.rglob("*.sh"))
RECIPES = [p for p in ALL_SH if not _is_infra(ROOT / p)]


def _uses_launcher(recipe: str) -> bool:
    return "launch.sh" in (ROOT / recipe).read_text()


def _env(**overrides: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in RECIPE_ENV}
    env.update(overrides)
    return env


def _dry_env(tmp_path: Path, **extra: str) -> Dict[str, str]:
    """Absent data (synthetic stand-in), outputs under tmp, no pretrained file, no checkpoint."""
    return _env(DRY_RUN="1", DATA_ROOT=str(tmp_path / "absent-data"), OUTPUT_DIR=str(tmp_path / "out"),
                CHECKPOINT=str(tmp_path / "absent-checkpoint.pth"), PRETRAINED="", **extra)


def print_argv(recipe: str, env: Dict[str, str]) -> Tuple[str, List[str]]:
    """Run a recipe in GPACO_PRINT_ARGV mode: (entry script, its argv)."""
    if not _uses_launcher(recipe):
        pytest.skip(f"{recipe} does not go through sh/launch.sh")
    proc = subprocess.run(["bash", str(ROOT / recipe)], env={**env, "GPACO_PRINT_ARGV": "1"}, cwd=str(ROOT),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{recipe} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    script = argv = None
    for line in proc.stdout.splitlines():
        if line.startswith("GPACO_SCRIPT "):
            script = line[len("GPACO_SCRIPT "):].strip()
        elif line.startswith("GPACO_ARGV "):
            argv = json.loads(line[len("GPACO_ARGV "):])
    assert script is not None and argv is not None, f"{recipe}: no GPACO_SCRIPT/GPACO_ARGV lines:\n{proc.stdout}"
    return script, argv


def entry_main(script: str) -> Optional[Callable]:
    """The main(argv) of an entry script, or None if there is none to call in-process."""
    module = ENTRY_MODULES.get(script)
    if module is not None:
        import importlib

        return importlib.import_module(module).main
    path = ROOT / script
    if path.suffix == ".py" and path.is_file():
        namespace = runpy.run_path(str(path), run_name="gpaco_recipe_test")  # not __main__: nothing runs
        fn = namespace.get("main")
        return fn if callable(fn) else None
    return None


def flag(argv: List[str], name: str) -> Optional[str]:
    """Value of the LAST occurrence of --name (argparse semantics)."""
    value = None
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith(name + "="):
            value = a.split("=", 1)[1]
    return value


def parse(script: str, argv: List[str]):
    if script == "tools/train.py":
        from gpaco.classification.args import parse_train_args

        return parse_train_args(argv)
    if script == "tools/eval.py":
        from gpaco.classification.evaluate import build_eval_parser

        return build_eval_parser().parse_args(argv)
    if script == "tools/train_seg.py":
        from gpaco.segmentation.train import parse_train_args as parse_seg_train_args

        return parse_seg_train_args(argv)
    if script == "tools/eval_seg.py":
        from gpaco.segmentation.evaluate import build_eval_parser as build_seg_eval_parser

        return build_seg_eval_parser().parse_args(argv)
    if script == "tools/eval_adversarial.py":
        from gpaco.classification.adversarial_eval import build_parser as build_adversarial_eval_parser

        return build_adversarial_eval_parser().parse_args(argv)
    pytest.skip(f"no parser known for {script}")


# ----------------------------------------------------------------------------- fast checks

def test_recipes_collected():
    names = set(RECIPES)
    for expected in ("sh/PaCo/LT/ImageNetLT_train_R50.sh", "sh/GPaCo/LT/ImageNetLT_train_R50.sh",
                     "sh/PaCo/ImageNet/train_resnet200.sh", "sh/GPaCo/CIFAR/CIFAR100_train.sh"):
        assert expected in names
    assert not any(_is_infra(ROOT / r) for r in RECIPES)


@pytest.mark.parametrize("script", ALL_SH)
def test_bash_syntax(script):
    proc = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_argv(recipe, tmp_path):
    """Every recipe prints a valid argv: --dry-run appended, the flags parse and validate."""
    script, argv = print_argv(recipe, _dry_env(tmp_path))
    assert "--dry-run" in argv
    args = parse(script, argv)
    assert args.dry_run
    if script == "tools/train.py":
        from gpaco.data.transforms import SINGLE_VIEW_STRATEGIES, TWO_VIEW_STRATEGIES

        assert args.aug in TWO_VIEW_STRATEGIES or args.aug in SINGLE_VIEW_STRATEGIES, args.aug
        if args.method in ("paco", "gpaco", "multitask") and not args.single_view:
            assert args.aug in TWO_VIEW_STRATEGIES, f"{args.method} needs a two-view --aug, got {args.aug}"
            assert args.queue_size % args.batch_size == 0, "K must be a multiple of the global batch"
        assert args.resume == "auto", "train recipes resume automatically"


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_default_paths(recipe):
    """OUTPUT_DIR defaults to runs/<recipe path>; eval recipes read a train recipe's best.pth, and a
    second stage (or a student) starts from a file of an earlier recipe's run."""
    script, argv = print_argv(recipe, _env())
    rel = recipe[len("sh/"):-len(".sh")]
    out = flag(argv, "--output-dir")
    if out is not None:
        assert out == f"runs/{rel}"
    for name in ("--checkpoint", "--stage1", "--gendd-stage1", "--teacher-weights"):
        path = flag(argv, name)
        if path is not None and path.startswith("runs/"):
            train_dir = os.path.dirname(path)[len("runs/"):]
            assert (SH / f"{train_dir}.sh").is_file(), f"{recipe}: {name} {path} is not a train recipe's run"


# The paper's hyperparameters (docs/method.md#hyperparameters) for key recipes, as parsed flags.
EXPECTED = {
    # ResCom's only published config (CIFAR-100-LT imb 0.01), trained at the released code's constant lr
    # (docs/migrating.md); RESCOM_SCHEDULE=step: tests/test_recipes_fidelity.py
    "sh/ResCom/CIFAR100LT_train_imb0.01.sh": dict(
        method="rescom", arch="resnet32", batch_size=128, epochs=400, lr=0.1, wd=5e-4, proj_dim=32, temperature=0.2,
        rescom_con_weight=0.5, rescom_queue_per_class=10, rescom_positives=1, rescom_negatives=400,
        rescom_beta=0.999999, schedule="constant", aug="cifar_regular_cifar_regular", num_classes=100,
        imb_factor=0.01),
    "sh/ResCom/ImageNetLT_train_R50.sh": dict(
        method="rescom", arch="resnet50", lr=0.02, wd=5e-4, epochs=400, temperature=0.1, rescom_con_weight=1.0,
        rescom_beta=0.0, schedule="cosine_min", aug="randclsgray_randclsgray", randaug_n=2, randaug_m=10),
    "sh/GPaCo/LT/ImageNetLT_train_R50.sh": dict(
        method="gpaco", arch="resnet50", lr=0.04, alpha=0.045, batch_size=128, aug="randcls_randclsstack",
        randaug_n=2, randaug_m=10, temperature=0.2, queue_size=8192, wd=5e-4, epochs=400, prior=True,
        smoothing=0.0, num_classes=1000),
    "sh/GPaCo/LT/ImageNetLT_train_X101.sh": dict(
        method="gpaco", arch="resnext101_32x4d", lr=0.06, alpha=0.05, randaug_n=5, aug="randcls_randclsstack"),
    "sh/GPaCo/LT/ImageNetLT_train_X50_multitask.sh": dict(
        method="multitask", arch="resnext50_32x4d", lr=0.06, alpha=0.5, randaug_n=3, temperature=0.2, prior=True),
    "sh/GPaCo/LT/Inat_train_R152.sh": dict(
        method="gpaco", arch="resnet152", lr=0.08, batch_size=256, device_batch=32, wd=1e-4, alpha=0.05,
        num_classes=8142, aug="randcls_sim", norm="inat"),
    "sh/GPaCo/LT/Inat_train_R50.sh": dict(method="gpaco", lr=0.04, batch_size=128, device_batch=16),
    "sh/GPaCo/LT/PlacesLT_train_R152.sh": dict(
        method="gpaco", arch="resnet152", epochs=30, lr=0.02, alpha=0.02, warmup_epochs=5, amp="fp16",
        freeze="all_but_last_block", aug="sim_sim", num_classes=365),
    "sh/GPaCo/ImageNet/train_resnet50.sh": dict(
        method="gpaco", lr=0.08, batch_size=512, smoothing=0.1, prior=False, wd=1e-4, aug="randcls_randclsstack"),
    "sh/GPaCo/CIFAR/CIFAR100_train.sh": dict(
        method="gpaco", arch="resnet50_cifar", dataset="cifar100", imb_factor=1.0, alpha=0.01, temperature=0.07,
        queue_size=1024, aug="sim_cifar_sim_cifar", prior=True, schedule="step_cifar", device_batch=128),
    "sh/GPaCo/CIFAR/CIFAR100_train_multitask.sh": dict(method="multitask", alpha=0.5, prior=False),
    "sh/PaCo/LT/CIFAR100_train_imb0.01.sh": dict(
        method="paco", arch="resnet32", dataset="cifar100", imb_factor=0.01, queue_size=1024, temperature=0.05,
        proj_dim=32, alpha=0.01, lr=0.05, schedule="step_cifar", image_size=32, norm="cifar", aug="cifar100",
        batch_size=128, wd=5e-4, prior=True),
    "sh/PaCo/LT/ImageNetLT_train_R50.sh": dict(
        method="paco", lr=0.02, alpha=0.05, temperature=0.2, aug="randcls_sim", randaug_n=2, wd=5e-4,
        momentum_encoder=0.999),
    "sh/PaCo/LT/ImageNetLT_train_X50.sh": dict(arch="resnext50_32x4d", temperature=0.07, aug="randclsstack_sim"),
    "sh/PaCo/LT/ImageNetLT_train_X101.sh": dict(arch="resnext101_32x4d", lr=0.03, randaug_n=3),
    "sh/PaCo/LT/Inat_train_R50.sh": dict(method="paco", wd=1e-4, lr=0.02, num_classes=8142),
    "sh/PaCo/LT/PlacesLT_train_R152.sh": dict(
        method="paco", epochs=30, alpha=0.05, warmup_epochs=5, amp="fp16", freeze="all_but_last_block",
        aug="sim_sim"),
    "sh/PaCo/ImageNet/train_resnet200.sh": dict(
        arch="resnet200", batch_size=256, lr=0.04, wd=1e-4, prior=False, aug="randclsstack_sim", randaug_n=3,
        randaug_m=12, amp="fp16"),
    "sh/PaCo/ImageNet/train_resnet50.sh": dict(batch_size=256, lr=0.04, wd=1e-4, prior=False, aug="randcls_sim"),
    # ResLT's CIFAR original is Nesterov SGD, its ImageNet-LT one is not
    "sh/ResLT/CIFAR100LT_train_imb0.01.sh": dict(lr=0.1, momentum=0.9, nesterov=True, wd=5e-4),
    "sh/ResLT/CIFAR10LT_train_imb0.1.sh": dict(lr=0.1, momentum=0.9, nesterov=True, wd=5e-4),
    "sh/ResLT/ImageNetLT_train_X50.sh": dict(momentum=0.9, nesterov=False),
}


# The original's GPU count and per-GPU batch of every PaCo/GPaCo classification training recipe
# (and of any other recipe whose header states it): the "GPUs: the original ran N GPUs x M
# images" line of its header, and its --device-batch M; or, where the header says the original
# ran DataParallel ("... M images (DataParallel: BatchNorm per GPU...)"), --bn-device-batch M
# (only BatchNorm was per GPU there). Recipes whose original states no GPU count (ResLT
# ImageNet-LT and CIFAR, the CIFAR ones of MiSLAS and ResCom) run without either.
TRAIN_RECIPES = [r for r in RECIPES if _uses_launcher(r) and '/launch.sh" tools/train.py' in (ROOT / r).read_text()
                 and (r.startswith(("sh/GPaCo/", "sh/PaCo/")) or "# GPUs: the original ran" in (ROOT / r).read_text())]


@pytest.mark.parametrize("recipe", TRAIN_RECIPES)
def test_recipe_states_the_original_gpus_and_sets_device_batch(recipe):
    """Every original ran with per-GPU statistics: the recipe states its GPUs x per-GPU batch
    and passes that batch as --device-batch (DDP: BatchNorm, contrast set, mixup per GPU) or,
    for an original that ran DataParallel, as --bn-device-batch (BatchNorm per GPU only)."""
    import re

    script, argv = print_argv(recipe, _env())
    header = re.search(r"# GPUs: the original ran (\d+) GPUs? x (\d+) images( \(DataParallel: BatchNorm per GPU)?",
                       (ROOT / recipe).read_text())
    assert header, f"{recipe}: no 'GPUs: the original ran N GPUs x M images' header line"
    gpus, per_gpu = int(header.group(1)), int(header.group(2))
    grouped, other = ("--bn-device-batch", "--device-batch") if header.group(3) else \
        ("--device-batch", "--bn-device-batch")
    assert flag(argv, grouped) == str(per_gpu), f"{recipe}: {grouped} is not {per_gpu}"
    assert flag(argv, other) is None, f"{recipe}: {other} with a header that asks for {grouped}"
    # A method that stacks a two-view --aug into one batch (adversarial training's [plain; AutoAugment]
    # views) normalises two images per sample: the header counts images, --batch-size samples.
    from gpaco.data.transforms import TWO_VIEW_STRATEGIES
    from gpaco.methods import get_method

    args = parse(script, argv)
    images_per_sample = 2 if get_method(args.method).paired_views and args.aug in TWO_VIEW_STRATEGIES else 1
    assert int(flag(argv, "--batch-size")) * images_per_sample == gpus * per_gpu


def test_launch_prints_the_per_device_grouping():
    proc = subprocess.run(["bash", str(SH / "launch.sh"), "tools/train.py", "--batch-size", "128",
                           "--device-batch", "16"], env=_env(NGPUS="2", PYTHON="true"), capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert ("[launch] GPUs: per-GPU statistics over 16 images (--device-batch), as one of the original's GPUs; "
            "--batch-size 128 = 8 such devices; this run: 2 process(es) x 64 images = 4 virtual device(s) of 16 "
            "each") in proc.stdout
    proc = subprocess.run(["bash", str(SH / "launch.sh"), "tools/train.py", "--batch-size", "256",
                           "--bn-device-batch", "64"], env=_env(NGPUS="1", PYTHON="true"), capture_output=True,
                          text=True, timeout=30)
    assert ("[launch] GPUs: per-GPU BatchNorm over 64 images (--bn-device-batch), as one of the original's GPUs; "
            "--batch-size 256 = 4 such devices; this run: 1 process(es) x 256 images = 4 virtual device(s) of 64 "
            "each") in proc.stdout


@pytest.mark.parametrize("recipe", sorted(EXPECTED))
def test_recipe_hyperparameters(recipe):
    script, argv = print_argv(recipe, _env())
    args = parse(script, argv)
    got = {k: getattr(args, k) for k in EXPECTED[recipe]}
    assert got == EXPECTED[recipe]


def test_places_pretrained_default():
    _, argv = print_argv("sh/GPaCo/LT/PlacesLT_train_R152.sh", _env())
    assert flag(argv, "--pretrained") == "pretrained/resnet152-394f9c45.pth"
    _, argv = print_argv("sh/GPaCo/LT/PlacesLT_train_R152.sh", _env(PRETRAINED=""))
    assert "--pretrained" not in argv


# ----------------------------------------------------------------------------- the launcher

def launch_cmd(env: Dict[str, str], *args: str) -> List[str]:
    proc = subprocess.run(["bash", str(SH / "launch.sh"), *args], env={**env, "GPACO_PRINT_CMD": "1"},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("GPACO_CMD ")]
    assert len(line) == 1, proc.stdout
    return json.loads(line[0][len("GPACO_CMD "):])


def test_launch_torchrun_multinode():
    env = _env(NGPUS="2", NNODES="2", NODE_RANK="1", MASTER_ADDR="10.1.2.3", MASTER_PORT="23456", PYTHON="py")
    cmd = launch_cmd(env, "tools/train.py", "--lr", "0.1")
    assert cmd == ["py", "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", "1", "--nproc_per_node",
                   "2", "--master_addr", "10.1.2.3", "--master_port", "23456", "tools/train.py", "--lr", "0.1"]


def test_launch_torchrun_one_node_defaults():
    cmd = launch_cmd(_env(NGPUS="4", PYTHON="py"), "tools/eval.py")
    assert cmd == ["py", "-m", "torch.distributed.run", "--nnodes", "1", "--node_rank", "0", "--nproc_per_node",
                   "4", "--master_addr", "127.0.0.1", "--master_port", "29500", "tools/eval.py"]


def test_launch_single_process_dry_run_and_extra_args():
    env = _env(NGPUS="1", PYTHON="py", DRY_RUN="1", EXTRA_ARGS="--epochs 1 --output-dir 'runs/a b'")
    cmd = launch_cmd(env, "tools/train.py", "--epochs", "400")
    assert cmd == ["py", "tools/train.py", "--epochs", "400", "--dry-run", "--epochs", "1", "--output-dir",
                   "runs/a b"]


def test_launch_default_python_is_the_venv():
    cmd = launch_cmd(_env(NGPUS="1"), "tools/train.py")
    venv = ROOT / ".venv" / "bin" / "python"
    assert cmd[0] == (str(venv) if os.access(venv, os.X_OK) else "python3")


def test_launch_counts_visible_gpus(tmp_path):
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/usr/bin/env bash\nfor i in 0 1 2; do echo \"GPU $i: Fake GPU (UUID: GPU-$i)\"; done\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    base = {k: v for k, v in _env(PYTHON="py").items() if k != "CUDA_VISIBLE_DEVICES"}
    base["PATH"] = f"{fake.parent}{os.pathsep}{base.get('PATH', '')}"
    nproc = lambda cmd: cmd[cmd.index("--nproc_per_node") + 1]  # noqa: E731
    assert nproc(launch_cmd(base, "tools/train.py")) == "3"
    assert nproc(launch_cmd({**base, "CUDA_VISIBLE_DEVICES": "0,1"}, "tools/train.py")) == "2"
    assert launch_cmd({**base, "CUDA_VISIBLE_DEVICES": ""}, "tools/train.py") == ["py", "tools/train.py"]


def test_launch_print_argv_mode():
    proc = subprocess.run(["bash", str(SH / "launch.sh"), "tools/eval.py", "--checkpoint", 'a "b"\\c'],
                          env=_env(GPACO_PRINT_ARGV="1", DRY_RUN="1"), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "GPACO_SCRIPT tools/eval.py"
    assert json.loads(lines[1][len("GPACO_ARGV "):]) == ["--checkpoint", 'a "b"\\c', "--dry-run"]


def test_launch_rejects_bad_env():
    proc = subprocess.run(["bash", str(SH / "launch.sh"), "tools/train.py"], env=_env(NGPUS="two"),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "NGPUS" in proc.stderr


# ----------------------------------------------------------------------------- dry runs

def _dry_run_signature(recipe: str) -> Tuple[Optional[str], Optional[str]]:
    """(entry script, --method): recipes that share it take the same code path in a dry run."""
    import re

    text = (ROOT / recipe).read_text()
    entry, method = re.search(r'launch\.sh"? (tools/\S+)', text), re.search(r"--method (\S+)", text)
    return (entry.group(1) if entry else None, method.group(1) if method else None)


def _dry_run_representatives() -> set:
    """One recipe per :func:`_dry_run_signature`, the cheapest-looking: a CIFAR one where there is,
    else not a large or base network."""
    def cost(recipe: str) -> Tuple[bool, bool, str]:
        return "CIFAR" not in recipe, any(big in recipe.lower() for big in ("large", "base", "x101", "r152")), recipe

    chosen: Dict[Tuple[Optional[str], Optional[str]], str] = {}
    for recipe in sorted(RECIPES, key=cost):
        chosen.setdefault(_dry_run_signature(recipe), recipe)
    return set(chosen.values())


DRY_RUN_REPRESENTATIVES = _dry_run_representatives()


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [r if r in DRY_RUN_REPRESENTATIVES else pytest.param(r, marks=pytest.mark.full)
                                    for r in RECIPES])
def test_recipe_dry_run(recipe, tmp_path):
    """Every recipe's configuration builds and takes two steps (synthetic data, 64 px, batch 4).
    The default tier runs one recipe per entry script and method (every recipe's flags parse and
    validate in test_recipe_argv); ``bash sh/test.sh --full`` runs them all."""
    script, argv = print_argv(recipe, _dry_env(tmp_path))
    assert "--dry-run" in argv
    if script == "tools/train.py" and (flag(argv, "--method") or "").endswith("_at"):
        # WideResNet-34-10 on CPU: one attack step instead of five takes the same code path in a third of the time
        argv = argv + ["--at-steps", "1"]
    main = entry_main(script)
    if main is None:
        pytest.skip(f"{recipe}: no in-process entry for {script}; add it to ENTRY_MODULES")
    try:
        result = main(argv)
    finally:
        gc.collect()
    assert isinstance(result, dict), result
    if script == "tools/train.py":
        assert result.get("dry_run") is True
    elif script == "tools/eval.py":
        assert "top1" in result and "top5" in result
    assert not (tmp_path / "out").exists(), "a dry run writes nothing"


@pytest.mark.slow
def test_recipe_end_to_end_through_bash(tmp_path):
    """A small recipe through bash, the launcher and a real interpreter."""
    env = _dry_env(tmp_path, NGPUS="1", PYTHON=sys.executable, OMP_NUM_THREADS="2")
    proc = subprocess.run(["bash", str(SH / "PaCo/LT/CIFAR100_train_imb0.01.sh")], env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "[launch]" in out and "tools/train.py" in out
    assert "dry run ok" in out


def _header_first_line(script: str) -> str:
    return (ROOT / script).read_text().splitlines()[1].lstrip("#").strip()


def test_every_script_prints_its_header_on_help_and_starts_nothing(tmp_path: Path) -> None:
    # Run from an empty folder with no interpreter on PATH but bash's own tools: --help must
    # exit before a set-up, a pip install, a launch or a folder is created.
    env = _env(DEMO_OUT="out", DEMO_DATA="data", STUDY_OUT="out", OUTPUT_DIR="out")
    for script in ALL_SH:
        for flag in ("--help", "-h"):
            proc = subprocess.run(["bash", str(ROOT / script), flag], cwd=str(tmp_path), env=env,
                                  capture_output=True, text=True, timeout=30)
            assert proc.returncode == 0, f"{script} {flag}: exit {proc.returncode}\n{proc.stderr}"
            assert proc.stderr == "", f"{script} {flag}: {proc.stderr}"
            assert proc.stdout.splitlines()[0] == _header_first_line(script), script
            assert "--job-name" not in proc.stdout, script  # slurm.sh's #SBATCH directives are not usage
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("script", ["sh/demo.sh", "sh/demo_seg.sh", next(r for r in RECIPES if _uses_launcher(r))])
def test_a_script_without_arguments_refuses_one_in_a_line(script: str, tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(ROOT / script), "--epochs", "5"], cwd=str(tmp_path), env=_env(),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and "takes no arguments (got: --epochs 5)" in proc.stderr
    if script in RECIPES:
        assert 'EXTRA_ARGS="--epochs 5"' in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_relative_demo_data_is_read_from_the_callers_directory(tmp_path: Path) -> None:
    # Checked before the set-up: the error names the folder under the caller's directory.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "train.txt").write_text("a.png 0\n")
    proc = subprocess.run(["bash", str(ROOT / "sh" / "demo.sh")], cwd=str(tmp_path), env=_env(DEMO_DATA="mine"),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: DEMO_DATA={tmp_path}/mine has no val.txt "
                                   "(expected train.txt, val.txt, test.txt)")
