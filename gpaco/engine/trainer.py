"""tools/train.py: wire flags -> data -> model -> loss -> optimizer -> epochs -> checkpoints -> metrics.

Runs as one plain process (CPU or one GPU) or one process per GPU under torchrun.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from typing import Optional, Sequence

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from gpaco.data.build import (
    build_eval_dataset, build_train_dataset, class_counts_of, data_available, eval_loader, set_train_epoch,
    train_loader,
)
from gpaco.data.splits import DataError
from gpaco.distributed import cleanup, init_distributed
from gpaco.engine.args import CONTRASTIVE_METHODS, FlagError, parse_train_args
from gpaco.engine.checkpoint import (
    RESUME_NAME, CheckpointError, check_writable, find_resume, load_checkpoint, remove_stale_temporaries, rng_state,
    save_checkpoint, set_rng_state,
)
from gpaco.engine.criterion import Criterion
from gpaco.engine.logging import RunLogger, print_main, save_args_yaml, to_jsonable
from gpaco.engine.loop import NonFiniteLossError, evaluate, train_one_epoch
from gpaco.engine.preemption import FaultInjector, PreemptionHandler, agree
from gpaco.engine.optim import build_optimizer
from gpaco.engine.report import write_eval_report
from gpaco.engine.schedule import LRSchedule, build_schedule, lr_at_epoch_cifar_step, lr_at_epoch_cosine
from gpaco.models import build_model
from gpaco.models.vit import init_center_head, is_vit, load_mae_checkpoint


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_lr(args: argparse.Namespace, epoch: int) -> float:
    """LR of a per-epoch schedule (kept for callers; the trainer uses :func:`build_lr_schedule`)."""
    if args.schedule == "step_cifar":
        return lr_at_epoch_cifar_step(epoch, base_lr=args.lr, warmup_epochs=args.warmup_epochs)
    return lr_at_epoch_cosine(epoch, base_lr=args.lr, epochs=args.epochs, warmup_epochs=args.warmup_epochs)


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
    return build_schedule("cosine", base_lr=args.lr, epochs=args.epochs, warmup_epochs=args.warmup_epochs)


def model_kwargs(args: argparse.Namespace) -> dict:
    """build_model keywords of the training flags (ViTs: drop path, the training grid, GELU MLP)."""
    kw = dict(proj_dim=args.proj_dim, queue_size=args.queue_size, momentum=args.momentum_encoder,
              pretrained=args.pretrained, global_batch=args.batch_size)
    if args.drop_path:
        kw["drop_path_rate"] = args.drop_path
    vit = is_vit(args.arch)
    if vit:
        kw["backbone_kwargs"] = {"img_size": args.image_size}
    if args.method == "gpaco":
        kw["single_view"] = args.single_view
    if args.method in ("gpaco", "multitask"):
        act = args.proj_act if args.proj_act != "auto" else ("gelu" if vit else "relu")
        kw["projection_act"] = act
    elif args.proj_act == "gelu":
        raise FlagError(f"--proj-act gelu is for --method gpaco/multitask, not {args.method}")
    return kw


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


def build_batch_augment(args: argparse.Namespace, num_classes: int, device: torch.device, per_process_batch: int):
    """(random_erasing, mixup_fn) of the flags, or None each (timm's RandomErasing and Mixup)."""
    erasing = mixup = None
    if args.reprob > 0:
        from timm.data.random_erasing import RandomErasing

        erasing = RandomErasing(args.reprob, mode=args.remode, max_count=args.recount, device=str(device))
    if args.mixup > 0 or args.cutmix > 0:
        from timm.data.mixup import Mixup

        if per_process_batch % 2:
            raise FlagError(f"--mixup/--cutmix pair each image with the batch flipped: the per-process batch "
                            f"({per_process_batch}) must be even")
        mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                      switch_prob=args.mixup_switch_prob, mode="batch", label_smoothing=args.label_smoothing,
                      num_classes=num_classes)
    return erasing, mixup


