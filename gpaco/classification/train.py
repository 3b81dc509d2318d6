"""tools/train.py: flags -> data -> model -> loss -> optimizer -> epochs -> checkpoints -> metrics.

The run lifecycle (process group, seeding, resume, atomic saves, preemption, NaN policy,
logs) is :class:`gpaco.engine.lifecycle.TrainingRun`; the model and the criterion come
from the method's registry row (:mod:`gpaco.methods`). Runs as one plain process (CPU or
one GPU) or one process per GPU under torchrun.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Optional, Sequence

import torch

from gpaco.checkpoint import CheckpointError, load_checkpoint, rng_state, set_rng_state
from gpaco.classification.args import FlagError, eval_data_kwargs, parse_train_args, train_data_kwargs
from gpaco.classification.loop import evaluate, train_one_epoch
from gpaco.classification.report import fairness_line, plot_curves, write_eval_report
from gpaco.data import DataError
from gpaco.data.build import (
    build_eval_dataset, build_train_dataset, check_ranks_agree, class_counts_of, eval_loader, is_cifar,
    set_train_epoch, train_loader,
)
from gpaco.data.gpu_aug import DeviceAugment
from gpaco.data.transforms import NORMALIZATION
from gpaco.distributed import broadcast_buffers
from gpaco.engine.args import run_kwargs
from gpaco.engine.cli import run_cli
from gpaco.engine.lifecycle import NonFiniteLossError, TrainingRun, seed_everything
from gpaco.engine.logging import SUMMARY_NAME, print_main, read_summary, write_json
from gpaco.engine.optim import build_optimizer
from gpaco.engine.precision import resolve_amp, resolve_channels_last
from gpaco.engine.schedule import LRSchedule, build_schedule
from gpaco.methods import get_method, method_options
from gpaco.metrics import FAIRNESS_KEYS
from gpaco.models.vit import init_center_head, is_vit, load_mae_checkpoint


def build_lr_schedule(args: argparse.Namespace) -> LRSchedule:
    """The ``--schedule`` of a run at its resolved ``--lr``: ``sched(epoch, it, iters_per_epoch)``.

    Per-epoch schedules (cosine, step_cifar) ignore the iteration and are applied once per
    epoch; ``mae_cosine`` is applied by the loop at every optimizer step.
    """
    if args.schedule == "step_cifar":
        return build_schedule("step_cifar", base_lr=args.lr, warmup_epochs=args.warmup_epochs)
    if args.schedule == "mae_cosine":
        return build_schedule("mae_cosine", base_lr=args.lr, min_lr=args.min_lr, epochs=args.epochs,
                              warmup_epochs=args.warmup_epochs)
    if args.schedule == "cosine_plain":
        return build_schedule("cosine_plain", base_lr=args.lr, epochs=args.epochs)
    if args.schedule == "step":
        return build_schedule("step", base_lr=args.lr, warmup_epochs=args.warmup_epochs, milestones=args.milestones,
                              warmup_start=args.warmup_start)
    if args.schedule == "cosine_min":
        return build_schedule("cosine_min", base_lr=args.lr, epochs=args.epochs, warmup_epochs=args.warmup_epochs)
    if args.schedule == "constant":
        return build_schedule("constant", base_lr=args.lr)
    return build_schedule("cosine", base_lr=args.lr, epochs=args.epochs, warmup_epochs=args.warmup_epochs)


def device_batch_of(args: argparse.Namespace) -> Optional[int]:
    """The group size the model normalises and contrasts over: ``--device-batch``, or in a
    dry run (whose per-process batch is ``--dry-run-batch``) groups of half that batch, so the
    dry run goes through the grouped path."""
    if args.device_batch is None or not args.dry_run:
        return args.device_batch
    return args.dry_run_batch // 2 if args.dry_run_batch % 2 == 0 and args.dry_run_batch >= 4 else None


def model_kwargs(args: argparse.Namespace) -> dict:
    """build_model keywords of the training flags: the backbone's (pretrained weights, drop
    path, a ViT's training grid), the ``--device-batch`` and the method's own model options."""
    kw = dict(pretrained=args.pretrained)
    if args.device_batch is not None:
        kw["device_batch"] = device_batch_of(args)
    if args.drop_path:
        kw["drop_path_rate"] = args.drop_path
    if is_vit(args.arch):
        kw["backbone_kwargs"] = {"img_size": args.image_size}
    method = get_method(args.method)
    kw.update(method_options(method, vars(args))[0])
    if method.contrastive:
        kw["global_batch"] = args.batch_size
    return kw


def optimizer_kwargs(args: argparse.Namespace) -> dict:
    """build_optimizer keywords of the training flags."""
    return dict(name=args.optimizer, lr=args.lr, momentum=args.momentum, wd=args.wd, nesterov=args.nesterov,
                layer_decay=args.layer_decay)


def finetune_from(model: torch.nn.Module, path: str) -> None:
    """``--finetune``: MAE pre-trained weights into the ViT backbone, fresh class centers."""
    backbone = getattr(model, "backbone", None)
    if backbone is None or not is_vit(backbone):
        raise FlagError(f"--finetune loads MAE ViT weights into a ViT backbone, not a {type(backbone).__name__}")
    result = load_mae_checkpoint(backbone, load_checkpoint(path))
    print_main(f"--finetune {path}: missing {result.missing}, unexpected {result.unexpected}"
               + (f", dropped head {result.dropped_head}" if result.dropped_head else "")
               + (f", pos_embed resized {result.pos_embed_resized[0]} -> {result.pos_embed_resized[1]}"
                  if result.pos_embed_resized else ""))
    init_center_head(model.fc, std=2e-5)


def per_group(fn, groups: int):
    """``fn(images, targets) -> (images, targets)`` applied to each of ``groups`` equal chunks of
    the batch, as each GPU of the original mixed its own batch (``--device-batch``)."""
    if groups == 1:
        return fn

    def grouped(images, targets):
        parts = [fn(x, t) for x, t in zip(images.chunk(groups), targets.chunk(groups))]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return grouped


def build_batch_augment(args: argparse.Namespace, num_classes: int, device: torch.device, per_process_batch: int,
                        device_batch: Optional[int] = None):
    """(random_erasing, mixup_fn) of the flags, or None each (timm's RandomErasing and Mixup).
    With ``device_batch`` mixup pairs and draws its lambda within each group of that size."""
    erasing = mixup = None
    groups = per_process_batch // device_batch if device_batch else 1
    per_process_batch //= groups
    if args.reprob > 0:
        from timm.data.random_erasing import RandomErasing

        erasing = RandomErasing(args.reprob, mode=args.remode, max_count=args.recount, device=str(device))
    if args.mixup > 0 or args.cutmix > 0:
        from timm.data.mixup import Mixup

        if per_process_batch % 2:
            raise FlagError(f"--mixup/--cutmix pair each image with the batch flipped: the per-process batch "
                            f"(or --device-batch) ({per_process_batch}) must be even")
        mixup = per_group(Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                      switch_prob=args.mixup_switch_prob, mode="batch", label_smoothing=args.label_smoothing,
                      num_classes=num_classes), groups)
    return erasing, mixup


def freeze_all_but_last_block(model: torch.nn.Module) -> int:
    """Places-LT fine-tuning (docs/method.md#optimisers): freeze every Conv2d weight except those of the last
    residual block; BN affines, the projection and the classifier stay trainable. Returns the
    number of frozen conv layers."""
    backbone = model.backbone if hasattr(model, "backbone") else model.encoder_q.backbone
    last = backbone.layer4[-1] if hasattr(backbone, "layer4") else None
    keep = {id(m) for m in last.modules()} if last is not None else set()
    frozen = 0
    for m in backbone.modules():
        if isinstance(m, torch.nn.Conv2d) and id(m) not in keep:
            for p in m.parameters():
                p.requires_grad_(False)
            frozen += 1
    return frozen


def check_batch_config(args: argparse.Namespace, world_size: int) -> int:
    if args.batch_size % world_size:
        raise FlagError(f"--batch-size {args.batch_size} is the global batch and must be divisible by the "
                        f"number of processes ({world_size})")
    if get_method(args.method).contrastive and args.queue_size and args.queue_size % args.batch_size:
        raise FlagError(f"--queue-size K={args.queue_size} is not a multiple of the global batch "
                        f"--batch-size {args.batch_size}: the queue is written one global batch at a time")
    per_process = args.batch_size // world_size
    if args.device_batch is not None and per_process % args.device_batch:
        raise FlagError(f"--device-batch {args.device_batch} must divide the per-process batch {per_process} "
                        f"(--batch-size {args.batch_size} / {world_size} process(es)); run on a number of GPUs "
                        f"that divides --batch-size / --device-batch = {args.batch_size / args.device_batch:g}")
    return per_process


def dry_run_stand_in(args: argparse.Namespace) -> bool:
    """Whether a dry run uses synthetic images: only when ``--data-root`` does not exist (a
    recipe checked on a machine without the data). A data root that exists is the real data:
    a missing split list there is an error naming it, not a silent stand-in."""
    if not args.dry_run or os.path.isdir(args.data_root):
        if args.dry_run and not is_cifar(args.dataset) and not args.train_list:
            raise FlagError(f"--train-list is required: --data-root {args.data_root} exists, so the dry run checks "
                            f"the real data")
        return False
    return True


def check_data_found(data_root: str, splits) -> None:
    """A wrong ``--data-root`` fails here, before the model is built or anything is written,
    instead of at the first image: the first image of every split list must exist."""
    for flag, ds in splits:
        samples = getattr(ds, "samples", None)
        if not samples:
            continue  # CIFAR: its reader already checked the files
        path, line = samples[0][0], ds._lines[0] if getattr(ds, "_lines", None) else 1
        if not os.path.isfile(path):
            where = f"--data-root {data_root} does not exist" if not os.path.isdir(data_root) else \
                f"is --data-root {data_root} right?"
            raise DataError(f"{ds.list_path}:{line} ({flag}): image {path} not found; {where}")


BEST_KEYS = ("model", "epoch", "args", "num_classes", "arch", "method", "best_top1", "class_counts")
#: Flags a resume may not change: they change the model or the data (plus the method's model options).
RESUME_FIXED = ("arch", "method", "num_classes", "dataset", "data_root", "train_list", "val_list", "imb_factor",
                "image_size", "norm", "device_batch", "freeze")


def run(args: argparse.Namespace) -> dict:
    with TrainingRun(**run_kwargs(args)) as lifecycle:
        args.output_dir = lifecycle.output_dir
        return _run(args, lifecycle)


def _run(args: argparse.Namespace, lc: TrainingRun) -> dict:
    rank, world, device = lc.rank, lc.world_size, lc.device
    per_process_batch = check_batch_config(args, world)
    method = get_method(args.method)

    synthetic = dry_run_stand_in(args)
    if args.dry_run and not is_cifar(args.dataset):
        args.image_size = min(args.image_size, args.dry_run_image_size)
        args.resize_size = None
    train_set = build_train_dataset(**train_data_kwargs(args, synthetic=synthetic))
    num_classes = args.num_classes or train_set.num_classes
    args.num_classes = num_classes
    train_counts = class_counts_of(train_set, num_classes)
    eval_kw = eval_data_kwargs(args, num_classes=num_classes, synthetic=synthetic)
    val_set = build_eval_dataset(args.val_list, **eval_kw)
    test_set = build_eval_dataset(args.test_list, **eval_kw)
    check_ranks_agree({"--train-list": train_set, "--val-list": val_set, "--test-list": test_set})
    if not synthetic:
        check_data_found(args.data_root, [("--train-list", train_set), ("--val-list", val_set),
                                          ("--test-list", test_set)])
    print_main(f"gpaco train: {args.method} {args.arch} on {len(train_set)} images, {num_classes} classes"
               f"{f' (synthetic stand-in: --data-root {args.data_root} does not exist)' if synthetic else ''}")
    if args.accum_iter > 1 or args.blr is not None:
        lr_note = (f"lr {args.lr:g} = blr {args.blr:g} x {args.batch_size * args.accum_iter} / 256"
                   if args.blr is not None else f"lr {args.lr} (not rescaled)")
        print_main(f"processes {world} on {device.type}, global micro-batch {args.batch_size} = {per_process_batch} "
                   f"per process, {args.accum_iter} per step: effective batch {args.batch_size * args.accum_iter}, "
                   f"{lr_note}, {args.epochs} epochs")
    else:
        print_main(f"processes {world} on {device.type}, global batch {args.batch_size} = {per_process_batch} per "
                   f"process, lr {args.lr} for the global batch (not rescaled), {args.epochs} epochs")
    if args.device_batch is not None:
        groups = per_process_batch // args.device_batch
        print_main(f"--device-batch {args.device_batch}: {args.batch_size // args.device_batch} virtual devices "
                   f"({groups} per process); BatchNorm, the in-batch contrast set, shuffle-BN and mixup work per "
                   f"group of {args.device_batch}, as on {args.batch_size // args.device_batch} GPUs"
                   + (f" (dry run: groups of {device_batch_of(args)})" if args.dry_run else ""))

    if args.dry_run and args.pretrained and not os.path.exists(args.pretrained):
        print_main(f"warning: --pretrained {args.pretrained} not found; the dry run uses random weights")
        args.pretrained = None
    model = method.build_model(args.arch, num_classes, **model_kwargs(args))
    ckpt = lc.resume_checkpoint()
    if args.finetune and args.dry_run and not os.path.exists(args.finetune):
        print_main(f"warning: --finetune {args.finetune} not found; the dry run uses random weights")
    elif args.finetune and ckpt is None:
        finetune_from(model, args.finetune)  # a resumed run takes every weight from its checkpoint
    if method.prepare is not None and ckpt is None:  # a resumed run takes every weight from its checkpoint
        try:
            print_main(method.prepare(model, vars(args)))
        except FileNotFoundError as e:
            if not args.dry_run:
                raise FlagError(str(e)) from None
            print_main(f"warning: {e}; the dry run uses random weights")
        except ValueError as e:
            raise FlagError(str(e)) from None
    if args.freeze == "all_but_last_block":
        print_main(f"froze {freeze_all_but_last_block(model)} conv layers (all but the last block)")
    model.to(device)
    amp = resolve_amp(args.amp, device, dry_run=args.dry_run)  # a CPU dry run: float32, still via the GradScaler
    channels_last = resolve_channels_last(args.channels_last, device, amp)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    loss_kw = method_options(method, vars(args))[1]
    try:  # the criterion's options are flags; a value that does not fit the data names its flag
        criterion = method.build_criterion(num_classes=num_classes, class_counts=train_counts, **loss_kw)
    except ValueError as e:
        raise FlagError(str(e)) from None
    criterion = criterion.to(device)
    lr_scales = method.lr_scales(model, vars(args)) if method.lr_scales is not None else None
    optimizer = build_optimizer(model, lr_scales=lr_scales, **optimizer_kwargs(args))
    schedule = build_lr_schedule(args)
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None

    model_without_ddp = model
    model = lc.wrap_ddp(model)
    train_model = torch.compile(model) if args.compile else model

    pin = device.type == "cuda"
    batch = args.dry_run_batch if args.dry_run else per_process_batch
    workers = 0 if args.dry_run else args.workers
    train_dl = train_loader(train_set, batch_size=batch, workers=workers, rank=rank, world_size=world,
                            seed=args.seed, pin_memory=pin, sampler=method.sampler)
    val_dl = eval_loader(val_set, batch_size=batch, workers=workers, rank=rank, world_size=world,
                         pin_memory=pin) if val_set is not None else None
    test_dl = eval_loader(test_set, batch_size=batch, workers=workers, rank=rank, world_size=world,
                          pin_memory=pin) if test_set is not None else None
    if len(train_dl) == 0:
        raise FlagError(f"the train split has {len(train_set)} images, fewer than one global batch "
                        f"(--batch-size {args.batch_size}); lower --batch-size")

    loop_kw = dict(device=device, amp=amp, channels_last=channels_last)
    erasing, mixup = build_batch_augment(args, num_classes, device, batch, device_batch_of(args))
    train_kw = dict(lr_schedule=schedule if schedule.per_iteration else None, random_erasing=erasing,
                    mixup_fn=mixup, clip_grad=args.clip_grad, takes_labels=method.takes_labels, **loop_kw)
    if getattr(args, "gpu_aug", False):
        train_kw["device_augment"] = DeviceAugment(*NORMALIZATION[args.norm])
    if args.dry_run:
        # Two micro-batches; with --accum-iter > 1 they form one accumulation cycle, so the
        # dry run goes through both the no-step and the step path.
        stats = train_one_epoch(train_model, criterion, train_dl, optimizer, scaler, epoch=0, print_freq=1,
                                max_steps=2, world_size=world, accum_iter=min(args.accum_iter, 2), **train_kw)
        if val_dl is not None or test_dl is not None:
            evaluate(model_without_ddp, val_dl or test_dl, num_classes=num_classes, train_counts=train_counts,
                     max_steps=1, **loop_kw)
        print_main(f"dry run ok: 2 steps, loss {stats['train_loss']:.4f}"
                   f"{' on SYNTHETIC images (--data-root does not exist)' if synthetic else ''}; nothing written")
        return {"dry_run": True, **stats}

    start_epoch, start_step, best_top1, best_epoch = 0, 0, -1.0, -1
    resume_rng, resume_epoch_state = None, None
    if ckpt is not None:
        path = lc.resume_path
        lc.check_resume_args(ckpt.get("args") or {}, vars(args), RESUME_FIXED + tuple(method.model_options))
        try:
            lc.load_model_state(model_without_ddp, ckpt["model"], path)
            optimizer.load_state_dict(ckpt["optimizer"])
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            start_epoch, start_step = int(ckpt["epoch"]), int(ckpt.get("step") or 0)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path} is not a gpaco training checkpoint (--resume needs the "
                                  f"checkpoint.pth of a run): {type(e).__name__}: {e}") from None
        if start_step:
            if start_step >= len(train_dl):
                raise CheckpointError(f"{path} stopped at step {start_step} of epoch {start_epoch + 1}, "
                                      f"but an epoch now has {len(train_dl)} steps (--batch-size or data changed?)")
            resume_epoch_state = ckpt.get("epoch_state")
            states = ckpt.get("rng_per_rank") or []
            if len(states) == world:
                resume_rng = states[rank]
            else:
                print_main(f"warning: {path} was written by {len(states)} process(es), this run has {world}: "
                           f"the rest of epoch {start_epoch + 1} is not bit-identical to an uninterrupted run")
            print_main(f"resumed from {path}: epoch {start_epoch + 1} step {start_step}/{len(train_dl)}, "
                       f"best val top-1 {best_top1:.2f}")
        elif start_epoch >= args.epochs:
            print_main(f"resumed from {path}: the run had finished (epoch {start_epoch} of {args.epochs}); "
                       f"nothing to train, its results are reported again (--overwrite trains it anew)")
        else:
            print_main(f"resumed from {path}: epoch {start_epoch} done, best val top-1 {best_top1:.2f}")
    lc.open_output(vars(args))
    logger = lc.logger
    if ckpt is not None:
        best_top1, best_epoch = lc.reconcile_best(ckpt, step_key="epoch", best_step_key="best_epoch",
                                                  best_metric_key="best_top1", best_keys=BEST_KEYS)

    def train_state(epoch_done: int) -> dict:
        return {
            "model": model_without_ddp.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "epoch": epoch_done, "step": 0,
            "best_top1": best_top1, "best_epoch": best_epoch, "rng": rng_state(), "args": vars(args),
            "num_classes": num_classes, "arch": args.arch, "method": args.method, "class_counts": train_counts,
        }

    last_epoch = args.epochs if args.stop_after is None else min(args.epochs, start_epoch + args.stop_after)
    for epoch in range(start_epoch, last_epoch):
        skip = start_step if epoch == start_epoch else 0
        set_train_epoch(train_dl, epoch, skip)
        # Every epoch's randomness derives from (seed, epoch, rank): resuming at an epoch
        # boundary reproduces the uninterrupted run exactly. Mid-epoch, the RNG states of
        # that moment (per rank) come from the checkpoint; augmentations are seeded per
        # sample (EpochSeededDataset) and the sampler starts after the done batches.
        seed_everything(args.seed + 100_003 * (epoch + 1) + rank)
        if skip and resume_rng is not None:
            set_rng_state(resume_rng)
        lr = schedule(epoch)  # per-iteration schedules: the LR at the epoch start; the loop sets each step's
        if not schedule.per_iteration:
            LRSchedule.apply(optimizer, lr)  # honours the groups' lr_scale (layer decay)
        stats = train_one_epoch(train_model, criterion, train_dl, optimizer, scaler, epoch=epoch,
                                print_freq=args.print_freq, world_size=world, accum_iter=args.accum_iter,
                                start_step=skip, epoch_state=resume_epoch_state if skip else None,
                                lifecycle=lc, epochs=last_epoch, **train_kw)
        # Rank 0's BatchNorm statistics on every rank (DDP's own rule), so that the evaluation
        # below and the checkpoint (written by rank 0) are the same model.
        broadcast_buffers(model_without_ddp)
        if "stopped_at_step" in stats:  # preempted mid-epoch: every rank stopped after the same step
            step = stats["stopped_at_step"]
            rngs = lc.gather_rng_states()
            state = train_state(epoch)
            state.update(step=step, epoch_state=stats["epoch_state"], rng_per_rank=rngs, world_size=world)
            lc.save(state, where=f"epoch {epoch + 1} step {step}")
            return lc.preempted(f"epoch {epoch + 1} step {step}/{len(train_dl) + skip}", {"epoch": epoch, "step": step})
        epoch_steps = skip + len(train_dl)
        if stats.get("nan_skipped", 0) >= epoch_steps:
            raise NonFiniteLossError(f"every step of epoch {epoch + 1} ({epoch_steps}) had a non-finite loss and was "
                                     f"skipped (--nan-policy skip); stopped, the last checkpoint is kept (lower --lr "
                                     f"or set --clip-grad)")
        record = {"epoch": epoch + 1, "lr": lr, **stats}
        if args.skip_bad_images and hasattr(train_set, "num_skipped"):
            record["skipped_images"] = train_set.num_skipped  # this rank's, since the start of this process
            if train_set.num_skipped:
                print_main(f"[epoch {epoch + 1}] --skip-bad-images: {train_set.num_skipped} unreadable image(s) "
                           f"skipped so far (rank 0; each is named in a warning above)")
        is_best = False
        if val_dl is not None and ((epoch + 1) % args.eval_freq == 0 or epoch + 1 == args.epochs):
            val = evaluate(model_without_ddp, val_dl, num_classes=num_classes, train_counts=train_counts,
                           **loop_kw)
            record.update({f"val_{k}": val.get(k) for k in ("top1", "top5", "many", "medium", "few", *FAIRNESS_KEYS)})
            is_best = val["top1"] > best_top1
            if is_best:
                best_top1, best_epoch = val["top1"], epoch + 1
            print_main(f"[epoch {epoch + 1}] val top-1 {val['top1']:.2f} (many {val['many']:.2f} / medium "
                       f"{val['medium']:.2f} / few {val['few']:.2f}); best {best_top1:.2f} at epoch {best_epoch}")
        lc.save(train_state(epoch + 1), best_keys=BEST_KEYS if is_best else None, where=f"the end of epoch {epoch + 1}")
        logger.log_epoch(record)
        logger.log_scalars({k: v for k, v in record.items() if isinstance(v, (int, float))}, epoch + 1)
        # A stop signal during the last step, the evaluation or the save: the epoch's checkpoint is written.
        if epoch + 1 < args.epochs and lc.stop_agreed():
            return lc.preempted(f"the end of epoch {epoch + 1}", {"epoch": epoch + 1, "step": 0})

    if last_epoch < args.epochs:
        print_main(f"stopped after epoch {last_epoch} of {args.epochs} (--stop-after); continue with --resume auto")
        return {"stopped_at_epoch": last_epoch}

    # Final report on the test split with the checkpoint selected on val (the original selected on test).
    selection = "last epoch (no --val-list)"
    if val_dl is not None and best_epoch > 0:
        lc.barrier()
        best = lc.load_best("epoch", best_epoch)
        model_without_ddp.load_state_dict(best["model"])
        selection = f"best val top-1 {best_top1:.2f} at epoch {best_epoch}"
    result = {"selection": selection, "selected_epoch": best_epoch if best_epoch > 0 else args.epochs}
    if test_dl is not None:
        test = evaluate(model_without_ddp, test_dl, num_classes=num_classes, train_counts=train_counts, **loop_kw)
        result.update(test)
        print_main(f"test ({selection}): top-1 {test['top1']:.2f} top-5 {test['top5']:.2f} | many "
                   f"{test['many']:.2f} medium {test['medium']:.2f} few {test['few']:.2f} | {test['num_samples']} "
                   f"images")
        print_main(fairness_line(test))
        logger.log_scalars({f"test_{k}": test.get(k) for k in ("top1", "top5", "many", "medium", "few",
                                                                *FAIRNESS_KEYS)}, args.epochs)
        if lc.is_main:
            write_eval_report(args.output_dir, test, train_counts)
    if lc.is_main:
        write_json(os.path.join(args.output_dir, "metrics.json"), result)
        plot_curves(read_summary(os.path.join(args.output_dir, SUMMARY_NAME)),
                    os.path.join(args.output_dir, "curves.png"))
    return result


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_train_args(argv)
    t0 = time.time()
    result = run(args)
    if not result.get("preempted") and os.environ.get("RANK", "0") == "0":  # the group is gone: not print_main
        print(f"done in {time.time() - t0:.1f}s", flush=True)
    return result


def cli(argv: Optional[Sequence[str]] = None) -> None:
    """tools/train.py (docs/reliability.md: one ``error: ...`` line, exit 2; a preempted run exits 0)."""
    run_cli(main, argv)
