"""Command-line flags of tools/train.py and tools/eval.py (classification).

The sh/ recipe is the config: every hyperparameter is a flag, the resolved values are
written to ``args.yaml`` in the run folder. Booleans use ``BooleanOptionalAction`` so
they can be switched off (the original's ``type=bool`` flags could not). ``--method``
choices and the methods' own flags (``--alpha``, ``--queue-size``...) come from the
registry (:mod:`gpaco.methods`).
"""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

from gpaco.data.build import is_cifar, is_folder, is_label_free
from gpaco.data.folder import DEFAULT_SPLIT_SEED
from gpaco.data.gpu_aug import GPU_AUG_STRATEGIES
from gpaco.data.transforms import NORMALIZATION, SINGLE_VIEW_STRATEGIES, TWO_VIEW_STRATEGIES
from gpaco.engine.args import (
    MAX_WORKERS_PER_CPU, FlagError, HelpFormatter, add_run_flags, check_finite, check_positive, clamp_workers,
    cpu_count, parse_with_config, validate_run_args,
)
from gpaco.engine.cli import add_debug_flag
from gpaco.methods import add_method_flags, flag_problem, get_method, method_names

TASK = "classification"
DEFAULT_WARMUP_EPOCHS = 10
#: ``--select-metric`` choices: keys of the evaluation's metrics (the first is the default).
SELECT_METRICS = ("mean_class_acc", "top1")
#: ``--workers`` when left out (capped by the cores per training process, :func:`default_workers`).
DEFAULT_WORKERS = 4
#: Training images at most this size are "small" for the augmentation warning.
SMALL_IMAGE_SIZE = 64
#: Augmentation components made for 224-px ImageNet images: what each does that a small image does not survive.
IMAGENET_SIZED_VIEWS = {
    "randcls": "crops down to 8 % of the area, RandAugment",
    "randcls06": "RandAugment",
    "randclsstack": "crops down to 8 % of the area, RandAugment, a blur of up to 2 px",
    "randclsgray": "crops down to 8 % of the area, RandAugment",
    "sim": "crops down to 8 % of the area, a blur of up to 2 px",
    "sim02": "a blur of up to 2 px",
    "mocov2": "a blur of up to 2 px",
    "timm_randaug": "crops down to 8 % of the area, RandAugment",
}


