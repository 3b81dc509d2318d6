"""Classification as a :class:`~gpaco.engine.fit.Task`: split lists or CIFAR, epochs, validation
on top-1 with many/medium/few, the best checkpoint chosen on val and reported on test.

What is the engine's (resume, saving, preemption, the loop) lives in :mod:`gpaco.engine.fit`;
the step is the method's (:mod:`gpaco.methods`). This module holds the rest: datasets and
loaders, the model's build options (``--finetune``, ``--freeze``), the optimizer and
schedule of the flags, timm's batch augmentations, evaluation and the report.
"""
from __future__ import annotations

import argparse
import math
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from gpaco.checkpoint import CheckpointError, load_checkpoint, set_rng_state
from gpaco.classification.args import SELECT_METRICS, FlagError, eval_data_kwargs, print_warning, train_data_kwargs
from gpaco.classification.predict import evaluate
from gpaco.classification.report import CLASSES_FILE, fairness_line, plot_curves, read_class_names, write_eval_report
from gpaco.data import DataError
from gpaco.data.splits import special_file_kind
from gpaco.data.build import (
    build_eval_dataset, build_train_dataset, check_ranks_agree, class_counts_of, eval_loader, is_cifar, is_folder,
    is_label_free, set_train_epoch, train_loader,
)
from gpaco.data.gpu_aug import DeviceAugment
from gpaco.data.transforms import NORMALIZATION
from gpaco.engine.fit import Position, Task
from gpaco.metrics import format_accuracy
from gpaco.engine.lifecycle import TrainingRun, seed_everything
from gpaco.engine.logging import SUMMARY_NAME, print_main, read_summary, to_jsonable, write_json
from gpaco.engine.optim import build_optimizer
from gpaco.engine.precision import resolve_amp, resolve_channels_last
from gpaco.engine.schedule import LRSchedule, schedule_from_flags
from gpaco.engine.step import Batch, FitContext, to_device
from gpaco.methods import get_method, method_options
from gpaco.methods.rebuild import model_config
from gpaco.metrics import FAIRNESS_KEYS
from gpaco.models.vit import init_center_head, is_vit, load_mae_checkpoint

__all__ = ["ClassificationTask", "model_kwargs", "optimizer_kwargs", "finetune_from",
           "build_batch_augment", "batch_transform", "check_batch_config", "device_batch_of", "bn_device_batch_of",
           "freeze_all_but_last_block"]

#: What best.pth holds.
BEST_KEYS = ("model", "epoch", "args", "num_classes", "arch", "method", "best_top1", "class_counts", "model_config",
             "class_names")
#: Flags a resume may not change: they change the model or the data (plus the method's model options), or
#: what the best checkpoint so far was chosen on.
RESUME_FIXED = ("arch", "method", "num_classes", "dataset", "data_root", "train_list", "val_list", "imb_factor",
                "image_size", "norm", "device_batch", "bn_device_batch", "freeze", "epoch_iters", "split_seed",
                "select_metric")
_TEST_KEYS = ("top1", "top5", "mean_class_acc", "many", "medium", "few", *FAIRNESS_KEYS)
#: How the selection metrics are named in the run's messages.
_METRIC_LABELS = {"top1": "top-1", "mean_class_acc": "mean per-class accuracy"}
#: What a checkpoint without --select-metric (written before it existed) selected on.
_LEGACY_SELECT_METRIC = "top1"


def _dry_run_groups(args: argparse.Namespace, size: Optional[int]) -> Optional[int]:
    """``size`` as it is, or in a dry run (whose per-process batch is ``--dry-run-batch``)
    groups of half that batch, so the dry run goes through the grouped path."""
    if size is None or not args.dry_run:
        return size
    return args.dry_run_batch // 2 if args.dry_run_batch % 2 == 0 and args.dry_run_batch >= 4 else None


def device_batch_of(args: argparse.Namespace) -> Optional[int]:
    """The group size the model normalises and contrasts over: ``--device-batch`` (a dry run:
    half its batch)."""
    return _dry_run_groups(args, args.device_batch)


def bn_device_batch_of(args: argparse.Namespace) -> Optional[int]:
    """The group size BatchNorm alone normalises over: ``--bn-device-batch`` (a dry run: half
    its batch)."""
    return _dry_run_groups(args, getattr(args, "bn_device_batch", None))


