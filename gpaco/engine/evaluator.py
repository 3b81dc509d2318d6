"""tools/eval.py: evaluate a checkpoint on a split with the same metrics as the end of training."""
from __future__ import annotations

import argparse
import json
import os
from typing import Optional, Sequence

import torch

from gpaco.data.build import build_eval_dataset, build_train_dataset, class_counts_of, data_available, eval_loader
from gpaco.distributed import cleanup, init_distributed
from gpaco.engine.args import METHODS, FlagError, add_data_flags, add_model_flags
from gpaco.engine.checkpoint import check_writable, load_checkpoint
from gpaco.engine.logging import print_main, to_jsonable
from gpaco.engine.loop import evaluate
from gpaco.engine.report import write_eval_report
from gpaco.models import build_model


def build_eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/eval.py", description="Evaluate a gpaco checkpoint: top-1/top-5, "
                                "many/medium/few and per-class accuracy, exact under torchrun.")
    add_data_flags(p)
    add_model_flags(p)
    # Unset model/data flags fall back to the checkpoint's training flags, then to the defaults.
    p.set_defaults(method=None, arch=None, proj_dim=None, queue_size=None, norm=None, image_size=None)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by tools/train.py (best.pth, checkpoint.pth)")
    p.add_argument("--batch-size", "-b", type=int, default=128, help="global evaluation batch")
    p.add_argument("--output-dir", default=None, help="where metrics.json and per_class.* go "
                                                      "(default: CHECKPOINT_DIR/eval)")
    p.add_argument("--dry-run", action="store_true", help="build everything, evaluate one small batch "
                   "(random weights if the checkpoint is absent), write nothing")
    return p


def run(args: argparse.Namespace) -> dict:
    dist = init_distributed()
    device = dist.device
    if args.batch_size % dist.world_size:
        raise FlagError(f"--batch-size {args.batch_size} must be divisible by the number of processes "
                        f"({dist.world_size})")
    ckpt = None
    if os.path.exists(args.checkpoint):
        ckpt = load_checkpoint(args.checkpoint)
    elif not args.dry_run:
        raise FlagError(f"--checkpoint {args.checkpoint}: no such file")
    meta = ckpt or {}
    resolve_from_checkpoint(args, meta.get("args") or {})
    method, arch = args.method, args.arch
    if method not in METHODS:
        raise FlagError(f"--method {method} is not one of {METHODS}")
    num_classes = args.num_classes or meta.get("num_classes")
    train_counts = meta.get("class_counts")
    synthetic = args.dry_run and not data_available_for_eval(args)
    if args.dry_run:
        args.image_size = min(args.image_size, 64)
        args.resize_size = None
    if train_counts is None and args.train_list and os.path.isfile(args.train_list):
        args.aug = "none"
        args.randaug_n, args.randaug_m = 2, 10
        train_set = build_train_dataset(args)
        num_classes = num_classes or train_set.num_classes
        train_counts = class_counts_of(train_set, num_classes)
    if num_classes is None:
        num_classes = 1000 if not args.dry_run else 10
    test_set = build_eval_dataset(args, args.test_list, num_classes=num_classes, synthetic=synthetic)
    if test_set is None:
        raise FlagError("--test-list is required (the split to evaluate)")

    model = build_model(method, arch, num_classes, proj_dim=args.proj_dim, queue_size=args.queue_size,
                        pretrained=None)
    if ckpt is not None:
        from gpaco.engine.trainer import load_model_state

        load_model_state(model, ckpt["model"], args.checkpoint)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    batch = 4 if args.dry_run else args.batch_size // dist.world_size
    loader = eval_loader(test_set, batch_size=batch, workers=0 if args.dry_run else args.workers,
                         rank=dist.rank, world_size=dist.world_size, pin_memory=device.type == "cuda")
    metrics = evaluate(model, loader, num_classes=num_classes, device=device, train_counts=train_counts,
                       amp=args.amp, channels_last=args.channels_last, max_steps=1 if args.dry_run else None)
    shots = (f" | many {metrics['many']:.2f} medium {metrics['medium']:.2f} few {metrics['few']:.2f}"
             if "many" in metrics else " | many/medium/few need the train counts (--train-list)")
    print_main(f"{args.checkpoint}: top-1 {metrics['top1']:.2f} top-5 {metrics['top5']:.2f}{shots} | "
               f"{metrics['num_samples']} images")
    if not args.dry_run and dist.rank == 0:
        out = args.output_dir or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "eval")
        check_writable(out)
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump(to_jsonable({"checkpoint": args.checkpoint, **metrics}), f, indent=1)
        if train_counts is not None:
            write_eval_report(out, metrics, train_counts)
        print_main(f"wrote {out}/metrics.json")
    cleanup()
    return metrics


FALLBACKS = {"method": "ce", "arch": "resnet50", "proj_dim": 128, "queue_size": 8192, "norm": "imagenet",
             "image_size": 224}


def resolve_from_checkpoint(args: argparse.Namespace, train_args: dict) -> None:
    for name, default in FALLBACKS.items():
        if getattr(args, name) is None:
            setattr(args, name, train_args.get(name, default))
    if args.resize_size is None and train_args.get("resize_size") and args.image_size == train_args.get("image_size"):
        args.resize_size = train_args["resize_size"]


def data_available_for_eval(args: argparse.Namespace) -> bool:
    if args.dataset.startswith("cifar"):
        return os.path.isdir(args.data_root)
    return bool(args.test_list) and os.path.isfile(args.test_list) and os.path.isdir(args.data_root)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    return run(build_eval_parser().parse_args(argv))
