"""Segmentation as a :class:`~gpaco.engine.fit.Task`: one "epoch" of ``--iters`` iterations.

Iteration ``it`` sees the same images, augmentation seeds and dropout seeds however the run
was interrupted (:class:`~gpaco.data.samplers.IterationSampler`, a seed per iteration), so a
resume is exact at any iteration. Validation runs every ``--eval-interval`` iterations and
checkpoints every ``--ckpt-interval``; the final report is the last iteration's model on
``--test-split`` (as the original's numbers).
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from gpaco.data.build import check_ranks_agree
from gpaco.data.samplers import IterationSampler
from gpaco.data.seg_datasets import SEG_DATASETS, SyntheticSegDataset, build_seg_dataset
from gpaco.data.seg_transforms import SegEvalTransform, SegTrainTransform
from gpaco.engine.args import FlagError
from gpaco.engine.fit import Position, Task
from gpaco.engine.lifecycle import TrainingRun
from gpaco.engine.logging import print_main, write_json
from gpaco.engine.optim import build_seg_optimizer
from gpaco.engine.precision import resolve_amp
from gpaco.engine.schedule import schedule_from_flags
from gpaco.engine.step import FitContext, train_epoch
from gpaco.losses.rr import write_class_counts
from gpaco.methods import get_method, method_options
from gpaco.methods.rebuild import model_config
from gpaco.models.seg import convert_sync_batchnorm, seg_arch
from gpaco.segmentation.class_counts import class_counts_for_training
from gpaco.segmentation.inference import collate, evaluate_seg, format_iou_table, summary, worker_init

__all__ = ["SegmentationTask", "optimizer_of", "train_datasets"]

BEST_KEYS = ("model", "iter", "args", "num_classes", "arch", "method", "dataset", "class_names", "best_miou",
             "model_config")
#: Flags a resume may not change: they change the model or the data (plus the method's model options).
RESUME_FIXED = ("arch", "encoder", "method", "dataset", "data_root", "crop_size", "img_scale", "val_split")


def optimizer_of(model: torch.nn.Module, args: argparse.Namespace,
                 lr_scales: Optional[Dict[str, float]] = None) -> torch.optim.Optimizer:
    """The ``--optimizer`` of the flags over ``model``'s parameters (``--no-decay-keys`` without
    weight decay; ``lr_scales``: a method's per-prefix LR factors)."""
    no_decay = tuple(k for k in args.no_decay_keys.split(",") if k)
    return build_seg_optimizer(model, name=args.optimizer, lr=args.lr, wd=args.wd, momentum=args.momentum,
                               betas=tuple(args.betas), no_decay_keys=no_decay, lr_scales=lr_scales)


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


def _device_batch(args: argparse.Namespace, per_process: int, world: int) -> Optional[int]:
    """The group size of ``--device-batch`` (a method flag; None without it). It must divide
    the per-process batch; a dry run (per-process batch ``--dry-run-batch``) uses groups of
    half its batch, so that it goes through the grouped path."""
    n = getattr(args, "device_batch", None)
    if n is None:
        return None
    if args.dry_run:
        return per_process // 2 if per_process % 2 == 0 else None
    if per_process % n:
        raise FlagError(f"--device-batch {n} must divide the per-process batch {per_process} (--batch-size "
                        f"{args.batch_size} / {world} process(es)); run on a number of GPUs that divides "
                        f"--batch-size / --device-batch = {args.batch_size / n:g}")
    return n