def freeze_all_but_last_block(model: torch.nn.Module) -> int:
    """Places-LT fine-tuning (SPEC §3.1): freeze every Conv2d weight except those of the last
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
    if args.method in CONTRASTIVE_METHODS and args.queue_size and args.queue_size % args.batch_size:
        raise FlagError(f"--queue-size K={args.queue_size} is not a multiple of the global batch "
                        f"--batch-size {args.batch_size}: the queue is written one global batch at a time")
    return args.batch_size // world_size


def gather_rng_states(distributed: bool) -> list:
    """Every rank's RNG state (rank order); collective under DDP."""
    state = rng_state()
    if not distributed:
        return [state]
    states = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(states, state)
    return states


def save_or_explain(state: dict, path: str) -> None:
    """save_checkpoint, whose failure (disk full, folder gone) says that the previous file is intact."""
    try:
        save_checkpoint(state, path)
    except CheckpointError as e:
        kept = "the previous one is intact" if os.path.exists(path) else "no earlier checkpoint exists"
        raise CheckpointError(f"{e} ({kept}; free space or fix the folder, then --resume auto)") from e


def run(args: argparse.Namespace) -> dict:
    with PreemptionHandler() as preempt:
        return _run(args, preempt)


def _run(args: argparse.Namespace, preempt: PreemptionHandler) -> dict:
    dist = init_distributed(timeout=getattr(args, "dist_timeout", 600.0))
    rank, world, device = dist.rank, dist.world_size, dist.device
    per_process_batch = check_batch_config(args, world)
    main_proc = rank == 0
    if args.deterministic:
        # CPU: bit-identical runs. GPU: also deterministic cuDNN/cuBLAS kernels; ops without a
        # deterministic CUDA kernel raise (see docs/reliability.md).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
    faults = FaultInjector.from_env(rank)  # test-only (GPACO_FAULT_INJECT)
    seed_everything(args.seed)

    synthetic = args.dry_run and not data_available(args)
    if args.dry_run and not args.dataset.startswith("cifar"):
        args.image_size = min(args.image_size, args.dry_run_image_size)
        args.resize_size = None
    train_set = build_train_dataset(args, synthetic=synthetic)
    num_classes = args.num_classes or train_set.num_classes
    args.num_classes = num_classes
    train_counts = class_counts_of(train_set, num_classes)
    val_set = build_eval_dataset(args, args.val_list, num_classes=num_classes, synthetic=synthetic)
    test_set = build_eval_dataset(args, args.test_list, num_classes=num_classes, synthetic=synthetic)

    print_main(f"gpaco train: {args.method} {args.arch} on {len(train_set)} images, {num_classes} classes"
               f"{' (synthetic stand-in: data root absent)' if synthetic else ''}")
    if args.accum_iter > 1 or args.blr is not None:
        lr_note = (f"lr {args.lr:g} = blr {args.blr:g} x {args.batch_size * args.accum_iter} / 256"
                   if args.blr is not None else f"lr {args.lr} (not rescaled)")
        print_main(f"processes {world} on {device.type}, global micro-batch {args.batch_size} = {per_process_batch} "
                   f"per process, {args.accum_iter} per step: effective batch {args.batch_size * args.accum_iter}, "
                   f"{lr_note}, {args.epochs} epochs")
    else:
        print_main(f"processes {world} on {device.type}, global batch {args.batch_size} = {per_process_batch} per "
                   f"process, lr {args.lr} for the global batch (not rescaled), {args.epochs} epochs")

    if args.dry_run and args.pretrained and not os.path.exists(args.pretrained):
        print_main(f"warning: --pretrained {args.pretrained} not found; the dry run uses random weights")
        args.pretrained = None
    model = build_model(args.method, args.arch, num_classes, **model_kwargs(args))
    out = args.output_dir
    resume_path = None if args.dry_run else find_resume(out, args.resume)
    if args.finetune and args.dry_run and not os.path.exists(args.finetune):
        print_main(f"warning: --finetune {args.finetune} not found; the dry run uses random weights")
    elif args.finetune and resume_path is None:
        finetune_from(model, args.finetune)  # a resumed run takes every weight from its checkpoint
    if args.freeze == "all_but_last_block":
        print_main(f"froze {freeze_all_but_last_block(model)} conv layers (all but the last block)")
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    criterion = Criterion.from_args(args, train_counts).to(device)
    optimizer = build_optimizer(args, model)
    schedule = build_lr_schedule(args)
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None

    model_without_ddp = model
    if dist.distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    train_model = torch.compile(model) if args.compile else model

    pin = device.type == "cuda"
    batch = args.dry_run_batch if args.dry_run else per_process_batch
    workers = 0 if args.dry_run else args.workers
    train_dl = train_loader(train_set, batch_size=batch, workers=workers, rank=rank, world_size=world,
                            seed=args.seed, pin_memory=pin)
    val_dl = eval_loader(val_set, batch_size=batch, workers=workers, rank=rank, world_size=world,
                         pin_memory=pin) if val_set is not None else None
    test_dl = eval_loader(test_set, batch_size=batch, workers=workers, rank=rank, world_size=world,
                          pin_memory=pin) if test_set is not None else None
    if len(train_dl) == 0:
        raise FlagError(f"the train split has {len(train_set)} images, fewer than one global batch "
                        f"(--batch-size {args.batch_size}); lower --batch-size")

    amp = args.amp
    if args.dry_run and device.type == "cpu" and amp == "fp16":
        # CPU float16 autocast runs at a small fraction of float32 speed (a ViT-B step takes
        # ~15 s); the dry run autocasts to bfloat16 instead and still goes through the GradScaler.
        amp = "bf16"
    loop_kw = dict(device=device, amp=amp, channels_last=args.channels_last)
    erasing, mixup = build_batch_augment(args, num_classes, device, batch)
    train_kw = dict(lr_schedule=schedule if schedule.per_iteration else None, random_erasing=erasing,
                    mixup_fn=mixup, clip_grad=args.clip_grad, single_view=args.single_view, **loop_kw)
    if args.dry_run:
        # Two micro-batches; with --accum-iter > 1 they form one accumulation cycle, so the
        # dry run goes through both the no-step and the step path.
        stats = train_one_epoch(train_model, criterion, train_dl, optimizer, scaler, epoch=0, print_freq=1,
                                max_steps=2, world_size=world, accum_iter=min(args.accum_iter, 2), **train_kw)
        if val_dl is not None or test_dl is not None:
            evaluate(model_without_ddp, val_dl or test_dl, num_classes=num_classes, train_counts=train_counts,
                     max_steps=1, **loop_kw)
        print_main(f"dry run ok: 2 steps, loss {stats['train_loss']:.4f}; nothing written")
        cleanup()
        return {"dry_run": True, **stats}

    if main_proc:
        check_writable(out)
        if remove_stale_temporaries(out):
            print_main(f"removed the temporary file(s) of an interrupted checkpoint save in {out}")
    start_epoch, start_step, best_top1, best_epoch = 0, 0, -1.0, -1
    resume_rng, resume_epoch_state = None, None
    if resume_path:
        ckpt = load_checkpoint(resume_path)
        try:
            load_model_state(model_without_ddp, ckpt["model"], resume_path)
            optimizer.load_state_dict(ckpt["optimizer"])
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            start_epoch, start_step = int(ckpt["epoch"]), int(ckpt.get("step") or 0)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{resume_path} is not a gpaco training checkpoint (--resume needs the "
                                  f"checkpoint.pth of a run): {type(e).__name__}: {e}") from None
        best_top1, best_epoch = float(ckpt.get("best_top1", -1.0)), int(ckpt.get("best_epoch", -1))
        if start_step:
            if start_step >= len(train_dl):
                raise CheckpointError(f"{resume_path} stopped at step {start_step} of epoch {start_epoch + 1}, "
                                      f"but an epoch now has {len(train_dl)} steps (--batch-size or data changed?)")
            resume_epoch_state = ckpt.get("epoch_state")
            states = ckpt.get("rng_per_rank") or []
            if len(states) == world:
                resume_rng = states[rank]
            else:
                print_main(f"warning: {resume_path} was written by {len(states)} process(es), this run has {world}: "
                           f"the rest of epoch {start_epoch + 1} is not bit-identical to an uninterrupted run")
            print_main(f"resumed from {resume_path}: epoch {start_epoch + 1} step {start_step}/{len(train_dl)}, "
                       f"best val top-1 {best_top1:.2f}")
        else:
            print_main(f"resumed from {resume_path}: epoch {start_epoch} done, best val top-1 {best_top1:.2f}")
    elif args.resume == "auto":
        print_main(f"--resume auto: no checkpoint in {out}, starting from scratch")
    logger = RunLogger(out, enabled=main_proc)
    if main_proc:
        save_args_yaml(args, os.path.join(out, "args.yaml"))

    def train_state(epoch_done: int) -> dict:
        return {
            "model": model_without_ddp.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "epoch": epoch_done, "step": 0,
            "best_top1": best_top1, "best_epoch": best_epoch, "rng": rng_state(), "args": vars(args),
            "num_classes": num_classes, "arch": args.arch, "method": args.method,
            "class_counts": train_counts,
        }

    ckpt_path = os.path.join(out, RESUME_NAME)
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
                                nan_policy=args.nan_policy, stop_requested=lambda: preempt.requested,
                                faults=faults, **train_kw)
        if "stopped_at_step" in stats:  # preempted mid-epoch: every rank stopped after the same step
            step = stats["stopped_at_step"]
            rngs = gather_rng_states(dist.distributed)
            if main_proc:
                state = train_state(epoch)
                state.update(step=step, epoch_state=stats["epoch_state"], rng_per_rank=rngs, world_size=world)
                save_or_explain(state, ckpt_path)
            if dist.distributed:
                torch.distributed.barrier()
            return _preempted(preempt, ckpt_path, f"epoch {epoch + 1} step {step}/{len(train_dl) + skip}",
                              logger, {"epoch": epoch, "step": step})
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
            record.update({f"val_{k}": val[k] for k in ("top1", "top5", "many", "medium", "few")})
            is_best = val["top1"] > best_top1
            if is_best:
                best_top1, best_epoch = val["top1"], epoch + 1
            print_main(f"[epoch {epoch + 1}] val top-1 {val['top1']:.2f} (many {val['many']:.2f} / medium "
                       f"{val['medium']:.2f} / few {val['few']:.2f}); best {best_top1:.2f} at epoch {best_epoch}")
        if main_proc:
            state = train_state(epoch + 1)
            save_or_explain(state, ckpt_path)
            if is_best:
                save_or_explain({k: state[k] for k in ("model", "epoch", "args", "num_classes", "arch", "method",
                                                       "best_top1", "class_counts")}, os.path.join(out, "best.pth"))
            logger.log_epoch(record)
            logger.log_scalars({k: v for k, v in record.items() if isinstance(v, (int, float))}, epoch + 1)
        # A stop signal during the last step, the evaluation or the save: the epoch's checkpoint is written.
        if epoch + 1 < args.epochs and agree([preempt.requested], device)[0]:
            if dist.distributed:
                torch.distributed.barrier()
            return _preempted(preempt, ckpt_path, f"the end of epoch {epoch + 1}", logger,
                              {"epoch": epoch + 1, "step": 0})

    if last_epoch < args.epochs:
        print_main(f"stopped after epoch {last_epoch} of {args.epochs} (--stop-after); continue with --resume auto")
        logger.close()
        cleanup()
        return {"stopped_at_epoch": last_epoch}

    # Final report on the test split with the checkpoint selected on val (the original selected on test).
    selection = "last epoch (no --val-list)"
    if val_dl is not None and best_epoch > 0:
        if dist.distributed:
            torch.distributed.barrier()
        best = load_checkpoint(os.path.join(out, "best.pth"))
        model_without_ddp.load_state_dict(best["model"])
        selection = f"best val top-1 {best_top1:.2f} at epoch {best_epoch}"
    result = {"selection": selection, "selected_epoch": best_epoch if best_epoch > 0 else args.epochs}
    if test_dl is not None:
        test = evaluate(model_without_ddp, test_dl, num_classes=num_classes, train_counts=train_counts, **loop_kw)
        result.update(test)
        print_main(f"test ({selection}): top-1 {test['top1']:.2f} top-5 {test['top5']:.2f} | many "
                   f"{test['many']:.2f} medium {test['medium']:.2f} few {test['few']:.2f} | {test['num_samples']} "
                   f"images")
        if main_proc:
            write_eval_report(out, test, train_counts)
    if main_proc:
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump(to_jsonable(result), f, indent=1)
    logger.close()
    cleanup()
    return result


