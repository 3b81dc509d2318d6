"""sh/GPaCo/Seg recipes: every row of the README segmentation table (+ CE twins and eval
recipes) parses with the paper's hyperparameters. Their dry runs are in tests/test_recipes.py."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SEG = ROOT / "sh" / "GPaCo" / "Seg"
RECIPES = sorted(p.relative_to(ROOT).as_posix() for p in SEG.glob("*.sh"))
TRAIN = [r for r in RECIPES if not r.endswith("_eval.sh")]
EVAL = [r for r in RECIPES if r.endswith("_eval.sh")]
CLEAN = ("DATA_ROOT", "OUTPUT_DIR", "CHECKPOINT", "TRAIN_DIR", "PRETRAINED", "WORKERS", "SEED", "EXTRA_ARGS",
         "DRY_RUN", "GPACO_PRINT_ARGV", "GPACO_PRINT_CMD")


def argv_of(recipe: str, **env):
    e = {k: v for k, v in os.environ.items() if k not in CLEAN}
    e.update(env, GPACO_PRINT_ARGV="1")
    proc = subprocess.run(["bash", str(ROOT / recipe)], env=e, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    script = lines[0].split(" ", 1)[1]
    return script, json.loads(lines[1][len("GPACO_ARGV "):])


# (alpha, arch, dataset, iters, global batch, optimizer, lr, wd) per README row (docs/method.md#hyperparameters)
ROWS = {
    "upernet_swintiny_160k_ade20k": (0.01, "swin_t", "ade20k", 160000, 16, "adamw", 6e-5, 0.01),
    "upernet_swinbase_160k_ade20k": (0.01, "swin_b", "ade20k", 160000, 16, "adamw", 6e-5, 0.01),
    "upernet_swinlarge_160k_ade20k": (0.01, "swin_l", "ade20k", 160000, 16, "adamw", 6e-5, 0.01),
    "r50_deeplabv3plus_40k_coco10k": (0.01, "r50", "coco_stuff10k", 40000, 16, "sgd", 0.01, 5e-4),
    "r101_deeplabv3plus_40k_coco10k": (0.01, "r101", "coco_stuff10k", 40000, 16, "sgd", 0.01, 5e-4),
    "r50_deeplabv3plus_40k_context": (0.01, "r50", "pascal_context59", 40000, 16, "sgd", 0.004, 1e-4),
    "r101_deeplabv3plus_40k_context": (0.01, "r101", "pascal_context59", 40000, 16, "sgd", 0.004, 1e-4),
    "r18_deeplabv3plus_80k_cityscapes": (0.01, "r18", "cityscapes", 80000, 8, "sgd", 0.01, 5e-4),
    "r50_deeplabv3plus_80k_cityscapes": (0.03, "r50", "cityscapes", 80000, 8, "sgd", 0.01, 5e-4),
    "r101_deeplabv3plus_80k_cityscapes": (0.02, "r101", "cityscapes", 80000, 8, "sgd", 0.01, 5e-4),
}


def test_every_row_has_gpaco_ce_and_eval_recipes():
    names = {Path(r).stem for r in RECIPES}
    for row in ROWS:
        assert {f"{row}_paco", f"{row}_ce", f"{row}_paco_eval"} <= names, row
    paco11 = [r for r in RECIPES if r.endswith("_paco11.sh")]  # the original's ADE20K Lovasz ablations
    assert len(RECIPES) == 3 * len(ROWS) + len(paco11) and len(paco11) == 3


@pytest.mark.parametrize("size", ["tiny", "base", "large"])
def test_paco11_ablation_is_the_gpaco_run_plus_lovasz(size):
    from gpaco.segmentation.train import parse_train_args

    row = f"upernet_swin{size}_160k_ade20k"
    a = parse_train_args(argv_of(f"sh/GPaCo/Seg/{row}_paco11.sh")[1])
    b = parse_train_args(argv_of(f"sh/GPaCo/Seg/{row}_paco.sh")[1])
    assert (a.lovasz_weight, a.paco_weight, b.lovasz_weight) == (1.0, 1.0, 0.0)
    assert a.output_dir == f"runs/GPaCo/Seg/{row}_paco11"
    differ = {k for k in vars(a) if getattr(a, k) != getattr(b, k)}
    assert differ == {"lovasz_weight", "output_dir"}, differ


@pytest.mark.parametrize("row", sorted(ROWS))
@pytest.mark.parametrize("method", ["paco", "ce"])
def test_train_recipe_hyperparameters(row, method):
    from gpaco.segmentation.train import parse_train_args

    script, argv = argv_of(f"sh/GPaCo/Seg/{row}_{method}.sh")
    assert script == "tools/train_seg.py"
    a = parse_train_args(argv)
    alpha, arch, dataset, iters, batch, opt, lr, wd = ROWS[row]
    assert (a.arch, a.dataset, a.iters, a.batch_size, a.optimizer, a.lr, a.wd) == (arch, dataset, iters, batch, opt,
                                                                                   lr, wd)
    assert a.method == ("gpaco" if method == "paco" else "ce")
    assert a.aux_weight == 0.4 and a.resume == "auto" and a.output_dir == f"runs/GPaCo/Seg/{row}_{method}"
    assert tuple(a.ratio_range) == (0.5, 2.0) and a.cat_max_ratio == 0.75 and a.photometric
    if method == "paco":
        assert (a.alpha, a.temperature, a.num_pixels, a.embed_dim) == (alpha, 0.07, 8192, 128)
    if opt == "adamw":
        assert (a.power, a.min_lr, a.warmup_iters, a.warmup_ratio) == (1.0, 0.0, 1500, 1e-6)
        assert tuple(a.betas) == (0.9, 0.999)
        assert set(a.no_decay_keys.split(",")) == {"absolute_pos_embed", "relative_position_bias_table", "norm"}
    else:
        assert (a.power, a.min_lr, a.warmup_iters, a.momentum, a.no_decay_keys) == (0.9, 1e-4, 0, 0.9, "")
    # the original configs: ADE20K (160k) every 4000 iterations, the 40k/80k schedules every 4000/8000
    assert a.eval_interval == a.ckpt_interval == (4000 if dataset == "ade20k" else iters // 10)
    scale, crop = {"ade20k": ([2048, 512], [512, 512]), "coco_stuff10k": ([2048, 512], [512, 512]),
                   "pascal_context59": ([520, 520], [480, 480]), "cityscapes": ([2048, 1024], [512, 1024])}[dataset]
    assert a.img_scale == scale and a.crop_size == crop
    if dataset == "pascal_context59":
        assert (a.test_mode, a.test_crop, a.test_stride) == ("slide", [480, 480], [320, 320])
    else:
        assert a.test_mode == "whole"


@pytest.mark.parametrize("recipe", EVAL)
def test_eval_recipes(recipe):
    from gpaco.segmentation.evaluate import build_eval_parser

    script, argv = argv_of(recipe)
    assert script == "tools/eval_seg.py"
    a = build_eval_parser().parse_args(argv)
    row = Path(recipe).stem[: -len("_paco_eval")]
    assert a.checkpoint == f"runs/GPaCo/Seg/{row}_paco/checkpoint.pth"
    assert a.mode == "both" and a.ms_ratios == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75] and a.ms_flip
    assert a.dataset == ROWS[row][2] and a.split == "val"
    _, argv = argv_of(recipe, TRAIN_DIR="runs/GPaCo/Seg/x_ce")
    assert build_eval_parser().parse_args(argv).checkpoint == "runs/GPaCo/Seg/x_ce/checkpoint.pth"


def test_pretrained_flag_default_and_off():
    _, argv = argv_of("sh/GPaCo/Seg/r50_deeplabv3plus_40k_coco10k_paco.sh")
    assert argv[argv.index("--pretrained") + 1] == "pretrained/resnet50_v1c.pth"  # open-mmlab://resnet50_v1c, mmcv names
    _, argv = argv_of("sh/GPaCo/Seg/r50_deeplabv3plus_40k_coco10k_paco.sh", PRETRAINED="")
    assert "--pretrained" not in argv
