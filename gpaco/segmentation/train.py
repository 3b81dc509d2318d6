"""tools/train_seg.py: flags -> :class:`~gpaco.segmentation.task.SegmentationTask` -> :func:`~gpaco.engine.fit.fit`.

Iteration-based semantic segmentation training (CE, pixel GPaCo, CeCo, RR). ``tools/eval_seg.py``
runs :func:`gpaco.segmentation.evaluate.main`. Both work as one process (CPU or one GPU) or
one process per GPU under ``torchrun`` (``--batch-size`` is the global batch). The run
(resume, atomic saves, SIGTERM/SIGUSR1 preemption, ``--nan-policy``, logs, the loop with
gradient accumulation and clipping) is the engine's, shared with classification; the model,
loss and training step are the method's.

* Loss: the method's criterion (:class:`gpaco.losses.pixel.SegmentationLoss`, CeCo's, RR's;
  docs/method.md). Methods with ``needs_class_counts`` get the image-level class counts of
  ``--class-counts`` or of the training masks (written to ``OUTPUT_DIR/class_counts.txt``).
* Schedule: mmcv's poly (the ``poly`` row of :data:`gpaco.engine.schedule.SCHEDULES`).
* Per-GPU statistics: the main network runs SyncBatchNorm under torchrun on CUDA (one global
  batch, as mmseg's SyncBN); CeCo's ``--device-batch N`` computes its branch's BatchNorm and
  class centres per virtual device of N images, as the original's per-GPU ones, so a run
  trains the same on any number of GPUs dividing ``--batch-size / N``.
* Resume is exact at any iteration (:mod:`gpaco.segmentation.task`).
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from gpaco.data.seg_datasets import SEG_DATASETS
from gpaco.engine.args import (
    FlagError, HelpFormatter, add_run_flags, check_positive, clamp_workers, parse_with_config, validate_run_args,
)
from gpaco.engine.cli import add_debug_flag, run_cli
from gpaco.engine.fit import fit
from gpaco.methods import add_method_flags, flag_problem, get_method, method_names
from gpaco.models.seg import SEG_ARCHS, seg_arch
from gpaco.segmentation.inference import MS_RATIOS
from gpaco.segmentation.task import SegmentationTask, optimizer_of, train_datasets

__all__ = ["build_train_parser", "parse_train_args", "run", "main", "cli", "add_seg_data_flags",
           "add_seg_test_flags", "DEFAULT_NO_DECAY", "optimizer_of", "train_datasets"]

TASK = "segmentation"
DEFAULT_NO_DECAY = ("absolute_pos_embed", "relative_position_bias_table", "norm")


# --------------------------------------------------------------------------- flags


def add_seg_data_flags(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="demo", choices=sorted(SEG_DATASETS),
                   help="dataset layout under --data-root (docs/data.md#layouts); demo: the MNIST digit "
                        "scenes of tools/prepare_data.py demo_seg")
    g.add_argument("--data-root", default="data/demo_seg", help="the dataset's folder (images and masks)")
    g.add_argument("--img-scale", type=int, nargs=2, default=None, metavar=("W", "H"),
                   help="train rescale / test resize scale (default per dataset, e.g. 2048 512 for ADE20K)")
    g.add_argument("--workers", "-j", type=int, default=4,
                   help="data loader worker processes per process (0: load in the main process)")
    return g


def add_seg_test_flags(p: argparse.ArgumentParser, *, multi_scale: bool = True) -> None:
    g = p.add_argument_group("test-time")
    g.add_argument("--test-mode", default=None, choices=("whole", "slide"),
                   help="default per dataset (Pascal-Context-59: slide)")
    g.add_argument("--test-crop", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="window of --test-mode slide (default per dataset, else the training crop)")
    g.add_argument("--test-stride", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="stride of --test-mode slide (default per dataset, else 2/3 of the window)")
    if multi_scale:
        g.add_argument("--ms-ratios", type=float, nargs="+", default=list(MS_RATIOS),
                       help="multi-scale ratios of the 'ms' evaluation (with flip)")


def build_train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/train_seg.py", formatter_class=HelpFormatter,
                                description="Train a segmentation model (CE, GPaCo, CeCo, RR), "
                                "iteration-based, on one process or under torchrun.")
    g = add_seg_data_flags(p)
    g.add_argument("--crop-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="random training crop (default per dataset, e.g. 512 512 for ADE20K)")
    g.add_argument("--ratio-range", type=float, nargs=2, default=(0.5, 2.0), metavar=("MIN", "MAX"),
                   help="random rescale of --img-scale before the crop")
    g.add_argument("--cat-max-ratio", type=float, default=0.75,
                   help="re-draw a crop (up to 10 times) where one class covers more than this fraction")
    g.add_argument("--flip-prob", type=float, default=0.5, help="horizontal flip probability")
    g.add_argument("--photometric", action=argparse.BooleanOptionalAction, default=True,
                   help="mmseg's photometric distortion (brightness, contrast, saturation, hue)")
    g.add_argument("--val-split", default="val", help="split evaluated every --eval-interval (best.pth)")
    g.add_argument("--test-split", default=None, help="split of the final report (default: --val-split)")
    g = p.add_argument_group("model")
    g.add_argument("--arch", default="r50", help=f"the paper's networks: {', '.join(sorted(SEG_ARCHS))} (mmseg's "
                   f"DeepLabV3+ / UPerNet); or smp:<deeplabv3plus|upernet>:<smp encoder> for your own")
    g.add_argument("--encoder", default=None, help="another smp encoder for an smp:... arch")
    g.add_argument("--method", default="gpaco", choices=method_names(TASK),
                   help="segmentation method (gpaco.methods registry)")
    g.add_argument("--pretrained", default=None, help="local encoder weights file (nothing is downloaded)")
    g.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=True,
                   help="SyncBatchNorm under torchrun on CUDA (CPU runs keep plain BN)")
    g.add_argument("--amp", default="none", choices=("none", "fp16", "bf16"),
                   help="autocast dtype (fp16 uses a GradScaler). On a CPU without AVX-512/AMX both are "
                        "emulated and slower than none")
    add_method_flags(p, TASK, "method options (loss and model)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--iters", type=int, default=40000, help="training iterations (optimizer steps)")
    g.add_argument("--batch-size", "-b", type=int, default=16, help="GLOBAL batch over all processes")
    g.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"),
                   help="sgd (DeepLabV3+ recipes) or adamw (Swin/UPerNet recipes)")
    g.add_argument("--lr", type=float, default=0.01, help="learning rate at iteration 0 (poly decay)")
    g.add_argument("--wd", type=float, default=5e-4, help="weight decay, >= 0")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum, in [0, 1)")
    g.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.999), metavar=("B1", "B2"),
                   help="AdamW betas")
    g.add_argument("--power", type=float, default=0.9, help="poly power")
    g.add_argument("--min-lr", type=float, default=1e-4, help="floor of the poly schedule")
    g.add_argument("--warmup-iters", type=int, default=0, help="iterations of linear LR warmup")
    g.add_argument("--warmup-ratio", type=float, default=1e-6,
                   help="the warmup starts from this fraction of --lr")
    g.add_argument("--accum-iter", type=int, default=1,
                   help="micro-batches per optimizer step (gradient accumulation); each counts as one of --iters")
    g.add_argument("--clip-grad", type=float, default=None, help="clip the gradient norm to this value (default: off)")
    g.add_argument("--no-decay-keys", default=None,
                   help="comma-separated name parts without weight decay (default: adamw "
                        "'absolute_pos_embed,relative_position_bias_table,norm', sgd none)")
    add_seg_test_flags(p, multi_scale=False)  # training evaluates single-scale; tools/eval_seg.py does both
    g = add_run_flags(p, print_freq=50)
    g.add_argument("--eval-interval", type=int, default=None, help="iterations between val evaluations "
                   "(default iters/10; 0: only at the end)")
    g.add_argument("--ckpt-interval", type=int, default=None, help="iterations between checkpoints "
                   "(default iters/10)")
    g.add_argument("--stop-after", type=int, default=None, metavar="ITERS",
                   help="leave after this many iterations of this run with a checkpoint, as if preempted")
    g.add_argument("--dry-run", action="store_true", help="build everything (synthetic data when --data-root "
                   "is absent), two small iterations and one small evaluation; write nothing")
    g.add_argument("--dry-run-crop", type=int, default=64, help="crop size of the --dry-run iterations")
    g.add_argument("--dry-run-batch", type=int, default=2, help="per-process batch of the --dry-run iterations")
    add_debug_flag(p)
    return p


def parse_train_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = parse_with_config(build_train_parser(), argv)
    info = SEG_DATASETS[args.dataset]
    args.img_scale = list(args.img_scale or info.img_scale)
    args.crop_size = list(args.crop_size or info.crop_size)
    args.test_mode = args.test_mode or info.test_mode
    args.test_crop = list(args.test_crop or info.test_crop or args.crop_size)
    args.test_stride = list(args.test_stride or info.test_stride or [max(c * 2 // 3, 1) for c in args.test_crop])
    args.test_split = args.test_split or args.val_split
    if args.no_decay_keys is None:
        args.no_decay_keys = ",".join(DEFAULT_NO_DECAY) if args.optimizer == "adamw" else ""
    check_positive(args, ("iters", "batch_size", "lr", "accum_iter"))
    if args.clip_grad is not None and args.clip_grad <= 0:
        raise FlagError(f"--clip-grad is the maximum gradient norm and must be > 0 (leave the flag out for no "
                        f"clipping), got {args.clip_grad}")
    validate_run_args(args)
    if not 0.0 <= args.momentum < 1.0:
        raise FlagError(f"--momentum must be in [0, 1), got {args.momentum}")
    if args.wd < 0:
        raise FlagError(f"--wd must be >= 0, got {args.wd}")
    clamp_workers(args)
    problem = flag_problem(get_method(args.method, TASK), vars(args))
    if problem:
        raise FlagError(problem)
    try:
        seg_arch(args.arch)
    except ValueError as e:
        raise FlagError(f"--arch: {e}") from None
    # Checkpoints, evaluations and the run's end fall on optimizer steps: a checkpoint in the
    # middle of an accumulation cycle would lose the cycle's gradient, and a resume would differ.
    k = args.accum_iter
    if args.eval_interval is None:
        args.eval_interval = max(args.iters // 10 // k * k, k)
    if args.ckpt_interval is None:
        args.ckpt_interval = max(args.iters // 10 // k * k, k)
    for name in ("iters", "eval_interval", "ckpt_interval", "stop_after"):
        value = getattr(args, name)
        if value and value % k:
            raise FlagError(f"--{name.replace('_', '-')} {value} must be a multiple of --accum-iter {k} (checkpoints, "
                            f"evaluations and the end fall on optimizer steps)")
    return args


# --------------------------------------------------------------------------- training


def run(args: argparse.Namespace) -> dict:
    return fit(SegmentationTask(args))


def main(argv: Optional[Sequence[str]] = None) -> dict:
    return run(parse_train_args(argv))


def cli(argv: Optional[Sequence[str]] = None) -> None:
    """tools/train_seg.py under the one error contract (gpaco.engine.cli)."""
    run_cli(main, argv)