def model_kwargs(args: argparse.Namespace) -> dict:
    """build_model keywords of the training flags: the backbone's (pretrained weights, drop
    path, a ViT's training grid), the ``--device-batch`` or ``--bn-device-batch`` and the
    method's own model options."""
    kw = dict(pretrained=args.pretrained)
    if args.device_batch is not None:
        kw["device_batch"] = device_batch_of(args)
    if getattr(args, "bn_device_batch", None) is not None:
        kw["bn_device_batch"] = bn_device_batch_of(args)
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


def batch_transform(*, random_erasing: Optional[Callable] = None, mixup_fn: Optional[Callable] = None,
                    device_augment: Optional[Callable] = None) -> Callable[[Any, FitContext], Batch]:
    """The loader's ``(images, labels)`` -> a :class:`Batch` on the device: ``device_augment``
    (``--gpu-aug``: uint8 crops + parameters -> views) or a plain copy, then ``random_erasing``
    (every view) and ``mixup_fn`` (soft ``loss_targets``; the train top-1 uses the labels)."""
    def to_batch(item, ctx: FitContext) -> Batch:
        images, targets = item[0], item[1]
        if device_augment is not None:
            images = device_augment(images, ctx.device, ctx.channels_last)
        else:
            images = to_device(images, ctx.device, ctx.channels_last)
        targets = targets.to(ctx.device, non_blocking=True)
        if random_erasing is not None:
            images = [random_erasing(v) for v in images] if isinstance(images, list) else random_erasing(images)
        loss_targets = targets
        if mixup_fn is not None:
            images, loss_targets = mixup_fn(images, targets)
        return Batch(images, targets, loss_targets)
    return to_batch


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
    bn_batch = getattr(args, "bn_device_batch", None)
    if bn_batch is not None and per_process % bn_batch:
        raise FlagError(f"--bn-device-batch {bn_batch} must divide the per-process batch {per_process} "
                        f"(--batch-size {args.batch_size} / {world_size} process(es)); run on a number of GPUs "
                        f"that divides --batch-size / --bn-device-batch = {args.batch_size / bn_batch:g}")
    return per_process


def dry_run_stand_in(args: argparse.Namespace) -> bool:
    """Whether a dry run uses synthetic images: only when ``--data-root`` does not exist (a
    recipe checked on a machine without the data). A data root that exists is the real data:
    a missing split list there is an error naming it, not a silent stand-in."""
    if not args.dry_run or os.path.isdir(args.data_root):
        if args.dry_run and not is_cifar(args.dataset) and not is_folder(args.dataset) and not args.train_list:
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
        try:
            kind = special_file_kind(os.stat(path).st_mode)
        except OSError:
            kind = "missing"
        if kind and kind != "missing":  # reading a FIFO would block the run forever
            raise DataError(f"{ds.list_path}:{line} ({flag}): {path} is not a regular file ({kind}); a split list "
                            f"names image files")
        if kind == "missing":
            where = f"--data-root {data_root} does not exist" if not os.path.isdir(data_root) else \
                f"is --data-root {data_root} right?"
            raise DataError(f"{ds.list_path}:{line} ({flag}): image {path} not found; {where}")


def _balanced(dataset) -> bool:
    """Whether every class present in ``dataset`` has the same number of images (then its mean
    per-class accuracy equals its top-1); True for no dataset (nothing to select on)."""
    if dataset is None:
        return True
    counts = getattr(dataset, "class_counts", None)
    if counts is None:
        counts = torch.bincount(torch.as_tensor(list(dataset.targets))).tolist()
    return len({c for c in counts if c}) <= 1


def _heads_note(metrics: dict) -> str:
    """``; probe top-1 71.20`` for each extra head of an evaluation (a forward with heads)."""
    return "".join(f"; {head} top-1 {m['top1']:.2f}" for head, m in metrics.get("heads", {}).items())