class SegmentationTask(Task):
    """tools/train_seg.py's task (see the module docstring)."""

    name = "segmentation"
    step_key = "iter"
    best_metric_key, best_step_key = "best_miou", "best_iter"
    best_keys, resume_fixed = BEST_KEYS, RESUME_FIXED

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args, get_method(args.method, "segmentation").for_run())
        self.max_iters = 2 if args.dry_run else args.iters
        self.stop = self.max_iters

    # ------------------------------------------------------------------ building
    def build_data(self, lc: TrainingRun) -> None:
        args, world = self.args, lc.world_size
        args.amp = resolve_amp(args.amp, lc.device, dry_run=args.dry_run)
        if args.deterministic:
            # Bilinear upsampling's backward, nll_loss2d with sum reduction and adaptive average
            # pooling's backward have no deterministic CUDA kernel: they warn instead of stopping
            # the run at its first backward. CPU runs stay bit-identical.
            torch.use_deterministic_algorithms(True, warn_only=True)
            if lc.device.type == "cuda":
                print_main("note: --deterministic on CUDA: segmentation's upsampling, pixel loss and pooling "
                           "backward have no deterministic kernel; they run non-deterministically (a warning "
                           "each), so runs are close but not bit-identical")
        if args.batch_size % world:
            raise FlagError(f"--batch-size {args.batch_size} is the global batch and must be divisible by the number "
                            f"of processes ({world})")
        self.num_classes = SEG_DATASETS[args.dataset].num_classes
        self.synthetic = synthetic = args.dry_run and not os.path.isdir(args.data_root)
        if args.dry_run:
            c = args.dry_run_crop
            args.crop_size = [min(args.crop_size[0], c), min(args.crop_size[1], c)]
            args.img_scale = [min(args.img_scale[0], 2 * c), min(args.img_scale[1], c)]
            args.test_crop = [min(args.test_crop[0], c), min(args.test_crop[1], c)]
            args.test_stride = [max(x * 2 // 3, 1) for x in args.test_crop]
        self.train_set, self.val_set, self.test_set = train_datasets(args, synthetic)
        if not synthetic:
            self.train_set.check_labelled()  # all-ignore masks would train with loss 0 and exit 0
        self.per_process = args.dry_run_batch if args.dry_run else args.batch_size // world
        self.device_batch = _device_batch(args, self.per_process, world)
        spec = seg_arch(args.arch)
        stand_in = f" (synthetic stand-in: --data-root {args.data_root} does not exist)" if synthetic else ""
        print_main(f"gpaco train_seg: {args.method} {args.arch} ({spec.decoder}, encoder "
                   f"{args.encoder or spec.encoder}) on {args.dataset}: {len(self.train_set)} train images, "
                   f"{self.num_classes} classes{stand_in}")
        print_main(f"processes {world} on {lc.device.type}, global batch {self.per_process * world} = "
                   f"{self.per_process} per process, crop {args.crop_size[0]}x{args.crop_size[1]}, {args.iters} "
                   f"iterations, {args.optimizer} lr {args.lr} wd {args.wd}")
        if self.device_batch is not None:
            devices, mine = args.batch_size // args.device_batch, self.per_process // self.device_batch
            print_main(f"--device-batch {args.device_batch}: {devices} virtual devices ({mine} per process); the CeCo "
                       f"branch's BatchNorm and class centres work per group of {self.device_batch} images, as on "
                       f"{devices} GPUs"
                       + (f" (dry run: groups of {self.device_batch})" if args.dry_run else ""))

    def model_options(self) -> Dict[str, Any]:
        options = {"encoder": self.args.encoder, **method_options(self.method, vars(self.args))[0]}
        if "device_batch" in options:  # a dry run's smaller batch splits into smaller groups
            options["device_batch"] = getattr(self, "device_batch", options["device_batch"])
        if getattr(self.args, "aux_weight", None) == 0:
            # an aux head whose loss weighs 0 gets no gradient, which DDP (without
            # find_unused_parameters) refuses at the second iteration: build none
            options["aux"] = False
        return options

    def build_model(self, lc: TrainingRun, fresh: bool) -> torch.nn.Module:
        args, method = self.args, self.method
        if args.dry_run and args.pretrained and not os.path.exists(args.pretrained):
            print_main(f"warning: --pretrained {args.pretrained} not found; the dry run uses random weights")
            args.pretrained = None
        self.class_counts = None
        self.counts_file = os.path.join(args.output_dir, "class_counts.txt")
        if method.needs_class_counts:
            path = args.class_counts
            if path is None and not fresh and os.path.isfile(self.counts_file):
                path = self.counts_file  # the counts the run's first part took from the masks: not counted again
            self.class_counts = class_counts_for_training(path=path, dataset=self.train_set,
                                                          num_classes=self.num_classes,
                                                          workers=0 if args.dry_run else args.workers)
        options = self.model_options()
        model = method.build_model(args.arch, self.num_classes, pretrained=args.pretrained, **options)
        self.model_config = model_config(method.name, method.task, args.arch, self.num_classes, options)
        if lc.distributed and args.sync_bn:
            if lc.device.type == "cuda":
                model = convert_sync_batchnorm(model)
            else:
                print_main("note: SyncBatchNorm needs CUDA; the CPU processes keep per-process BatchNorm")
        return model.to(lc.device)

    def build_context(self, lc: TrainingRun, model: torch.nn.Module) -> FitContext:
        args, method, device = self.args, self.method, lc.device
        loss_kw = method_options(method, vars(args))[1]
        criterion = method.build_criterion(num_classes=self.num_classes, class_counts=self.class_counts, **loss_kw)
        return FitContext(
            model=model, module=model, criterion=criterion.to(device),
            optimizer=optimizer_of(model, args, method.lr_scales(model, vars(args))),
            method=method, device=device, options=vars(args), amp=args.amp,
            scaler=torch.amp.GradScaler(device.type) if args.amp == "fp16" else None, world_size=lc.world_size,
            accum_iter=args.accum_iter, clip_grad=args.clip_grad, lifecycle=lc,
            schedule=schedule_from_flags("poly", {**vars(args), "iters": self.max_iters}),
            steps_per_epoch=self.max_iters, print_freq=args.print_freq,
            progress=self._progress, before_step=self._seed_step, after_step=self._every_n_iterations,
            step_name=lambda epoch, it, iters: f"iteration {it + 1}/{iters}")

    def train_loader(self, ctx: FitContext):
        args, lc = self.args, ctx.lifecycle
        try:
            sampler = IterationSampler(len(self.train_set), self.per_process, rank=lc.rank, world_size=lc.world_size,
                                       seed=args.seed, start_iter=0, max_iters=self.max_iters)
        except ValueError as e:
            raise FlagError(f"{e}; lower --batch-size") from None
        self.workers = workers = 0 if args.dry_run else args.workers
        return DataLoader(self.train_set, batch_size=self.per_process, sampler=sampler, num_workers=workers,
                          collate_fn=collate, pin_memory=ctx.device.type == "cuda", drop_last=False,
                          worker_init_fn=worker_init if workers else None, persistent_workers=False)

    def evaluate(self, ctx: FitContext, dataset, **kw) -> dict:
        args, lc = self.args, ctx.lifecycle
        return evaluate_seg(ctx.module, dataset, num_classes=self.num_classes, device=ctx.device,
                            scale=tuple(args.img_scale), mode=args.test_mode, crop=tuple(args.test_crop),
                            stride=tuple(args.test_stride), rank=lc.rank, world_size=lc.world_size, amp=args.amp,
                            **kw)

    # ------------------------------------------------------------------ the run
    def dry_run(self, ctx: FitContext, loader) -> dict:
        lc = ctx.lifecycle
        ctx.print_freq, ctx.after_step, ctx.lifecycle = 1, None, None
        self._t_window = time.time()
        stats = train_epoch(ctx, loader, epoch=0)
        last = stats.pop("last")
        ctx.lifecycle = lc
        val = self.evaluate(ctx, self.val_set, max_images=1)
        print_main(f"dry run ok: 2 iterations, loss {last.get('loss', float('nan')):.4f}, eval {summary(val)}"
                   f"{' on SYNTHETIC images (--data-root does not exist)' if self.synthetic else ''}; nothing written")
        return {"dry_run": True, "train_loss": last.get("loss"), **{k: last[k] for k in last if k != "loss"},
                "miou": val["miou"]}

    def read_position(self, ckpt: dict) -> Position:
        return Position(epoch=0, step=int(ckpt["iter"]), epoch_state={"nan_skipped": int(ckpt.get("nan_skipped", 0))})

    def resumed(self, position: Position, loader, lc: TrainingRun) -> str:
        return f"resumed from {lc.resume_path}: {position['step']} iterations done"

    def say_resumed(self, note: str) -> None:
        best = f"best mIoU {self.best_metric:.2f} at {self.best_step}" if self.best_step > 0 else "no best yet"
        print_main(f"{note}, {best}")

    def position_state(self, position: Position) -> Dict[str, Any]:
        return {"iter": position["step"], "nan_skipped": self.fit.ctx.nan_skipped, "dataset": self.args.dataset,
                "class_names": list(self.train_set.class_names)}

    def describe_stop(self, position: Position, epoch_steps: int) -> Tuple[str, str, Dict[str, Any]]:
        it = position["step"]
        return f"iteration {it}", f"iteration {it}/{self.max_iters}", {"iter": it}

    def start_epoch(self, ctx: FitContext, loader, epoch: int, skip: int, rng: Optional[dict]) -> None:
        args = self.args
        if self.class_counts is not None and ctx.lifecycle.is_main:
            write_class_counts(self.counts_file, self.class_counts)
        self.stop = self.max_iters if args.stop_after is None else min(self.max_iters, skip + args.stop_after)
        loader.sampler.start, loader.sampler.stop = skip, self.stop
        self._t_window = time.time()

    def _seed_step(self, ctx: FitContext, it: int) -> None:
        s = _iter_seed(self.args.seed, it, ctx.lifecycle.rank if ctx.lifecycle is not None else 0)
        torch.manual_seed(s)  # dropout: a function of (seed, iteration, rank), so resuming is exact
        ctx.generator = torch.Generator(device=ctx.device).manual_seed(s)

    def _progress(self, ctx: FitContext, info: dict) -> None:
        avg, n = info["window"], info["window_n"]
        if not n:
            return
        it, lr = info["step"], info["lr"]
        rate = n * self.per_process * ctx.world_size / max(time.time() - self._t_window, 1e-9)
        eta = info["elapsed"] / max(info["done"], 1) * (self.max_iters - it)
        parts = " ".join(f"{k} {v:.4f}" for k, v in avg.items() if k != "loss")
        print_main(f"[iter {it}/{self.max_iters}] loss {avg['loss']:.4f} ({parts}) lr {lr:.3e} {rate:.1f} img/s "
                   f"eta {time.strftime('%H:%M:%S', time.gmtime(eta)) if eta < 86400 else f'{eta / 3600:.0f}h'}")
        if ctx.lifecycle is not None:
            skipped = info["nan_skipped"]
            ctx.lifecycle.logger.log_epoch({"iter": it, "lr": lr, **avg, **({"nan_skipped": skipped} if skipped else {})})
            ctx.lifecycle.logger.log_scalars({f"train/{k}": v for k, v in avg.items()} | {"lr": lr}, it)
        self._t_window = time.time()

    def _every_n_iterations(self, ctx: FitContext, it: int) -> None:
        """Validation every ``--eval-interval`` and a checkpoint every ``--ckpt-interval``
        iterations, at the last iteration of this run, and at every new best."""
        args, lc = self.args, ctx.lifecycle
        is_best = False
        if args.eval_interval and it % args.eval_interval == 0 and it < self.max_iters:
            val = self.evaluate(ctx, self.val_set, workers=min(self.workers, 2))
            is_best = val["miou"] > self.best_metric
            if is_best:
                self.best_metric, self.best_step = val["miou"], it
            print_main(f"[iter {it}] val {summary(val)}; best mIoU {self.best_metric:.2f} at {self.best_step}")
            lc.logger.log_epoch({"iter": it, "val_miou": val["miou"], "val_macc": val["macc"], "val_aacc": val["aacc"]})
            lc.logger.log_scalars({"val/miou": val["miou"], "val/macc": val["macc"], "val/aacc": val["aacc"]}, it)
        if it % args.ckpt_interval == 0 or it == self.stop or is_best:
            self.fit.save(Position(epoch=0, step=it), best=is_best, where=f"iteration {it}")

    def finish(self, ctx: FitContext, last_epoch: int) -> dict:
        args, lc = self.args, ctx.lifecycle
        last = self.last_step
        if self.stop < self.max_iters:
            print_main(f"stopped after iteration {self.stop} of {self.max_iters} (--stop-after); continue with "
                       f"--resume auto")
            return {"stopped_at_iter": self.stop, "train_loss": last.get("loss")}
        # Final report: the last iteration's model (as the original's numbers) on the test split.
        test = self.evaluate(ctx, self.test_set, workers=min(self.workers, 2))
        if args.val_split == args.test_split and test["miou"] > self.best_metric:
            self.best_metric, self.best_step = test["miou"], self.max_iters
            self.fit.save(Position(epoch=0, step=self.max_iters), best=True, where=f"iteration {self.max_iters}")
        print_main(f"final ({args.test_split}, iteration {self.max_iters}, single scale): {summary(test)}")
        result = {"split": args.test_split, "iter": self.max_iters,
                  "best_val_miou": self.best_metric if self.best_step > 0 else None,
                  "best_val_iter": self.best_step if self.best_step > 0 else None, "train_loss": last.get("loss"),
                  **test}
        if ctx.nan_skipped:
            result["nan_skipped"] = ctx.nan_skipped
        if lc.is_main:
            write_json(os.path.join(args.output_dir, "metrics.json"), result)
            with open(os.path.join(args.output_dir, "per_class_iou.md"), "w") as f:
                f.write(format_iou_table([(args.method, test)]) + "\n")
            print_main(format_iou_table([(args.method, test)]))
        return result