def print_warning(message: str) -> None:
    """``warning: message`` on stdout, once (rank 0: flags are parsed before the process group exists)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"warning: {message}", flush=True)


def train_data_kwargs(args: argparse.Namespace, *, synthetic: bool = False) -> dict:
    """gpaco.data.build.build_train_dataset keywords of the flags."""
    return dict(dataset=args.dataset, data_root=args.data_root, train_list=args.train_list, aug=args.aug,
                image_size=args.image_size, norm=args.norm, num_classes=args.num_classes, imb_factor=args.imb_factor,
                randaug_n=args.randaug_n, randaug_m=args.randaug_m, allow_outside_root=args.allow_outside_root,
                skip_bad_images=args.skip_bad_images, follow_symlinks=args.follow_symlinks, synthetic=synthetic,
                gpu_aug=getattr(args, "gpu_aug", False), epoch_iters=getattr(args, "epoch_iters", None),
                split_seed=getattr(args, "split_seed", DEFAULT_SPLIT_SEED))


def eval_data_kwargs(args: argparse.Namespace, *, num_classes: int, synthetic: bool = False) -> dict:
    """gpaco.data.build.build_eval_dataset keywords of the flags."""
    return dict(dataset=args.dataset, data_root=args.data_root, num_classes=num_classes, image_size=args.image_size,
                norm=args.norm, resize_size=args.resize_size, interpolation=args.interpolation,
                allow_outside_root=args.allow_outside_root, skip_bad_images=args.skip_bad_images,
                follow_symlinks=args.follow_symlinks, synthetic=synthetic, reduced_decode=args.reduced_jpeg_decode,
                split_seed=getattr(args, "split_seed", DEFAULT_SPLIT_SEED))


def add_data_flags(p: argparse.ArgumentParser, *, train: bool = False) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="split", choices=("split", "folder", "cifar100", "cifar10", "webdataset"),
                   help="split: image files named by split lists (ImageNet-LT, iNat, Places-LT, ImageNet, demo; "
                        "tools/make_lists.py writes them for a tree of class folders); folder: a tree of class "
                        "folders, --data-root/<class>/<image>, split into train/val/test at start-up as "
                        "tools/make_lists.py splits it (--split-seed); cifar100/cifar10: the CIFAR python pickles "
                        "under --data-root; webdataset: label-free training images in tar shards (CC3M; pip "
                        "install 'gpaco[webdataset]'), --train-list names them, val/test are split lists")
    g.add_argument("--data-root", default="data", help="folder the split lists' paths are relative to (--dataset "
                                                      "folder: the tree of class folders)")
    g.add_argument("--split-seed", type=int, default=DEFAULT_SPLIT_SEED,
                   help="--dataset folder: the seed of its train/val/test split (tools/make_lists.py --seed); "
                        "not --seed, so that runs of several seeds share one split")
    g.add_argument("--train-list", default=None, help="split file: one 'relative/path label' per line; --dataset "
                                                      "webdataset: the shard files, relative to --data-root or "
                                                      "absolute, with braces and wildcards "
                                                      "(cc3m-train-{000000..000575}.tar)")
    if train:
        g.add_argument("--epoch-iters", type=int, default=None, metavar="STEPS",
                       help="--dataset webdataset: training steps per epoch (the shards are a stream with no "
                            "epoch of their own; the original CC3M runs: 5501 steps of 64 images per GPU)")
    g.add_argument("--val-list", default=None, help="selection split (best.pth is chosen on it)")
    g.add_argument("--test-list", default=None, help="final report split (metrics.json)")
    g.add_argument("--num-classes", type=int, default=None,
                   help="class count (default: the data's: the class folders, classes.txt beside the lists, or the "
                        "train list's labels); a value that differs from the data's is an error (a warning in a "
                        "dry run)")
    g.add_argument("--imb-factor", type=float, default=0.01, help="CIFAR-LT imbalance factor (0.01 = ratio 100)")
    g.add_argument("--image-size", type=int, default=224, help="training crop / evaluation crop size")
    g.add_argument("--resize-size", type=int, default=None, help="evaluation resize before the center crop, >= "
                                                                  "--image-size (default: image-size / 0.875)")
    g.add_argument("--norm", default="imagenet", choices=tuple(NORMALIZATION),
                   help="normalisation statistics (none: the model sees pixels in [0, 1], as adversarial training "
                        "needs)")
    g.add_argument("--interpolation", default="bilinear", choices=("bilinear", "bicubic"),
                   help="resize interpolation of the evaluation transform (ResNets: bilinear; MAE ViTs: bicubic)")
    g.add_argument("--reduced-jpeg-decode", action="store_true",
                   help="evaluation only: decode JPEGs at 1/2, 1/4 or 1/8 size (libjpeg draft, both sides kept "
                        ">= the resize) before the evaluation resize. Several times faster on large images, but "
                        "it CHANGES THE PIXELS (another downsampling filter), so accuracies can differ from the "
                        "standard full decode that published numbers use")
    g.add_argument("--workers", "-j", type=int, default=None,
                   help=f"data loader worker processes per process (0: load in the main process; at most "
                        f"{MAX_WORKERS_PER_CPU} x the CPU count; default {DEFAULT_WORKERS}, or this node's CPU cores "
                        f"per training process when fewer)")
    g.add_argument("--allow-outside-root", action="store_true",
                   help="accept split lines whose paths leave --data-root (absolute, '..' or symbolic links)")
    g.add_argument("--follow-symlinks", action="store_true",
                   help="accept images whose symbolic links lead out of --data-root (otherwise refused: a link "
                        "can silently swap in files from elsewhere)")
    g.add_argument("--skip-bad-images", action="store_true",
                   help="skip and count unreadable images instead of stopping")


def add_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--arch", "-a", default="resnet50", help="resnet50/101/152/200, resnext50_32x4d, "
                   "resnext101_32x4d, resnet32/resnet20/resnet8 (CIFAR), resnet50_cifar, mae_vit_base_patch16, "
                   "mae_vit_large_patch16 (MAE fine-tuning ViTs: avg pool + fc_norm), kd_resnet8x4 ... kd_mobilenetv1 "
                   "(the distillation zoo, gpaco.models.kd_zoo), wrn34_10, wrn28_10 (adversarial training's "
                   "WideResNets, gpaco.models.wideresnet; use --norm none), any timm name")
    g.add_argument("--method", default="gpaco", choices=method_names(TASK),
                   help="training method (gpaco.methods registry; docs/recipes.md#methods)")
    g.add_argument("--pretrained", default=None,
                   help="local weights file for the backbone (nothing is downloaded)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last (NHWC) memory format: the same maths in another memory order. Unset: on "
                        "where convolutions run faster that way -- the CPU, and CUDA GPUs of compute capability "
                        "8.0+ (7.0+ with --amp) -- off elsewhere")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the model (one graph for the CE, PaCo, GPaCo, multi-task and ViT steps, "
                        "--device-batch included)")
    g.add_argument("--amp", default="none", choices=("none", "fp16", "bf16"),
                   help="autocast dtype (fp16 uses a GradScaler); the losses run in float32 regardless. On a CPU "
                        "without AVX-512/AMX both are emulated and slower than none")


def build_train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tools/train.py", formatter_class=HelpFormatter,
        description="Train a long-tailed classifier with CE, balanced CE, PaCo, GPaCo or the multi-task baseline. "
                    "Runs as one process (CPU or one GPU) or under torchrun.",
    )
    add_data_flags(p, train=True)
    add_model_flags(p)
    g = p.add_argument_group("augmentation and regularisation")
    g.add_argument("--aug", default=None, help=f"augmentation strategy by the original's names; two views: "
                   f"{', '.join(TWO_VIEW_STRATEGIES)}; one view: {', '.join(SINGLE_VIEW_STRATEGIES)} "
                   f"(default: the method's; CIFAR: the method's CIFAR strategy)")
    g.add_argument("--randaug-n", type=int, default=2, help="RandAugment: operations per image")
    g.add_argument("--randaug-m", type=int, default=10, help="RandAugment: magnitude (0..10)")
    g.add_argument("--gpu-aug", action="store_true",
                   help="loader workers only decode and crop; flip, colour jitter, grayscale, blur and RandAugment "
                        f"run batched on the device (--aug {', '.join(GPU_AUG_STRATEGIES)}; docs/benchmarks.md#gpu-aug)")
    g.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (> 0 enables; CE baselines only)")
    g.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (> 0 enables; CE baselines only)")
    g.add_argument("--mixup-prob", type=float, default=1.0, help="probability of mixing a batch")
    g.add_argument("--mixup-switch-prob", type=float, default=0.5,
                   help="probability of cutmix instead of mixup when both are on")
    g.add_argument("--reprob", type=float, default=0.0,
                   help="random erasing probability per image (timm RandomErasing, applied to every view)")
    g.add_argument("--remode", default="pixel", choices=("pixel", "rand", "const"), help="random erasing fill")
    g.add_argument("--recount", type=int, default=1, help="random erasing boxes per image")

    add_method_flags(p, TASK, "method options (loss and model)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=400, help="training epochs (the schedule's length)")
    g.add_argument("--batch-size", "-b", type=int, default=128,
                   help="GLOBAL batch over all processes per forward (micro-batch); one optimizer step "
                        "sees batch-size x accum-iter images")
    g.add_argument("--device-batch", type=int, default=None, metavar="N",
                   help="per-GPU batch of the original run: BatchNorm statistics, the in-batch contrast set, "
                        "shuffle-BN and mixup work over groups of exactly N samples whatever the number of "
                        "processes, so a recipe trains the same statistics on any GPU count (it must divide "
                        "--batch-size / processes). Default: per process, which depends on the GPU count "
                        "(docs/recipes.md#same-statistics-on-any-gpu-count)")
    g.add_argument("--bn-device-batch", type=int, default=None, metavar="N",
                   help="per-GPU batch of an original that ran DataParallel: training-mode BatchNorm normalises "
                        "each group of N samples separately (running statistics from the first group, as "
                        "DataParallel keeps replica 0's), while mixup, the contrast set and the loss see the whole "
                        "per-process batch (it must divide --batch-size / processes; not with --device-batch, "
                        "which groups all of them)")
    g.add_argument("--accum-iter", type=int, default=1,
                   help="gradient accumulation: micro-batches per optimizer step (the queue is still "
                        "updated every micro-batch, as the original)")
    g.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"),
                   help="sgd: one group, weight decay on everything (ResNet recipes); adamw: no weight "
                        "decay on biases, norms, pos/cls tokens (MAE fine-tuning)")
    g.add_argument("--lr", type=float, default=0.02, help="learning rate for the global batch (no rescaling)")
    g.add_argument("--blr", type=float, default=None,
                   help="base LR: if given, lr = blr * batch-size * accum-iter / 256 (overrides --lr)")
    g.add_argument("--min-lr", type=float, default=1e-6, help="floor of the mae_cosine schedule")
    g.add_argument("--layer-decay", type=float, default=None,
                   help="layer-wise LR decay of a ViT (MAE: 0.65 ViT-B, 0.75 ViT-L); default off")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum, in [0, 1)")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=False,
                   help="Nesterov momentum for SGD (ResLT's CIFAR recipes, as its original)")
    g.add_argument("--wd", type=float, default=5e-4, help="weight decay, >= 0 (sgd: all parameters, as the original)")
    g.add_argument("--clip-grad", type=float, default=None, metavar="MAX_NORM",
                   help="clip the gradient norm to MAX_NORM > 0 (default: off)")
    g.add_argument("--drop-path", type=float, default=0.0, help="stochastic depth rate (timm backbones)")
    g.add_argument("--schedule", "--sched", default="cosine",
                   choices=("cosine", "cosine_epoch", "step_cifar", "mae_cosine", "cosine_plain", "step", "cosine_min",
                            "constant", "gendd_step", "gendd_cosine", "mae_cosine_epoch"),
                   help="cosine (= cosine_epoch): per-epoch warmup + off-by-one cosine; step_cifar: the CIFAR "
                        "warmup + steps at 320/360; mae_cosine: per-iteration warmup + half-cycle cosine to "
                        "--min-lr (MAE fine-tuning); cosine_plain: lr/2 (1 + cos(pi e / E)), no warmup (ResLT "
                        "iNat, MiSLAS); step: warmup from --warmup-start x lr, x0.1 at each of --milestones "
                        "(ResLT, MiSLAS CIFAR); cosine_min: warmup + cosine to lr x 1e-5 (ResCom); constant; "
                        "gendd_step: GenDD CIFAR, warmup lr e/W then (W-1)/W x lr until the first of --milestones "
                        "(the original's plateau; step is the intended one); gendd_cosine: warmup + cosine to "
                        "--min-lr reached at the last epoch (GenDD ImageNet); mae_cosine_epoch: mae_cosine set once "
                        "per epoch (docs/method.md#learning-rate-schedules)")
    g.add_argument("--warmup-epochs", type=int, default=None,
                   help=f"LR warmup epochs (default {DEFAULT_WARMUP_EPOCHS}, shortened with a note when --epochs "
                        f"is shorter; a value you give that does not fit --epochs is an error)")
    g.add_argument("--milestones", type=int, nargs="+", default=[160, 180], metavar="EPOCH",
                   help="--schedule step: epochs (0-based) from which the LR is x0.1 more")
    g.add_argument("--warmup-start", type=float, default=0.0,
                   help="--schedule step: the first warmup epoch starts from this fraction of --lr "
                        "(ResLT CIFAR 1/3, MiSLAS 0)")
    g.add_argument("--finetune", default=None, metavar="PATH",
                   help="local MAE pre-training checkpoint ({'model': ...}) for a ViT backbone: the head is "
                        "dropped, pos_embed resampled, the rest loaded non-strictly; the class centers start "
                        "from trunc-normal(2e-5). Ignored when resuming")
    g.add_argument("--freeze", default="none", choices=("none", "all_but_last_block"),
                   help="all_but_last_block: Places-LT fine-tuning (convs frozen except the last bottleneck)")

    g = add_run_flags(p, print_freq=20)
    g.add_argument("--stop-after", type=int, default=None, metavar="EPOCHS",
                   help="leave after this many epochs of this run with a checkpoint, as if preempted; the "
                        "schedule still follows --epochs and --resume auto continues")
    g.add_argument("--eval-freq", type=int, default=1, help="epochs between validations")
    g.add_argument("--select-metric", default=None, choices=SELECT_METRICS,
                   help="what best.pth is chosen on over the val split: mean_class_acc (mean per-class accuracy, "
                        "the default; equal to top1 on a balanced val split, so the paper recipes' choice is "
                        "unchanged) or top1 (accuracy over all val images, which a head class dominates on "
                        "imbalanced val data). A resumed run keeps its own")
    g.add_argument("--dry-run", action="store_true",
                   help="check the configuration, build data (synthetic when --data-root is absent), model, "
                        "loss and optimizer, run two small steps, write nothing")
    g.add_argument("--dry-run-batch", type=int, default=4, help="per-process batch of the --dry-run steps")
    g.add_argument("--dry-run-image-size", type=int, default=64, help="image size of the --dry-run steps")
    add_debug_flag(p)
    return p


def parse_train_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = parse_with_config(build_train_parser(), argv)
    validate_train_args(args)
    return args


_POSITIVE_INTS = ("batch_size", "device_batch", "bn_device_batch", "epochs", "accum_iter", "image_size", "eval_freq",
                  "dry_run_batch", "dry_run_image_size", "recount", "num_classes", "stop_after", "resize_size",
                  "epoch_iters")
_NON_NEGATIVE_INTS = ("workers", "warmup_epochs", "randaug_n", "randaug_m", "proj_dim")
#: Run flags that must be finite (method flags check themselves: gpaco.methods.base.Flag).
_FLOATS = ("imb_factor", "lr", "blr", "min_lr", "layer_decay", "momentum", "wd", "clip_grad", "drop_path",
           "mixup", "cutmix", "mixup_prob", "mixup_switch_prob", "reprob", "warmup_start")


def validate_common_args(args: argparse.Namespace) -> None:
    """Range checks shared by tools/train.py and tools/eval.py: finite floats, positive sizes."""
    check_finite(args, _FLOATS)
    check_positive(args, _POSITIVE_INTS)
    check_positive(args, _NON_NEGATIVE_INTS, allow_zero=True)
    validate_run_args(args)
    imb = getattr(args, "imb_factor", None)
    if imb is not None and not 0.0 < imb <= 1.0:
        raise FlagError(f"--imb-factor must be in (0, 1] (0.01 = imbalance ratio 100), got {imb}")
    image_size, resize_size = getattr(args, "image_size", None), getattr(args, "resize_size", None)
    if image_size is not None and resize_size is not None and resize_size < image_size:
        raise FlagError(f"--resize-size ({resize_size}) must be >= --image-size ({image_size}): the evaluation "
                        f"resizes, then center-crops --image-size")
    arch = getattr(args, "arch", None)
    if isinstance(arch, str):
        check_arch(arch)
    if getattr(args, "workers", 0) is None:
        args.workers = default_workers()
    clamp_workers(args)


def check_arch(arch: str) -> None:
    """An ``--arch`` neither we nor timm know is a flag error (not a ValueError at model build)."""
    from gpaco.models.backbones import known_arch, list_archs

    if not known_arch(arch):
        raise FlagError(f"unknown --arch {arch!r}; ours: {', '.join(list_archs())}, the MAE ViTs "
                        f"mae_vit_base_patch16 / mae_vit_large_patch16, or any timm model name")


def check_layer_decay_arch(arch) -> None:
    """--layer-decay scales the LR per ViT block: refuse it now for our archs, all CNNs, instead
    of a traceback when the optimizer is built. Other timm names are only known once built."""
    from gpaco.models.backbones import CIFAR_ARCHS, KD_ARCHS, TIMM_ARCHS, WRN_ARCHS
    from gpaco.models.vit import is_vit

    ours = {**CIFAR_ARCHS, **TIMM_ARCHS, **KD_ARCHS, **WRN_ARCHS}
    if isinstance(arch, str) and not is_vit(arch) and arch.split(".")[0] in ours:
        raise FlagError(f"--layer-decay is for ViT archs (layer-wise LR decay over the transformer blocks, e.g. "
                        f"--arch mae_vit_base_patch16); --arch {arch} is not a ViT (leave --layer-decay out)")


def check_method_flags(args: argparse.Namespace, task: str = TASK) -> None:
    """The method flags of ``args``: none owned only by other methods is set (``--single-view``
    with ``--method ce``), each value is in its flag's range, and the method's own check."""
    problem = flag_problem(get_method(args.method, task), vars(args))
    if problem:
        raise FlagError(problem)


#: The schedules with a linear warm-up: how many of the first epochs ``--warmup-epochs W`` covers
#: (step_cifar warms up through epoch W itself, cosine_min reaches the full rate at epoch W - 1).
WARMUP_EPOCHS_COVERED = {"cosine": lambda w: w, "step": lambda w: w, "gendd_step": lambda w: w,
                         "step_cifar": lambda w: w + 1, "cosine_min": lambda w: w - 1, "gendd_cosine": lambda w: w,
                         "mae_cosine": lambda w: w, "mae_cosine_epoch": lambda w: w}
#: Schedules whose warm-up must end before the last epoch (they divide by ``--epochs`` minus it).
_WARMUP_BELOW_EPOCHS = ("mae_cosine", "cosine_min", "gendd_cosine", "mae_cosine_epoch")


def default_warmup_epochs(epochs: int, schedule: str) -> int:
    """``--warmup-epochs`` left out: :data:`DEFAULT_WARMUP_EPOCHS`, or a third of a shorter run (rounded
    down), so that most of the run decays from the peak rate (a warm-up shortened only to fit gave a
    5-epoch run 5 epochs of rising rate, and a new user's GPaCo on 455 images stayed at chance).
    A 1-epoch run cannot decay: 1 where the schedule allows it (its epoch at ``--lr``), else 0;
    step_cifar and gendd_step need at least 1."""
    if schedule in ("step_cifar", "gendd_step"):
        return max(1, min(DEFAULT_WARMUP_EPOCHS, epochs // 3))
    if epochs == 1 and schedule not in _WARMUP_BELOW_EPOCHS:
        return 1
    return min(DEFAULT_WARMUP_EPOCHS, epochs // 3)


def resolve_warmup(args: argparse.Namespace) -> None:
    """``--warmup-epochs`` left out: :func:`default_warmup_epochs` (a note when shortened); a value the
    user gave is kept as is (and checked against ``--epochs``). Either way, a warm-up that covers the
    whole run (the rate only rises, to ``--lr`` at the end) gets a warning."""
    if args.warmup_epochs is None and args.schedule in WARMUP_EPOCHS_COVERED:
        args.warmup_epochs = default_warmup_epochs(args.epochs, args.schedule)
        if args.warmup_epochs != DEFAULT_WARMUP_EPOCHS and os.environ.get("RANK", "0") == "0":
            print(f"note: --warmup-epochs {args.warmup_epochs} (the default {DEFAULT_WARMUP_EPOCHS} shortened to fit "
                  f"--epochs {args.epochs}; pass --warmup-epochs to choose)", flush=True)
    elif args.warmup_epochs is None:
        args.warmup_epochs = DEFAULT_WARMUP_EPOCHS  # read by no schedule of the run
    covered = WARMUP_EPOCHS_COVERED.get(args.schedule)
    if covered is not None and args.epochs > 1 and covered(args.warmup_epochs) >= args.epochs:
        print_warning(f"--warmup-epochs {args.warmup_epochs} covers all --epochs {args.epochs} of --schedule "
                      f"{args.schedule}: the learning rate only rises and never decays; pass --warmup-epochs below "
                      f"{args.epochs} (e.g. 1 for a short run)")


def check_label_free(args: argparse.Namespace) -> None:
    """``--dataset webdataset``: unlabelled images (every label is -1), so the class count and
    the epoch length are flags, and the method must train without labels with these flags."""
    missing = [flag for flag, value in (("--num-classes", args.num_classes), ("--epoch-iters", args.epoch_iters))
               if value is None]
    if missing:
        raise FlagError(f"--dataset webdataset needs {' and '.join(missing)}: the shards' images have no labels "
                        f"(the class count is the teacher's) and no epoch (it is a number of steps; CC3M 5501)")
    if get_method(args.method).needs_labels(vars(args)):
        raise FlagError(f"--method {args.method} trains on labels with these flags, and --dataset webdataset has "
                        f"none (unlabelled shards); train label-free with --method gendd --gendd-label-free, or "
                        f"--method kl_kd --kd-ce-weight 0")
    if args.mixup > 0 or args.cutmix > 0:
        raise FlagError("--mixup/--cutmix mix the labels, and --dataset webdataset has none")
    if args.skip_bad_images:
        raise FlagError("--skip-bad-images is for split lists; --dataset webdataset stops at an image it cannot "
                        "decode, naming its shard")


def default_aug(args: argparse.Namespace, method) -> str:
    """``--aug`` left out: the method's strategy, its CIFAR one on CIFAR and on other images of at most
    :data:`SMALL_IMAGE_SIZE` px (with a note; not with ``--gpu-aug``, which runs the ImageNet ones): the
    ImageNet strategies' crops, RandAugment and blur are made for 224 px."""
    small = method.cifar_aug or "cifar_regular"
    if is_cifar(args.dataset):
        return small
    if args.image_size <= SMALL_IMAGE_SIZE and not getattr(args, "gpu_aug", False):  # --gpu-aug: ImageNet's only
        if os.environ.get("RANK", "0") == "0":
            print(f"note: --aug {small} (the method's strategy for small images, as on CIFAR: --image-size "
                  f"{args.image_size} <= {SMALL_IMAGE_SIZE}; pass --aug to choose)", flush=True)
        return small
    return method.default_aug or "randcls"


def check_dataset_lists(args: argparse.Namespace) -> None:
    """The split flags a ``--dataset`` needs: ``split``/``webdataset`` a ``--train-list`` (its error
    points at the class-folder ways in); ``folder`` none (it splits the tree itself)."""
    if is_folder(args.dataset):
        given = [f for f, v in (("--train-list", args.train_list), ("--val-list", args.val_list),
                                ("--test-list", args.test_list)) if v]
        if given:
            raise FlagError(f"--dataset folder splits the class folders of --data-root itself and takes no "
                            f"{'/'.join(given)}; to train on split lists (tools/make_lists.py writes them), use "
                            f"--dataset split")
        return
    if args.dataset == "split" and not args.train_list and not args.dry_run:
        raise FlagError("--train-list is required with --dataset split (a file of 'relative/path label' lines); "
                        "for a tree of class folders DIR/<class>/<image>, train with --dataset folder --data-root "
                        "DIR, or write the lists with tools/make_lists.py DIR (gpaco-make-lists; "
                        "docs/data.md#your-own-data)")
    if args.dataset == "webdataset" and not args.train_list and not args.dry_run:
        raise FlagError("--train-list is required with --dataset webdataset (the tar shards' pattern)")


def warn_small_image_aug(args: argparse.Namespace) -> None:
    """One warning when ``--aug`` has a view made for 224-px images and ``--image-size`` is small."""
    if args.image_size > SMALL_IMAGE_SIZE:
        return
    views = TWO_VIEW_STRATEGIES.get(args.aug, (args.aug,))
    found = [v for v in dict.fromkeys(views) if v in IMAGENET_SIZED_VIEWS]
    if not found:
        return
    what = "; ".join(f"{v}: {IMAGENET_SIZED_VIEWS[v]}" for v in found)
    instead = "--aug sim_cifar_sim_cifar (colour) or digits_digits (grey, no flips)" if args.aug in \
        TWO_VIEW_STRATEGIES else "--aug cifar_crop_flip (colour) or digits (grey, no flips)"
    print_warning(f"--aug {args.aug} is made for 224-px images ({what}) and --image-size is {args.image_size}: "
                  f"at that size they can wipe out what an image shows; for small images use {instead}")


def local_processes() -> int:
    """Training processes on this node: torchrun's LOCAL_WORLD_SIZE (1 without torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)


def default_workers() -> int:
    """``--workers`` left out: :data:`DEFAULT_WORKERS`, or fewer so that the loader workers of this
    node's training processes do not outnumber its cores (such a default never needs a warning)."""
    return min(DEFAULT_WORKERS, cpu_count() // local_processes())


def warn_workers(args: argparse.Namespace) -> None:
    """One warning when the loader workers of this node's processes outnumber its CPU cores."""
    if args.dry_run or not args.workers:  # a dry run loads in the main process
        return
    processes = local_processes()
    cores = cpu_count()
    if args.workers * processes <= cores:
        return
    per_process = f" for each of {processes} training processes" if processes > 1 else ""
    print_warning(f"--workers {args.workers} loader processes{per_process} on {cores} CPU core(s): they compete "
                  f"with training for the cores and slow it down; pass --workers {max(cores // processes, 0)} "
                  f"(or fewer; 0 loads in the main process)")


def validate_train_args(args: argparse.Namespace) -> None:
    validate_common_args(args)
    check_method_flags(args)
    method = get_method(args.method)
    if args.lr <= 0:
        raise FlagError(f"--lr must be > 0, got {args.lr}")
    if not 0.0 <= args.momentum < 1.0:
        raise FlagError(f"--momentum must be in [0, 1), got {args.momentum}")
    if args.nesterov and (args.optimizer != "sgd" or args.momentum == 0):
        raise FlagError(f"--nesterov is for --optimizer sgd with --momentum > 0 (got --optimizer {args.optimizer}, "
                        f"--momentum {args.momentum})")
    if args.wd < 0:
        raise FlagError(f"--wd must be >= 0, got {args.wd}")
    if args.device_batch is not None:
        if args.batch_size % args.device_batch:
            raise FlagError(f"--device-batch {args.device_batch} must divide --batch-size {args.batch_size}")
    if args.bn_device_batch is not None:
        if args.device_batch is not None:
            raise FlagError(f"--bn-device-batch {args.bn_device_batch} and --device-batch {args.device_batch}: pass "
                            f"one (--device-batch already groups BatchNorm, with the contrast set and mixup)")
        if args.batch_size % args.bn_device_batch:
            raise FlagError(f"--bn-device-batch {args.bn_device_batch} must divide --batch-size {args.batch_size}")
    if args.schedule == "cosine_epoch":
        args.schedule = "cosine"
    if args.blr is not None:
        if args.blr <= 0:
            raise FlagError(f"--blr must be > 0, got {args.blr}")
        args.lr = args.blr * args.batch_size * args.accum_iter / 256
    if args.layer_decay is not None and not 0.0 < args.layer_decay <= 1.0:
        raise FlagError(f"--layer-decay must be in (0, 1], got {args.layer_decay}")
    if args.layer_decay is not None:
        check_layer_decay_arch(getattr(args, "arch", None))
    if args.min_lr < 0:
        raise FlagError(f"--min-lr must be >= 0, got {args.min_lr}")
    resolve_warmup(args)
    if args.clip_grad is not None and args.clip_grad <= 0:
        raise FlagError(f"--clip-grad is the maximum gradient norm and must be > 0 (leave the flag out for no "
                        f"clipping), got {args.clip_grad}")
    if args.schedule == "cosine" and args.warmup_epochs > args.epochs:
        raise FlagError(f"--warmup-epochs ({args.warmup_epochs}) must be <= --epochs ({args.epochs})")
    if args.schedule == "cosine_min" and args.warmup_epochs >= args.epochs:
        raise FlagError(f"--schedule cosine_min needs --warmup-epochs ({args.warmup_epochs}) < --epochs ({args.epochs})")
    if args.schedule in ("step_cifar", "gendd_step") and args.warmup_epochs == 0:
        raise FlagError(f"--schedule {args.schedule} needs --warmup-epochs > 0")
    if args.schedule in ("gendd_cosine", "mae_cosine_epoch") and args.warmup_epochs >= args.epochs:
        raise FlagError(f"--schedule {args.schedule} needs --warmup-epochs ({args.warmup_epochs}) < --epochs "
                        f"({args.epochs})")
    if not 0.0 <= args.warmup_start <= 1.0:
        raise FlagError(f"--warmup-start must be in [0, 1], got {args.warmup_start}")
    if args.schedule in ("step", "gendd_step") and (any(m < 0 for m in args.milestones)
                                                     or args.milestones != sorted(args.milestones)):
        raise FlagError(f"--milestones must be ascending epochs >= 0, got {args.milestones}")
    if args.schedule == "mae_cosine" and args.warmup_epochs >= args.epochs:
        raise FlagError(f"--warmup-epochs ({args.warmup_epochs}) must be < --epochs ({args.epochs}) with "
                        f"--schedule mae_cosine")
    if not 0.0 <= args.drop_path < 1.0:
        raise FlagError(f"--drop-path must be in [0, 1), got {args.drop_path}")
    if args.mixup < 0 or args.cutmix < 0 or not 0.0 <= args.reprob <= 1.0:
        raise FlagError("--mixup and --cutmix must be >= 0 and --reprob in [0, 1]")
    if (args.mixup > 0 or args.cutmix > 0) and method.takes_labels:
        raise FlagError(f"--mixup/--cutmix mix the labels, which --method {args.method} needs unmixed; "
                        f"use them with --method ce (the MAE baseline)")
    check_dataset_lists(args)
    if is_label_free(args.dataset):
        check_label_free(args)
    elif args.epoch_iters is not None:
        raise FlagError(f"--epoch-iters is for --dataset webdataset (a stream of shards); an epoch of --dataset "
                        f"{args.dataset} is one pass over the training split")
    if args.aug is None and args.single_view:
        args.aug = "randclsstack"
    if args.aug is None:
        args.aug = default_aug(args, method)
    if args.aug not in TWO_VIEW_STRATEGIES and args.aug not in SINGLE_VIEW_STRATEGIES:
        raise FlagError(f"unknown --aug {args.aug!r}; two-view strategies: {', '.join(TWO_VIEW_STRATEGIES)}; "
                        f"single-view: {', '.join(SINGLE_VIEW_STRATEGIES)}")
    if args.single_view:
        if args.aug not in SINGLE_VIEW_STRATEGIES:
            raise FlagError(f"--single-view needs a single-view --aug ({', '.join(SINGLE_VIEW_STRATEGIES)}), "
                            f"got {args.aug}")
    elif method.views == 2 and args.aug not in TWO_VIEW_STRATEGIES:
        raise FlagError(f"--method {args.method} trains on two views: --aug must be one of "
                        f"{', '.join(TWO_VIEW_STRATEGIES)}, got {args.aug}")
    elif method.views == 1 and args.aug in TWO_VIEW_STRATEGIES and not method.paired_views:
        raise FlagError(f"--method {args.method} trains on one view: --aug {args.aug} makes two; use one of "
                        f"{', '.join(SINGLE_VIEW_STRATEGIES)}")
    if args.gpu_aug and args.aug not in GPU_AUG_STRATEGIES:
        raise FlagError(f"--gpu-aug supports --aug {', '.join(GPU_AUG_STRATEGIES)}; got --aug {args.aug}")
    warn_small_image_aug(args)
    warn_workers(args)
