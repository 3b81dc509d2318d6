"""tools/train_seg.py: iteration-based semantic segmentation training (CE, pixel GPaCo, CeCo, RR).

``tools/eval_seg.py`` runs :func:`gpaco.segmentation.evaluate.main`. Both work as one
process (CPU or one GPU) or one process per GPU under ``torchrun`` (``--batch-size`` is the
global batch). The run lifecycle (resume, atomic saves, SIGTERM/SIGUSR1 preemption,
``--nan-policy``, logs) is :class:`gpaco.engine.lifecycle.TrainingRun`, shared with
classification; the model and loss come from the method's registry row.

* Loss: the method row's criterion (:class:`gpaco.losses.pixel.SegmentationLoss`, CeCo's, RR's;
  docs/method.md). Methods with ``needs_class_counts`` get the image-level class counts of
  ``--class-counts`` or of the training masks (written to ``OUTPUT_DIR/class_counts.txt``).
* Schedule: mmcv's poly, :func:`gpaco.engine.schedule.poly_lr`.
* Resume is exact at any iteration: iteration ``it`` sees the same images, augmentation
  seeds and dropout seeds however the run was interrupted (:class:`~gpaco.data.samplers.IterationSampler`).
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from gpaco.checkpoint import CheckpointError, find_resume
from gpaco.classification.args import check_method_flags
from gpaco.data.build import check_ranks_agree
from gpaco.data.samplers import IterationSampler
from gpaco.data.seg_datasets import SEG_DATASETS, SyntheticSegDataset, build_seg_dataset
from gpaco.data.seg_transforms import SegEvalTransform, SegTrainTransform
from gpaco.engine.args import (
    FlagError, HelpFormatter, add_run_flags, check_positive, clamp_workers, parse_with_config, run_kwargs,
    validate_run_args,
)
from gpaco.engine.cli import add_debug_flag, run_cli
from gpaco.engine.lifecycle import TrainingRun, autocast_context
from gpaco.engine.logging import print_main, write_json
from gpaco.engine.optim import build_seg_optimizer
from gpaco.engine.precision import resolve_amp
from gpaco.engine.schedule import poly_lr
from gpaco.losses.rr import write_class_counts
from gpaco.methods import add_method_flags, get_method, method_names, method_options
from gpaco.models.seg import SEG_ARCHS, convert_sync_batchnorm, seg_arch
from gpaco.segmentation.class_counts import class_counts_for_training
from gpaco.segmentation.inference import MS_RATIOS, collate, evaluate_seg, format_iou_table, summary, worker_init

__all__ = ["build_train_parser", "parse_train_args", "run", "main", "cli", "add_seg_data_flags",
           "add_seg_test_flags", "DEFAULT_NO_DECAY", "optimizer_of", "forward_loss", "train_datasets"]

TASK = "segmentation"
DEFAULT_NO_DECAY = ("absolute_pos_embed", "relative_position_bias_table", "norm")
BEST_KEYS = ("model", "iter", "args", "num_classes", "arch", "method", "dataset", "class_names", "best_miou")
#: Flags a resume may not change: they change the model or the data (plus the method's model options).
RESUME_FIXED = ("arch", "encoder", "method", "dataset", "data_root", "crop_size", "img_scale", "val_split")


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
    check_positive(args, ("iters", "batch_size", "lr"))
    validate_run_args(args)
    if not 0.0 <= args.momentum < 1.0:
        raise FlagError(f"--momentum must be in [0, 1), got {args.momentum}")
    if args.wd < 0:
        raise FlagError(f"--wd must be >= 0, got {args.wd}")
    clamp_workers(args)
    check_method_flags(args, TASK)
    try:
        seg_arch(args.arch)
    except ValueError as e:
        raise FlagError(f"--arch: {e}") from None
    if args.temperature <= 0:
        raise FlagError("--temperature must be > 0")
    if args.num_pixels == 0:
        raise FlagError("--num-pixels must be > 0 (or -1 for all pixels)")
    if args.eval_interval is None:
        args.eval_interval = max(args.iters // 10, 1)
    if args.ckpt_interval is None:
        args.ckpt_interval = max(args.iters // 10, 1)
    return args


# --------------------------------------------------------------------------- training


def optimizer_of(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """The ``--optimizer`` of the flags over ``model``'s parameters (``--no-decay-keys`` without weight decay)."""
    no_decay = tuple(k for k in args.no_decay_keys.split(",") if k)
    return build_seg_optimizer(model, name=args.optimizer, lr=args.lr, wd=args.wd, momentum=args.momentum,
                               betas=tuple(args.betas), no_decay_keys=no_decay)