def _preempted(preempt: PreemptionHandler, ckpt_path: str, where: str, logger: RunLogger, info: dict) -> dict:
    print_main(f"preempted ({preempt.signal_name or 'stop signal on another rank'}): checkpoint saved at {where} "
               f"to {ckpt_path}; continue with --resume auto")
    logger.close()
    cleanup()
    return {"preempted": True, "signal": preempt.signal_name, **info}


def load_model_state(model: torch.nn.Module, state: dict, path: str) -> None:
    """Strict load with a message that names the file and the mismatching keys."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise SystemExit(f"error: checkpoint {path} does not fit the model (--arch/--method/--num-classes?): "
                         f"{str(e).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise SystemExit(f"error: checkpoint {path} does not fit the model (--arch/--method/--num-classes?): "
                         f"missing {list(missing)[:8]}, unexpected {list(unexpected)[:8]}")


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_train_args(argv)
    t0 = time.time()
    result = run(args)
    if not result.get("preempted") and os.environ.get("RANK", "0") == "0":  # the group is gone: not print_main
        print(f"done in {time.time() - t0:.1f}s", flush=True)
    return result


def one_line_error(err: BaseException) -> str:
    """``error: ...`` on one line. A DataError re-raised by a DataLoader worker carries the
    worker's traceback in its message: keep the original message (its last line)."""
    if isinstance(err, SystemExit):
        text = str(err.code)
    else:
        text = str(err)
        if "Original Traceback" in text:
            last = [ln for ln in text.splitlines() if ln.strip()][-1]
            text = last.split(": ", 1)[1] if ": " in last else last
    text = " ".join(text.split()) or type(err).__name__
    return text if text.startswith("error: ") else f"error: {text}"


def cli(argv: Optional[Sequence[str]] = None) -> None:
    """tools/train.py: our errors (bad flags, data, checkpoints, a non-finite loss) as one
    ``error: ...`` line on stderr with exit code 2 (1 for a non-finite loss), no traceback;
    a preempted run exits 0. Anything else is a bug and keeps its traceback."""
    rank = os.environ.get("RANK")
    tag = f"[rank {rank}] " if rank is not None else ""
    try:
        main(argv)
    except SystemExit as e:
        if not isinstance(e.code, str):  # argparse (already printed), --help
            raise
        print(tag + one_line_error(e), file=sys.stderr, flush=True)
        sys.exit(2)
    except (DataError, CheckpointError, FileNotFoundError) as e:
        print(tag + one_line_error(e), file=sys.stderr, flush=True)
        sys.exit(2)
    except NonFiniteLossError as e:
        print(tag + one_line_error(e), file=sys.stderr, flush=True)
        sys.exit(1)
    except Exception as e:
        # Under torchrun the failing rank's message must stand out among the teardown noise.
        print(f"{tag}error: {type(e).__name__}: {' '.join(str(e).split())[:500]}", file=sys.stderr, flush=True)
        raise