class ClassificationTask(Task):
    """tools/train.py's task (see the module docstring)."""

    name = "classification"
    step_key = "epoch"
    best_metric_key, best_step_key = "best_top1", "best_epoch"
    best_keys, resume_fixed = BEST_KEYS, RESUME_FIXED

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args, get_method(args.method).for_run())
        self.epochs, self.stop_after_epochs = args.epochs, args.stop_after

    # ------------------------------------------------------------------ building
    def build_data(self, lc: TrainingRun) -> None:
        args = self.args
        self.per_process_batch = check_batch_config(args, lc.world_size)
        self.synthetic = synthetic = dry_run_stand_in(args)
        if args.dry_run and not is_cifar(args.dataset):
            args.image_size = min(args.image_size, args.dry_run_image_size)
            args.resize_size = None
        given_classes = args.num_classes
        self.train_set = build_train_dataset(**train_data_kwargs(args, synthetic=synthetic))
        # the classes' names (checkpoint, metrics.json, report figures, gpaco-predict): the train set's own (class
        # folders), else a classes.txt beside the split lists; None: the reports show class indices
        names, names_file = (None, None) if synthetic else self._find_class_names()
        if given_classes is not None and not synthetic and not is_label_free(args.dataset):
            if not self._class_count_agrees(given_classes, names, names_file):
                names = None  # a dry run goes on with the flag's count (the warning said so)
        self.num_classes = args.num_classes = args.num_classes or self.train_set.num_classes
        if names is not None and len(names) != self.num_classes:
            raise DataError(f"{names_file}: {len(names)} class names for {self.num_classes} classes (the labels of "
                            f"--train-list); expected one name per class, in label order")
        self.class_names = names
        # unlabelled shards: no class counts, so no prior and no many/medium/few groups
        self.train_counts = None if is_label_free(args.dataset) else class_counts_of(self.train_set, self.num_classes)
        eval_kw = eval_data_kwargs(args, num_classes=self.num_classes, synthetic=synthetic)
        if is_folder(args.dataset) and not synthetic:  # val and test: the other parts of the train set's split
            eval_kw["folder_split"] = self.train_set.folder_split
            self._print_folder_split()
        self.val_set = build_eval_dataset(args.val_list, split="val", **eval_kw)
        self.test_set = build_eval_dataset(args.test_list, split="test", **eval_kw)
        splits = {"--train-list": self.train_set, "--val-list": self.val_set, "--test-list": self.test_set}
        check_ranks_agree(splits)
        if not synthetic:
            check_data_found(args.data_root, list(splits.items()))
            self._cap_queue()
        shards = getattr(self.train_set, "shards", None)
        images = f"{len(shards)} shard files ({args.epoch_iters} steps per epoch)" if shards is not None else \
            f"{len(self.train_set)} images"
        print_main(f"gpaco train: {args.method} {args.arch} on {images}, {self.num_classes} "
                   f"classes{f' (synthetic stand-in: --data-root {args.data_root} does not exist)' if synthetic else ''}")
        self._print_batch_plan(lc)

    def _find_class_names(self) -> Tuple[Optional[List[str]], Optional[str]]:
        """(names, where they come from): the train set's own (class folders), else the first
        classes.txt beside the split lists or in the data root; (None, None) when there is none."""
        args = self.args
        own = getattr(self.train_set, "class_names", None)
        if own:
            return list(own), f"the class folders of --data-root {args.data_root}"
        for path in (args.train_list, args.val_list, args.test_list, args.data_root):
            if not path:
                continue
            folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
            candidate = os.path.join(folder, CLASSES_FILE)
            if os.path.isfile(candidate):
                return read_class_names(candidate), candidate
        return None, None

    def _class_count_agrees(self, given: int, names: Optional[List[str]], names_file: Optional[str]) -> bool:
        """``--num-classes`` against the data's class count (its class names, else the train
        labels, CIFAR's own): a real run stops on a difference, a dry run with more classes than
        the data warns (a recipe checked on other data) and goes on with the flag's count; True
        when they agree."""
        args = self.args
        if names is not None:
            found, source = len(names), f"{len(names)} in {names_file}"
        elif is_cifar(args.dataset):
            found, source = self.train_set.num_classes, f"--dataset {args.dataset}"
        else:
            top = max(self.train_set.targets, default=-1)
            found, source = top + 1, f"labels 0..{top} in --train-list {args.train_list}"
        if found == given:
            return True
        message = (f"--num-classes {given}, but the data has {found} classes ({source}); leave --num-classes out "
                   f"to take the data's count, or give the data the recipe was written for")
        if not args.dry_run or given < found:  # fewer classes than labels: not even a dry run can go on
            raise FlagError(message)
        print_warning(message + "; a real run stops here")
        return False

    def _print_folder_split(self) -> None:
        split, args = self.train_set.folder_split, self.args
        print_main(f"--dataset folder: {args.data_root}: {split.describe()}, split with --split-seed {split.seed} "
                   f"(tools/make_lists.py {args.data_root} --seed {split.seed} writes the same split as lists)")
        for note in split.notes:
            print_main(f"note: {note}")

    def _cap_queue(self) -> None:
        """A contrastive queue larger than the training set is capped to the images of one epoch (the
        largest multiple of the global batch within the training set), with a warning: a larger
        queue keeps its random initial features for epochs and then features many steps old."""
        args, size = self.args, getattr(self.args, "queue_size", None)
        if not self.method.contrastive or not size or is_label_free(args.dataset):  # shards: a stream, no size
            return
        images = len(self.train_set)
        if size <= images:
            return
        capped = images // args.batch_size * args.batch_size
        if capped == 0:
            return  # fewer images than one batch: the train loader says so
        print_warning(f"--queue-size {size} is larger than the training set ({images} images): capped to {capped}, "
                      f"one epoch of --batch-size {args.batch_size} batches (a larger queue would hold its random "
                      f"initial features for {math.ceil(size / capped)} epochs, then stale ones); pass --queue-size "
                      f"(a multiple of --batch-size, at most {images}) to choose")
        args.queue_size = capped

    def _resolve_selection(self) -> None:
        """What best.pth is chosen on: ``--select-metric`` (a fresh run's default mean_class_acc; a
        resumed run keeps the one its checkpoint recorded, top1 for one written before the flag
        existed; another value is refused). On a balanced val split the mean per-class accuracy IS
        the top-1 (every class weighs the same), so it is read as the top-1 there: the same number to
        the last bit and the checkpoint key ``best_top1``, so the balanced paper recipes select as before."""
        args, ckpt = self.args, self.checkpoint
        if ckpt is None:
            args.select_metric = args.select_metric or SELECT_METRICS[0]
        else:
            recorded = (ckpt.get("args") or {}).get("select_metric") or _LEGACY_SELECT_METRIC
            if args.select_metric not in (None, recorded):
                raise FlagError(f"--resume: --select-metric {args.select_metric}, but the run chose its best "
                                f"checkpoint so far on {recorded}; resume with --select-metric {recorded} (or leave "
                                f"it out), or start a new run in another --output-dir")
            args.select_metric = recorded
        self.select_key = "top1" if args.select_metric == "top1" or _balanced(self.val_set) else "mean_class_acc"
        self.best_metric_key = f"best_{self.select_key}"
        self.best_keys = tuple(self.best_metric_key if k == "best_top1" else k for k in BEST_KEYS)

    def _print_batch_plan(self, lc: TrainingRun) -> None:
        args, per_process, world = self.args, self.per_process_batch, lc.world_size
        if args.accum_iter > 1 or args.blr is not None:
            lr_note = (f"lr {args.lr:g} = blr {args.blr:g} x {args.batch_size * args.accum_iter} / 256"
                       if args.blr is not None else f"lr {args.lr} (not rescaled)")
            print_main(f"processes {world} on {lc.device.type}, global micro-batch {args.batch_size} = {per_process} "
                       f"per process, {args.accum_iter} per step: effective batch {args.batch_size * args.accum_iter}, "
                       f"{lr_note}, {args.epochs} epochs")
        else:
            print_main(f"processes {world} on {lc.device.type}, global batch {args.batch_size} = {per_process} per "
                       f"process, lr {args.lr} for the global batch (not rescaled), {args.epochs} epochs")
        if args.device_batch is not None:
            groups = per_process // args.device_batch
            print_main(f"--device-batch {args.device_batch}: {args.batch_size // args.device_batch} virtual devices "
                       f"({groups} per process); BatchNorm, the in-batch contrast set, shuffle-BN and mixup work per "
                       f"group of {args.device_batch}, as on {args.batch_size // args.device_batch} GPUs"
                       + (f" (dry run: groups of {device_batch_of(args)})" if args.dry_run else ""))
        if args.bn_device_batch is not None:
            groups = per_process // args.bn_device_batch
            gpus = args.batch_size // args.bn_device_batch
            print_main(f"--bn-device-batch {args.bn_device_batch}: BatchNorm normalises {groups} group(s) of "
                       f"{args.bn_device_batch} per process, as DataParallel on {gpus} GPUs; mixup and the "
                       f"contrast set see the whole per-process batch of {per_process}"
                       + (f" (dry run: groups of {bn_device_batch_of(args)})" if args.dry_run else ""))

    def model_options(self) -> Dict[str, Any]:
        return model_kwargs(self.args)

    def build_model(self, lc: TrainingRun, fresh: bool) -> torch.nn.Module:
        args, method = self.args, self.method
        self._resolve_selection()  # needs the resumed checkpoint, known from here on
        if args.dry_run and args.pretrained and not os.path.exists(args.pretrained):
            print_main(f"warning: --pretrained {args.pretrained} not found; the dry run uses random weights")
            args.pretrained = None
        options = self.model_options()
        model = method.build_model(args.arch, self.num_classes, **options)
        self.model_config = model_config(method.name, method.task, args.arch, self.num_classes, options)
        if args.finetune and args.dry_run and not os.path.exists(args.finetune):
            print_main(f"warning: --finetune {args.finetune} not found; the dry run uses random weights")
        elif args.finetune and fresh:
            finetune_from(model, args.finetune)  # a resumed run takes every weight from its checkpoint
        if fresh:  # a resumed run takes every weight from its checkpoint
            self._prepare(model)
        if args.freeze == "all_but_last_block":
            print_main(f"froze {freeze_all_but_last_block(model)} conv layers (all but the last block)")
        model.to(lc.device)
        return model

    def _prepare(self, model: torch.nn.Module) -> None:
        try:
            line = self.method.prepare(model, vars(self.args))
        except FileNotFoundError as e:
            if not self.args.dry_run:
                raise FlagError(str(e)) from None
            line = f"warning: {e}; the dry run uses random weights"
        except ValueError as e:
            raise FlagError(str(e)) from None
        if line:
            print_main(line)

    def _memory_format_flag(self, device: torch.device, amp: str) -> Optional[bool]:
        """``--channels-last``/``--no-channels-last`` as given; left out, a resumed run keeps the
        memory format its checkpoint recorded (a resume is the same run, whatever this device's
        default), and says so when that differs from the default here."""
        recorded = (self.checkpoint or {}).get("channels_last") if self.checkpoint is not None else None
        if self.args.channels_last is not None or recorded is None:
            return self.args.channels_last
        if recorded != resolve_channels_last(None, device, amp):
            print_main(f"note: the resumed run trains in {'channels-last' if recorded else 'NCHW'} memory order as "
                       f"its checkpoint recorded (this device's default is the other; --channels-last / "
                       f"--no-channels-last choose)")
        return recorded

    def build_context(self, lc: TrainingRun, model: torch.nn.Module) -> FitContext:
        args, method, device = self.args, self.method, lc.device
        amp = resolve_amp(args.amp, device, dry_run=args.dry_run)  # a CPU dry run: float32, still via the GradScaler
        channels_last = resolve_channels_last(self._memory_format_flag(device, amp), device, amp)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        loss_kw = method_options(method, vars(args))[1]
        try:  # the criterion's options are flags; a value that does not fit the data names its flag
            criterion = method.build_criterion(num_classes=self.num_classes, class_counts=self.train_counts, **loss_kw)
        except ValueError as e:
            raise FlagError(str(e)) from None
        try:  # e.g. --layer-decay on a timm network without ViT blocks
            optimizer = build_optimizer(model, lr_scales=method.lr_scales(model, vars(args)), **optimizer_kwargs(args))
        except ValueError as e:
            raise FlagError(f"--optimizer {args.optimizer}: {e}") from None
        self.schedule = schedule_from_flags(args.schedule, vars(args))
        self.batch = args.dry_run_batch if args.dry_run else self.per_process_batch
        erasing, mixup = build_batch_augment(args, self.num_classes, device, self.batch, device_batch_of(args))
        device_augment = DeviceAugment(*NORMALIZATION[args.norm]) if getattr(args, "gpu_aug", False) else None
        return FitContext(
            model=model, module=model, criterion=criterion.to(device), optimizer=optimizer, method=method,
            device=device, options=vars(args), amp=amp, channels_last=channels_last,
            scaler=torch.amp.GradScaler(device.type) if args.amp == "fp16" else None, world_size=lc.world_size,
            accum_iter=args.accum_iter, clip_grad=args.clip_grad, lifecycle=lc,
            schedule=self.schedule if self.schedule.per_iteration else None, epochs=None, print_freq=args.print_freq,
            to_batch=batch_transform(random_erasing=erasing, mixup_fn=mixup, device_augment=device_augment),
            evaluate=self.evaluate_other)

    def train_loader(self, ctx: FitContext):
        args, lc = self.args, ctx.lifecycle
        pin = ctx.device.type == "cuda"
        workers = 0 if args.dry_run else args.workers
        # --device-batch groups need whole batches; --bn-device-batch splits a partial one evenly
        drop_last = self.method.drop_last or args.device_batch is not None
        loader = train_loader(self.train_set, batch_size=self.batch, workers=workers, rank=lc.rank,
                              world_size=lc.world_size, seed=args.seed, pin_memory=pin, sampler=self.method.sampler,
                              drop_last=drop_last)
        self.val_dl, self.test_dl = (eval_loader(s, batch_size=self.batch, workers=workers, rank=lc.rank,
                                                 world_size=lc.world_size, pin_memory=pin) if s is not None else None
                                     for s in (self.val_set, self.test_set))
        if len(loader) == 0:
            raise FlagError(f"the train split has {len(self.train_set)} images, fewer than one global batch "
                            f"(--batch-size {args.batch_size}); lower --batch-size")
        ctx.steps_per_epoch = len(loader)  # the full epoch (a method's per-iteration clock: GenDD's beta2)
        return loader

    def evaluate(self, ctx: FitContext, loader, **kw) -> dict:
        return self._with_shots(evaluate(ctx.module, loader, num_classes=self.num_classes,
                                         train_counts=self.train_counts, device=ctx.device, amp=ctx.amp,
                                         channels_last=ctx.channels_last, forward=self.method.eval_forward, **kw))

    def _with_shots(self, metrics: dict) -> dict:
        """Without training class counts (unlabelled shards) many/medium/few do not exist: None
        (printed "—", null in metrics.json) rather than absent."""
        if self.train_counts is None:
            for key in ("many", "medium", "few"):
                metrics.setdefault(key, None)
        return metrics

    def evaluate_other(self, model: torch.nn.Module, forward=None) -> Optional[Tuple[str, dict]]:
        """``ctx.evaluate``: (split, metrics) of a model other than the trained one (a teacher) on
        the test split, else val (None: neither); one batch in a dry run. Callable from a
        method's ``setup``, before the training loaders exist."""
        split, dataset = next(((n, s) for n, s in (("test", self.test_set), ("val", self.val_set)) if s is not None),
                              (None, None))
        if dataset is None:
            return None
        args, ctx, lc = self.args, self.fit.ctx, self.fit.lc
        loader = eval_loader(dataset, batch_size=self.batch, workers=0 if args.dry_run else args.workers,
                             rank=lc.rank, world_size=lc.world_size, pin_memory=ctx.device.type == "cuda")
        return split, self._with_shots(evaluate(model, loader, num_classes=self.num_classes,
                                                train_counts=self.train_counts, device=ctx.device, amp=ctx.amp,
                                                channels_last=ctx.channels_last, forward=forward,
                                                max_steps=1 if args.dry_run else None))

    # ------------------------------------------------------------------ the run
    def dry_run(self, ctx: FitContext, loader) -> dict:
        from gpaco.engine.step import train_epoch

        # Two micro-batches; with --accum-iter > 1 they form one accumulation cycle, so the
        # dry run goes through both the no-step and the step path.
        ctx.print_freq, ctx.accum_iter, ctx.lifecycle = 1, min(self.args.accum_iter, 2), None
        stats = train_epoch(ctx, loader, epoch=0, max_steps=2)
        if self.val_dl is not None or self.test_dl is not None:
            self.evaluate(ctx, self.val_dl or self.test_dl, max_steps=1)
        stats.pop("last")
        print_main(f"dry run ok: 2 steps, loss {stats['train_loss']:.4f}"
                   f"{' on SYNTHETIC images (--data-root does not exist)' if self.synthetic else ''}; nothing written")
        return {"dry_run": True, **stats}

    def read_position(self, ckpt: dict) -> Position:
        return Position(epoch=int(ckpt["epoch"]), step=int(ckpt.get("step") or 0),
                        epoch_state=ckpt.get("epoch_state"), rng_per_rank=ckpt.get("rng_per_rank") or [],
                        batch_size=(ckpt.get("args") or {}).get("batch_size"), class_counts=ckpt.get("class_counts"))

    def resumed(self, position: Position, loader, lc: TrainingRun) -> str:
        path, epoch, step = lc.resume_path, position["epoch"], position["step"]
        counts = position.get("class_counts")
        if counts is not None and self.train_counts is not None and list(counts) != list(self.train_counts):
            changed = sum(a != b for a, b in zip(counts, self.train_counts)) + abs(len(counts) - len(self.train_counts))
            raise FlagError(f"--resume: the training split's class counts differ from {path}'s in {changed} "
                            f"class(es) (was the train list edited?): the prior, the sampler and the order would "
                            f"change; restore the list, or start a new run in another --output-dir")
        if is_label_free(self.args.dataset):
            self._note_stream_change(loader, path)
        if step:
            if position.get("batch_size") not in (None, self.args.batch_size):
                raise FlagError(f"--resume: --batch-size {position['batch_size']} -> {self.args.batch_size} in the "
                                f"middle of epoch {epoch + 1} ({path} stopped after {step} batches of "
                                f"{position['batch_size']}): the rest of the epoch would skip or repeat images; "
                                f"resume with --batch-size {position['batch_size']}")
            if step >= len(loader):
                raise CheckpointError(f"{path} stopped at step {step} of epoch {epoch + 1}, but an epoch now has "
                                      f"{len(loader)} steps (--batch-size or data changed?)")
            states = position["rng_per_rank"]
            if len(states) == lc.world_size:
                position["rng"] = states[lc.rank]
            else:
                print_main(f"warning: {path} was written by {len(states)} process(es), this run has {lc.world_size}: "
                           f"the rest of epoch {epoch + 1} is not bit-identical to an uninterrupted run")
            return f"resumed from {path}: epoch {epoch + 1} step {step}/{len(loader)}"
        if epoch >= self.epochs:
            return (f"resumed from {path}: the run had finished (epoch {epoch} of {self.epochs}); nothing to "
                    f"train, its results are reported again (--overwrite trains it anew)")
        return f"resumed from {path}: epoch {epoch} done"

    def _note_stream_change(self, loader, path: str) -> None:
        """Tar shards: each loader worker reads its own shards, so the worker count shapes the
        batches; a resume with another count trains on, from other batches."""
        before, now = ((self.checkpoint or {}).get("args") or {}).get("workers"), self.args.workers
        if before is not None and loader.streams_with(before) != loader.streams_with(now):
            print_main(f"warning: {path} read the shards with --workers {before}, this run with {now}: each worker "
                       f"reads its own shards, so the batches from here on are not those of an uninterrupted run")

    def say_resumed(self, note: str) -> None:
        ckpt = self.checkpoint or {}
        if int(ckpt.get("epoch", 0)) >= self.epochs and not ckpt.get("step"):
            print_main(note)  # a finished run: its results are reported again below
            return
        best = f"best val {_METRIC_LABELS[self.select_key]} {self.best_metric:.2f} at epoch {self.best_step}" \
            if self.best_step > 0 else "no best yet"
        print_main(f"{note}, {best}")

    def position_state(self, position: Position) -> Dict[str, Any]:
        state = {"epoch": position["epoch"], "step": position["step"], "class_counts": self.train_counts,
                 "class_names": self.class_names,
                 "channels_last": self.fit.ctx.channels_last}
        if position.get("log"):
            state["pending_log"] = to_jsonable(position["log"])  # plain values: weights_only loads them
        if position["step"]:
            state.update(epoch_state=position["epoch_state"], rng_per_rank=position["rng_per_rank"],
                         world_size=position["world_size"])
        return state

    def describe_stop(self, position: Position, epoch_steps: int) -> Tuple[str, str, Dict[str, Any]]:
        epoch, step = position["epoch"], position["step"]
        if step:
            return (f"epoch {epoch + 1} step {step}", f"epoch {epoch + 1} step {step}/{epoch_steps}",
                    {"epoch": epoch, "step": step})
        return f"the end of epoch {epoch}", f"the end of epoch {epoch}", {"epoch": epoch, "step": 0}

    def start_epoch(self, ctx: FitContext, loader, epoch: int, skip: int, rng: Optional[dict]) -> None:
        set_train_epoch(loader, epoch, skip)
        # Every epoch's randomness derives from (seed, epoch, rank): resuming at an epoch
        # boundary reproduces the uninterrupted run exactly. Mid-epoch, the RNG states of
        # that moment (per rank) come from the checkpoint; augmentations are seeded per
        # sample (EpochSeededDataset) and the sampler starts after the done batches.
        seed_everything(self.args.seed + 100_003 * (epoch + 1) + ctx.lifecycle.rank)
        if skip and rng is not None:
            set_rng_state(rng)
        self.epoch_lr = self.schedule(epoch)  # per-iteration schedules: the LR at the epoch start
        if not self.schedule.per_iteration:
            LRSchedule.apply(ctx.optimizer, self.epoch_lr)  # honours the groups' lr_scale (layer decay)

    def end_epoch(self, ctx: FitContext, epoch: int, stats: dict) -> None:
        args, lc = self.args, ctx.lifecycle
        record = {"epoch": epoch + 1, "lr": self.epoch_lr, **stats}
        if args.skip_bad_images and hasattr(self.train_set, "num_skipped"):
            record["skipped_images"] = self.train_set.num_skipped  # this rank's, since the start of this process
            if self.train_set.num_skipped:
                print_main(f"[epoch {epoch + 1}] --skip-bad-images: {self.train_set.num_skipped} unreadable image(s) "
                           f"skipped so far (rank 0; each is named in a warning above)")
        is_best = False
        if self.val_dl is not None and ((epoch + 1) % args.eval_freq == 0 or epoch + 1 == args.epochs):
            val = self.evaluate(ctx, self.val_dl)
            record.update({f"val_{k}": val.get(k) for k in _TEST_KEYS})
            record.update({f"val_{head}_top1": m["top1"] for head, m in val.get("heads", {}).items()})
            is_best = val[self.select_key] > self.best_metric
            if is_best:
                self.best_metric, self.best_step = val[self.select_key], epoch + 1
            groups = " / ".join(f"{g} {format_accuracy(val[g])}" for g in ("many", "medium", "few"))
            mean_class = f", mean per-class {val['mean_class_acc']:.2f}" if self.select_key != "top1" else ""
            print_main(f"[epoch {epoch + 1}] val top-1 {val['top1']:.2f}{mean_class} ({groups}){_heads_note(val)}; "
                       f"best {self.best_metric:.2f} at epoch {self.best_step}")
        # The record rides in the checkpoint: a kill or full disk before the lines below is
        # made good on resume (RunLogger.log_pending). TensorBoard first: a record in log.jsonl
        # then implies its scalars were written.
        self.fit.save(Position(epoch=epoch + 1, step=0, log=record), best=is_best,
                      where=f"the end of epoch {epoch + 1}")
        lc.logger.log_scalars({k: v for k, v in record.items() if isinstance(v, (int, float))}, epoch + 1)
        lc.logger.log_epoch(record)

    def finish(self, ctx: FitContext, last_epoch: int) -> dict:
        args, lc = self.args, ctx.lifecycle
        if last_epoch < args.epochs:
            print_main(f"stopped after epoch {last_epoch} of {args.epochs} (--stop-after); continue with --resume auto")
            return {"stopped_at_epoch": last_epoch}
        # Final report on the test split with the checkpoint selected on val (the original selected on test).
        selection = "last epoch (no --val-list)"
        if self.val_dl is not None and self.best_step > 0:
            lc.barrier()
            ctx.module.load_state_dict(lc.load_best("epoch", self.best_step)["model"])
            selection = f"best val {_METRIC_LABELS[self.select_key]} {self.best_metric:.2f} at epoch {self.best_step}"
        result = {"selection": selection, "selected_epoch": self.best_step if self.best_step > 0 else args.epochs,
                  "select_metric": args.select_metric}
        if self.class_names is not None:  # metrics.json names the classes (tools/compare_runs.py, gpaco-predict)
            result["class_names"] = list(self.class_names)
        if self.test_dl is not None:
            test = self.evaluate(ctx, self.test_dl)
            if self.class_names is not None:  # per_class.csv/png, confusion.png and the worst class name them
                test["class_names"] = list(self.class_names)
            result.update(test)
            groups = " ".join(f"{g} {format_accuracy(test[g])}" for g in ("many", "medium", "few"))
            print_main(f"test ({selection}): top-1 {test['top1']:.2f} top-5 {test['top5']:.2f} | {groups} | "
                       f"{test['num_samples']} images{_heads_note(test)}")
            print_main(fairness_line(test))
            lc.logger.log_scalars({f"test_{k}": test.get(k) for k in _TEST_KEYS}, args.epochs)
            if lc.is_main:
                write_eval_report(args.output_dir, test, self.train_counts)
        if lc.is_main:
            write_json(os.path.join(args.output_dir, "metrics.json"), result)
            plot_curves(read_summary(os.path.join(args.output_dir, SUMMARY_NAME)),
                        os.path.join(args.output_dir, "curves.png"))
        return result