def forward_loss(model, criterion, imgs, labels, *, takes_labels: bool, device: torch.device, amp: str,
                 generator: Optional[torch.Generator] = None):
    """One training forward under ``--amp`` autocast and the method's loss: ``(loss, parts)``."""
    with autocast_context(device, amp):
        outputs = model(imgs, train_outputs=True, labels=labels) if takes_labels else model(imgs, train_outputs=True)
    return criterion(outputs, labels, generator=generator)


def _iter_seed(seed: int, it: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, it, rank]).generate_state(1)[0])


def train_datasets(args, synthetic: bool):
    """(train, val, test) of the flags; ``synthetic``: the --dry-run stand-in at the crop size."""
    info = SEG_DATASETS[args.dataset]
    train_tf = SegTrainTransform(tuple(args.img_scale), tuple(args.crop_size), ratio_range=tuple(args.ratio_range),
                                 cat_max_ratio=args.cat_max_ratio, flip_prob=args.flip_prob,
                                 photometric=args.photometric)
    if synthetic:
        size = tuple(args.crop_size)
        train = SyntheticSegDataset(8, info.num_classes, size, transform=train_tf, class_names=info.class_names)
        val = SyntheticSegDataset(2, info.num_classes, size, transform=SegEvalTransform(),
                                  class_names=info.class_names, seed=100)
        return train, val, val
    train = build_seg_dataset(args.dataset, args.data_root, "train", train_tf)
    val = build_seg_dataset(args.dataset, args.data_root, args.val_split, SegEvalTransform())
    test = val if args.test_split == args.val_split else build_seg_dataset(
        args.dataset, args.data_root, args.test_split, SegEvalTransform())
    check_ranks_agree({"--data-root train": train, "--val-split": val, "--test-split": test})
    return train, val, test


def _eval_kwargs(args, lc: TrainingRun) -> dict:
    return dict(device=lc.device, scale=tuple(args.img_scale), mode=args.test_mode,
                crop=tuple(args.test_crop), stride=tuple(args.test_stride), rank=lc.rank,
                world_size=lc.world_size, amp=args.amp)


def run(args: argparse.Namespace) -> dict:
    with TrainingRun(**run_kwargs(args)) as lifecycle:
        args.output_dir = lifecycle.output_dir
        return _run(args, lifecycle)


def _run(args: argparse.Namespace, lc: TrainingRun) -> dict:
    rank, world, device = lc.rank, lc.world_size, lc.device
    args.amp = resolve_amp(args.amp, device, dry_run=args.dry_run)
    if args.batch_size % world:
        raise FlagError(f"--batch-size {args.batch_size} is the global batch and must be divisible by the number "
                        f"of processes ({world})")
    method = get_method(args.method, TASK)
    info = SEG_DATASETS[args.dataset]
    num_classes = info.num_classes
    synthetic = args.dry_run and not os.path.isdir(args.data_root)
    if args.dry_run:
        c = args.dry_run_crop
        args.crop_size = [min(args.crop_size[0], c), min(args.crop_size[1], c)]
        args.img_scale = [min(args.img_scale[0], 2 * c), min(args.img_scale[1], c)]
        args.test_crop = [min(args.test_crop[0], c), min(args.test_crop[1], c)]
        args.test_stride = [max(x * 2 // 3, 1) for x in args.test_crop]
    train_set, val_set, test_set = train_datasets(args, synthetic)
    per_process = args.dry_run_batch if args.dry_run else args.batch_size // world

    spec = seg_arch(args.arch)
    stand_in = f" (synthetic stand-in: --data-root {args.data_root} does not exist)" if synthetic else ""
    print_main(f"gpaco train_seg: {args.method} {args.arch} ({spec.decoder}, encoder "
               f"{args.encoder or spec.encoder}) on {args.dataset}: {len(train_set)} train images, "
               f"{num_classes} classes{stand_in}")
    print_main(f"processes {world} on {device.type}, global batch {per_process * world} = {per_process} per "
               f"process, crop {args.crop_size[0]}x{args.crop_size[1]}, {args.iters} iterations, {args.optimizer} "
               f"lr {args.lr} wd {args.wd}")

    if args.dry_run and args.pretrained and not os.path.exists(args.pretrained):
        print_main(f"warning: --pretrained {args.pretrained} not found; the dry run uses random weights")
        args.pretrained = None
    class_counts = None
    counts_file = os.path.join(args.output_dir, "class_counts.txt")
    if method.needs_class_counts:
        path = args.class_counts
        resuming = not args.dry_run and find_resume(args.output_dir, args.resume) is not None
        if path is None and resuming and os.path.isfile(counts_file):
            path = counts_file  # the counts the run's first part took from the masks: not counted again
        class_counts = class_counts_for_training(path=path, dataset=train_set, num_classes=num_classes,
                                                 workers=0 if args.dry_run else args.workers)
    model_kw, loss_kw = method_options(method, vars(args))
    model = method.build_model(args.arch, num_classes, encoder=args.encoder, pretrained=args.pretrained, **model_kw)
    if lc.distributed and args.sync_bn:
        if device.type == "cuda":
            model = convert_sync_batchnorm(model)
        else:
            print_main("note: SyncBatchNorm needs CUDA; the CPU processes keep per-process BatchNorm")
    model.to(device)
    criterion = method.build_criterion(num_classes=num_classes, class_counts=class_counts, **loss_kw)
    optimizer = optimizer_of(model, args)
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    model_without_ddp = model
    model = lc.wrap_ddp(model)

    start_iter, best_miou, best_iter, nan_skipped = 0, -1.0, -1, 0
    max_iters = 2 if args.dry_run else args.iters
    ckpt = lc.resume_checkpoint()
    if ckpt is not None:
        lc.check_resume_args(ckpt.get("args") or {}, vars(args), RESUME_FIXED + tuple(method.model_options))
        try:
            lc.load_model_state(model_without_ddp, ckpt["model"], lc.resume_path)
            optimizer.load_state_dict(ckpt["optimizer"])
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            start_iter = int(ckpt["iter"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{lc.resume_path} is not a gpaco segmentation training checkpoint: "
                                  f"{type(e).__name__}: {e}") from None
        nan_skipped = int(ckpt.get("nan_skipped", 0))
        print_main(f"resumed from {lc.resume_path}: {start_iter} iterations done")
    lc.open_output(vars(args))
    logger = lc.logger
    if ckpt is not None:
        best_miou, best_iter = lc.reconcile_best(ckpt, step_key="iter", best_step_key="best_iter",
                                                 best_metric_key="best_miou", best_keys=BEST_KEYS)
    if class_counts is not None and lc.is_main and not args.dry_run:
        write_class_counts(counts_file, class_counts)

    stop = max_iters if args.stop_after is None or args.dry_run else min(max_iters, start_iter + args.stop_after)
    try:
        sampler = IterationSampler(len(train_set), per_process, rank=rank, world_size=world, seed=args.seed,
                                   start_iter=start_iter, max_iters=stop)
    except ValueError as e:
        raise FlagError(f"{e}; lower --batch-size") from None
    workers = 0 if args.dry_run else args.workers
    loader = DataLoader(train_set, batch_size=per_process, sampler=sampler, num_workers=workers,
                        collate_fn=collate, pin_memory=device.type == "cuda", drop_last=False,
                        worker_init_fn=worker_init if workers else None, persistent_workers=False)
    eval_kw = _eval_kwargs(args, lc)

    def state(it: int) -> dict:
        return {"model": model_without_ddp.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "iter": it,
                "best_miou": best_miou, "best_iter": best_iter, "nan_skipped": nan_skipped, "args": vars(args),
                "num_classes": num_classes, "arch": args.arch, "method": args.method, "dataset": args.dataset,
                "class_names": list(train_set.class_names)}

    model.train()
    sums: Dict[str, float] = {}
    window_n, t_window, t_start = 0, time.time(), time.time()
    last: Dict[str, float] = {}
    it = start_iter
    for imgs, labels, _ in loader:
        lr = poly_lr(it, base_lr=args.lr, max_iters=max_iters, power=args.power, min_lr=args.min_lr,
                     warmup_iters=args.warmup_iters, warmup_ratio=args.warmup_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        s = _iter_seed(args.seed, it, rank)
        torch.manual_seed(s)  # dropout: a function of (seed, iteration, rank), so resuming is exact
        gen = torch.Generator(device=device).manual_seed(s)
        if lc.faults is not None:
            lc.faults.before(it + 1)
        imgs = imgs.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        loss, parts = forward_loss(model, criterion, imgs, labels, takes_labels=method.takes_labels, device=device,
                                   amp=args.amp, generator=gen)
        if lc.faults is not None:
            loss = lc.faults.loss(it + 1, loss)
        nonfinite, stop_now = lc.agree(loss)
        optimizer.zero_grad(set_to_none=True)
        if nonfinite:
            lc.nonfinite(loss, f"iteration {it + 1}/{max_iters}")  # raises under --nan-policy stop
            nan_skipped += 1
        elif scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        it += 1
        if not nonfinite:
            vals = {"loss": loss.item(), **{k: v.item() for k, v in parts.items()}}
            for k, v in vals.items():
                sums[k] = sums.get(k, 0.0) + v
            window_n += 1
            last = vals
        if window_n and (args.dry_run or (args.print_freq and (it % args.print_freq == 0 or it == stop))):
            avg = {k: v / window_n for k, v in sums.items()}
            rate = window_n * per_process * world / max(time.time() - t_window, 1e-9)
            eta = (time.time() - t_start) / max(it - start_iter, 1) * (max_iters - it)
            parts_s = " ".join(f"{k} {v:.4f}" for k, v in avg.items() if k != "loss")
            print_main(f"[iter {it}/{max_iters}] loss {avg['loss']:.4f} ({parts_s}) lr {lr:.3e} {rate:.1f} img/s "
                       f"eta {time.strftime('%H:%M:%S', time.gmtime(eta)) if eta < 86400 else f'{eta / 3600:.0f}h'}")
            logger.log_epoch({"iter": it, "lr": lr, **avg, **({"nan_skipped": nan_skipped} if nan_skipped else {})})
            logger.log_scalars({f"train/{k}": v for k, v in avg.items()} | {"lr": lr}, it)
            sums, window_n, t_window = {}, 0, time.time()
        if args.dry_run:
            continue
        if stop_now and it < max_iters:  # preempted: every rank stops after the same iteration
            lc.save(state(it), where=f"iteration {it}")
            return lc.preempted(f"iteration {it}/{max_iters}", {"iter": it})
        is_best = False
        if args.eval_interval and it % args.eval_interval == 0 and it < max_iters:
            val = evaluate_seg(model_without_ddp, val_set, num_classes=num_classes, workers=min(workers, 2),
                               **eval_kw)
            is_best = val["miou"] > best_miou
            if is_best:
                best_miou, best_iter = val["miou"], it
            print_main(f"[iter {it}] val {summary(val)}; best mIoU {best_miou:.2f} at {best_iter}")
            logger.log_epoch({"iter": it, "val_miou": val["miou"], "val_macc": val["macc"], "val_aacc": val["aacc"]})
            logger.log_scalars({"val/miou": val["miou"], "val/macc": val["macc"], "val/aacc": val["aacc"]}, it)
        if it % args.ckpt_interval == 0 or it == stop or is_best:
            lc.save(state(it), best_keys=BEST_KEYS if is_best else None, where=f"iteration {it}")

    if args.dry_run:
        val = evaluate_seg(model_without_ddp, val_set, num_classes=num_classes, max_images=1, **eval_kw)
        print_main(f"dry run ok: 2 iterations, loss {last.get('loss', float('nan')):.4f}, eval {summary(val)}"
                   f"{' on SYNTHETIC images (--data-root does not exist)' if synthetic else ''}; nothing written")
        return {"dry_run": True, "train_loss": last.get("loss"), **{k: last[k] for k in last if k != "loss"},
                "miou": val["miou"]}

    if stop < max_iters:
        print_main(f"stopped after iteration {stop} of {max_iters} (--stop-after); continue with --resume auto")
        return {"stopped_at_iter": stop, "train_loss": last.get("loss")}

    # Final report: the last iteration's model (as the original's numbers) on the test split.
    test = evaluate_seg(model_without_ddp, test_set, num_classes=num_classes, workers=min(workers, 2), **eval_kw)
    if args.val_split == args.test_split and test["miou"] > best_miou:
        best_miou, best_iter = test["miou"], max_iters
        lc.save(state(max_iters), best_keys=BEST_KEYS, where=f"iteration {max_iters}")
    print_main(f"final ({args.test_split}, iteration {max_iters}, single scale): {summary(test)}")
    result = {"split": args.test_split, "iter": max_iters, "best_val_miou": best_miou if best_iter > 0 else None,
              "best_val_iter": best_iter if best_iter > 0 else None,
              "train_loss": last.get("loss"), **test}
    if nan_skipped:
        result["nan_skipped"] = nan_skipped
    if lc.is_main:
        write_json(os.path.join(args.output_dir, "metrics.json"), result)
        with open(os.path.join(args.output_dir, "per_class_iou.md"), "w") as f:
            f.write(format_iou_table([(args.method, test)]) + "\n")
        print_main(format_iou_table([(args.method, test)]))
    return result


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_train_args(argv)
    t0 = time.time()
    result = run(args)
    if not result.get("preempted") and os.environ.get("RANK", "0") == "0":
        print(f"done in {time.time() - t0:.1f}s", flush=True)
    return result


def cli(argv: Optional[Sequence[str]] = None) -> None:
    """tools/train_seg.py under the one error contract (gpaco.engine.cli)."""
    run_cli(main, argv)
