"""tools/eval.py: evaluate one checkpoint or an ensemble, on a split and on robustness benchmarks.

* ``--checkpoint`` reads our checkpoints, the original's released files (PaCo/GPaCo ResNets,
  MAE-style ViTs), converted copies and ``.safetensors`` (:mod:`gpaco.engine.convert`); the
  layout is detected and whatever is unused or missing is printed and recorded in
  ``metrics.json`` (``checkpoints``). Nothing is unpickled beyond tensors and plain
  containers: a file that needs more is refused with the conversion command.
* Repeated ``--checkpoint`` sums the raw logits of the models (the paper's ensembles); each
  takes its ``--arch``/``--method`` in the same order (or one for all, or its own metadata).
* ``--save-logits FILE.npy``: the (summed) logits in test-list order, also under torchrun.
* ``--corrupted-root`` (ImageNet-C or a ``tools/make_corrupted.py`` tree), ``--imagenet-r-root``,
  ``--imagenet-sketch-root``: the robustness benchmarks (:mod:`gpaco.engine.robustness`).
* Writes ``metrics.json``, ``per_class.csv``, ``per_class.png`` and (<= 100 classes)
  ``confusion.png`` to ``--output-dir``. Exact under torchrun: every image counted once.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from typing import List, Optional, Sequence

import numpy as np
import torch

from gpaco.data.build import build_eval_dataset, build_train_dataset, class_counts_of, eval_loader
from gpaco.distributed import cleanup, init_distributed, is_dist
from gpaco.engine.args import METHODS, FlagError, add_data_flags, add_model_flags
from gpaco.engine.checkpoint import CheckpointError, check_writable
from gpaco.engine.convert import CheckpointMismatchError, build_model_from_checkpoint, read_checkpoint
from gpaco.engine.logging import print_main, to_jsonable
from gpaco.engine.loop import predict
from gpaco.engine.report import write_eval_report


class _Repeatable(argparse.Action):
    """``--arch A --arch B``: ``args.arch`` is the last value (argparse's usual meaning),
    ``args.<dest>_list`` all of them in order (``--checkpoint``: the ensemble's members)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, self.dest + "_list", list(getattr(namespace, self.dest + "_list", None) or []) + [values])


def build_eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/eval.py", conflict_handler="resolve",
                                description="Evaluate gpaco or original PaCo/GPaCo checkpoints (one, or an ensemble "
                                            "summing their logits): top-1/top-5, many/medium/few, per-class report, "
                                            "ImageNet-C/-R/-Sketch; exact under torchrun.")
    add_data_flags(p)
    add_model_flags(p)
    g = p.add_argument_group("checkpoints (repeat --checkpoint for an ensemble)")
    g.add_argument("--checkpoint", action=_Repeatable, required=True, metavar="PATH",
                   help="ours (best.pth, checkpoint.pth), the original's released .pth.tar / MAE .pth, a converted "
                        "file or .safetensors; repeat it to sum the logits of several models")
    g.add_argument("--arch", "-a", action=_Repeatable, default=None,
                   help="backbone; repeat in --checkpoint order for an ensemble (one value: all). Default: the "
                        "checkpoint's own (ours, the original's 'arch', MAE's args.model)")
    g.add_argument("--method", action=_Repeatable, choices=METHODS, default=None,
                   help="model type; repeat like --arch. Default: the checkpoint's, else what its layout implies")
    # Unset model/data flags fall back to the checkpoint's training flags, then to the defaults.
    p.set_defaults(proj_dim=None, queue_size=None, norm=None, image_size=None, interpolation=None, arch_list=None,
                   method_list=None, checkpoint_list=None)
    p.add_argument("--batch-size", "-b", type=int, default=128, help="global evaluation batch")
    p.add_argument("--output-dir", default=None, help="where metrics.json and per_class.* go "
                                                      "(default: CHECKPOINT_DIR/eval, ensembles .../eval_ensemble)")
    p.add_argument("--save-logits", default=None, metavar="FILE.npy",
                   help="write the (summed) logits of the test split, [N, C] float32 in test-list order")
    r = p.add_argument_group("robustness (SPEC §5)")
    r.add_argument("--corrupted-root", default=None, metavar="DIR",
                   help="ImageNet-C (<corruption>/<1..5>/<wnid>/...) or a tools/make_corrupted.py tree: error per "
                        "corruption and severity, the unnormalised mCE (the paper's 'mCE') and, for ImageNet-C, the "
                        "AlexNet-normalised one (the paper's 'rel. mCE')")
    r.add_argument("--mce-baseline", default=None, metavar="METRICS_JSON",
                   help="normalise the mean corruption error by this baseline evaluation's per-corruption errors "
                        "(its metrics.json from tools/eval.py --corrupted-root, or its folder)")
    r.add_argument("--imagenet-r-root", default=None, metavar="DIR",
                   help="ImageNet-R (200 wnid folders): top-1 over the 200 masked columns of a 1000-way head")
    r.add_argument("--imagenet-sketch-root", default=None, metavar="DIR",
                   help="ImageNet-Sketch (1000 wnid folders): top-1 with the full head")
    p.add_argument("--dry-run", action="store_true", help="build everything, evaluate one small batch "
                   "(random weights if the checkpoint is absent), write nothing")
    return p


FALLBACKS = {"method": "ce", "arch": "resnet50", "proj_dim": 128, "queue_size": 8192, "norm": "imagenet",
             "image_size": 224}


def resolve_from_checkpoint(args: argparse.Namespace, train_args: dict) -> None:
    for name, default in FALLBACKS.items():
        if getattr(args, name, None) is None:
            setattr(args, name, train_args.get(name, default))
    if args.resize_size is None and train_args.get("resize_size") and args.image_size == train_args.get("image_size"):
        args.resize_size = train_args["resize_size"]
    if getattr(args, "interpolation", None) is None:
        args.interpolation = train_args.get("interpolation") or "bilinear"


def data_available_for_eval(args: argparse.Namespace) -> bool:
    if args.dataset.startswith("cifar"):
        return os.path.isdir(args.data_root)
    return bool(args.test_list) and os.path.isfile(args.test_list) and os.path.isdir(args.data_root)


def per_checkpoint(values: Optional[List[str]], n: int, flag: str) -> List[Optional[str]]:
    """One value per checkpoint: none given -> None each; n -> in order; one -> for all; more than n
    -> the last n (later flags override earlier ones, as EXTRA_ARGS in the recipes)."""
    if not values:
        return [None] * n
    if len(values) == n:
        return list(values)
    if len(values) == 1:
        return list(values) * n
    if len(values) > n:
        return list(values[-n:])
    raise FlagError(f"{len(values)} {flag} values for {n} checkpoints: give one per --checkpoint, in the same "
                    f"order, or one for all")


# --------------------------------------------------------------------------- inference


def gather_in_order(local: torch.Tensor, num_samples: int, rank: int, world_size: int,
                    device: torch.device) -> Optional[torch.Tensor]:
    """Every rank's shard rows back in dataset order (rank r holds r, r+W, ...); on rank 0 only."""
    if world_size == 1 or not is_dist():
        return local
    n_max = math.ceil(num_samples / world_size)
    width = local.shape[1]
    buf = torch.zeros(n_max, width, dtype=torch.float32, device=device)
    buf[:local.shape[0]] = local.to(device)
    parts = [torch.zeros_like(buf) for _ in range(world_size)]
    torch.distributed.all_gather(parts, buf)
    if rank != 0:
        return None
    out = torch.empty(num_samples, width, dtype=torch.float32)
    for r in range(world_size):
        n_r = len(range(r, num_samples, world_size))
        out[r::world_size] = parts[r][:n_r].cpu()
    return out


# --------------------------------------------------------------------------- run


def _load_members(args, dry_run: bool):
    paths = list(args.checkpoint_list or [args.checkpoint])
    archs = per_checkpoint(args.arch_list, len(paths), "--arch")
    methods = per_checkpoint(args.method_list, len(paths), "--method")
    loaded = []
    for path in paths:
        if os.path.exists(path):
            try:
                loaded.append(read_checkpoint(path))
            except FileNotFoundError as e:
                raise FlagError(str(e)) from None
            except CheckpointError as e:
                raise FlagError(str(e)) from None
        elif dry_run:
            loaded.append(None)
        else:
            raise FlagError(f"--checkpoint {path}: no such file")
    return paths, archs, methods, loaded


def run(args: argparse.Namespace) -> dict:
    dist = init_distributed()
    device = dist.device
    if args.batch_size % dist.world_size:
        raise FlagError(f"--batch-size {args.batch_size} must be divisible by the number of processes "
                        f"({dist.world_size})")
    paths, archs, methods, loaded = _load_members(args, args.dry_run)
    first = next((c for c in loaded if c is not None), None)
    first_args = (first.meta.get("args") or {}) if first is not None else {}
    # data flags: the command line, then the first checkpoint's training flags, then the defaults
    if first is not None:
        args.arch = args.arch or first.meta.get("arch")
        args.method = args.method or first.meta.get("method")
    resolve_from_checkpoint(args, first_args)
    fallback_classes = args.num_classes or (first.meta.get("num_classes") if first else None) or \
        (10 if args.dry_run else 1000)
    models, reports = [], []
    for c, arch, method in zip(loaded, archs, methods):
        try:
            model, report = build_model_from_checkpoint(
                c, method=method or (args.method if c is None else None),
                arch=arch or (args.arch if c is None else None),
                num_classes=args.num_classes or (fallback_classes if c is None else None),
                defaults={"proj_dim": args.proj_dim, "queue_size": args.queue_size})
        except CheckpointMismatchError as e:
            raise SystemExit(f"error: {e}") from None
        except CheckpointError as e:
            raise FlagError(str(e)) from None
        models.append(model.to(device))
        reports.append(report)
        if report is not None:
            print_main(report.summary())
    sizes = {int(m.fc.out_features) for m in models}
    if len(sizes) != 1:
        raise FlagError(f"the ensemble's models have different numbers of classes: {sorted(sizes)}")
    num_classes = sizes.pop()
    if args.channels_last:
        for m in models:
            m.to(memory_format=torch.channels_last)

    train_counts = first.meta.get("class_counts") if first is not None else None
    if train_counts is not None and len(train_counts) != num_classes:
        train_counts = None
    if train_counts is None and args.train_list and os.path.isfile(args.train_list):
        args.aug = "none"
        args.randaug_n, args.randaug_m = 2, 10
        train_set = build_train_dataset(args)
        train_counts = class_counts_of(train_set, num_classes)
    if args.dry_run:
        args.image_size = min(args.image_size, 64)
        args.resize_size = None
    synthetic = args.dry_run and not data_available_for_eval(args)
    robustness = [x for x in (args.corrupted_root, args.imagenet_r_root, args.imagenet_sketch_root) if x]
    test_set = None
    if args.test_list or args.dataset.startswith("cifar") or synthetic and not robustness:
        test_set = build_eval_dataset(args, args.test_list, num_classes=num_classes, synthetic=synthetic)
    if test_set is None and not robustness:
        raise FlagError("--test-list is required (the split to evaluate), or a robustness root "
                        "(--corrupted-root / --imagenet-r-root / --imagenet-sketch-root)")
    if test_set is None and args.save_logits:
        raise FlagError("--save-logits writes the logits of the test split: give --test-list")
    baseline = None
    if args.mce_baseline:
        if not args.corrupted_root:
            raise FlagError("--mce-baseline needs --corrupted-root")
        from gpaco.engine.robustness import load_baseline_errors

        try:
            baseline = load_baseline_errors(args.mce_baseline)
        except (FileNotFoundError, ValueError) as e:
            raise FlagError(str(e)) from None

    batch = 4 if args.dry_run else args.batch_size // dist.world_size
    workers = 0 if args.dry_run else args.workers
    max_steps = 1 if args.dry_run else None
    common = dict(num_classes=num_classes, device=device, amp=args.amp, channels_last=args.channels_last,
                  max_steps=max_steps)

    def loader_of(dataset):
        return eval_loader(dataset, batch_size=batch, workers=workers, rank=dist.rank, world_size=dist.world_size,
                           pin_memory=device.type == "cuda")

    name = paths[0] if len(paths) == 1 else "ensemble of " + " + ".join(paths)
    result: dict = {"checkpoint": paths[0] if len(paths) == 1 else list(paths)}
    confusion = None
    logits_all = None
    if test_set is not None:
        meter, local = predict(models, loader_of(test_set), keep_logits=bool(args.save_logits), **common)
        metrics = meter.compute(train_counts)
        if meter.confusion is not None:
            confusion = meter.confusion.cpu()
            metrics["confusion"] = confusion.tolist()
        if args.save_logits and not args.dry_run:
            logits_all = gather_in_order(local, len(test_set), dist.rank, dist.world_size, device)
        shots = (f" | many {metrics['many']:.2f} medium {metrics['medium']:.2f} few {metrics['few']:.2f}"
                 if "many" in metrics else " | many/medium/few need the train counts (--train-list)")
        print_main(f"{name}: top-1 {metrics['top1']:.2f} top-5 {metrics['top5']:.2f}{shots} | "
                   f"{metrics['num_samples']} images")
        result.update(metrics)
    result.update(_robustness(args, models, common, loader_of, num_classes, baseline))
    if len(paths) > 1:
        result["ensemble"] = {"checkpoints": list(paths), "archs": [r.arch if r else a for r, a in zip(reports, archs)],
                              "combination": "sum of raw logits"}
    result["checkpoints"] = [r.as_dict() for r in reports if r is not None]

    if not args.dry_run and dist.rank == 0:
        out = args.output_dir or os.path.join(os.path.dirname(os.path.abspath(paths[0])),
                                              "eval" if len(paths) == 1 else "eval_ensemble")
        check_writable(out)
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump(to_jsonable(result), f, indent=1)
        if test_set is not None:
            write_eval_report(out, result, train_counts, confusion=confusion)
        if logits_all is not None:
            parent = os.path.dirname(os.path.abspath(args.save_logits))
            os.makedirs(parent, exist_ok=True)
            np.save(args.save_logits, logits_all.numpy().astype(np.float32))
            print_main(f"wrote {args.save_logits} ({logits_all.shape[0]} x {logits_all.shape[1]} logits, "
                       f"test-list order)")
        print_main(f"wrote {out}/metrics.json" + (", per_class.csv, per_class.png" if test_set is not None else "")
                   + (", confusion.png" if confusion is not None else ""))
    cleanup()
    return result


def _robustness(args, models, common, loader_of, num_classes: int, baseline) -> dict:
    from gpaco.data.build import _normalization
    from gpaco.data.transforms import build_eval_transform
    from gpaco.engine.robustness import (
        ImageFolderDataset, corruption_table, evaluate_corruptions, imagenet_r_columns,
    )

    out: dict = {}
    if not (args.corrupted_root or args.imagenet_r_root or args.imagenet_sketch_root):
        return out
    mean, std = _normalization(args)
    transform = build_eval_transform(args.image_size, resize_size=args.resize_size, mean=mean, std=std,
                                     interpolation=getattr(args, "interpolation", "bilinear"))

    def absent(flag, root):
        if os.path.isdir(root):
            return False
        if args.dry_run:
            print_main(f"dry run: {flag} {root} is absent; skipped")
            return True
        raise FlagError(f"{flag} {root}: no such folder")

    if args.corrupted_root and not absent("--corrupted-root", args.corrupted_root):
        def evaluate_folder(folder):
            ds = ImageFolderDataset(folder, transform, num_classes=num_classes)
            meter, _ = predict(models, loader_of(ds), **common)
            m = meter.compute()
            return {"top1": m["top1"], "num_samples": m["num_samples"], "label_index_named": ds.label_index_named}

        print_main(f"corruptions: {args.corrupted_root}")
        try:
            res = evaluate_corruptions(args.corrupted_root, evaluate_folder,
                                       baseline_errors=baseline[0] if baseline else None,
                                       baseline_label=baseline[1] if baseline else None,
                                       max_folders=2 if args.dry_run else None, log=print_main)
        except (FileNotFoundError, ValueError) as e:
            raise FlagError(str(e)) from None
        print_main(corruption_table(res))
        out["corruption"] = res
    if args.imagenet_r_root and not absent("--imagenet-r-root", args.imagenet_r_root):
        try:
            cols = imagenet_r_columns(num_classes)
            ds = ImageFolderDataset(args.imagenet_r_root, transform, expect_classes=len(cols))
        except (FileNotFoundError, ValueError) as e:
            raise FlagError(f"--imagenet-r-root: {e}") from None
        meter, _ = predict(models, loader_of(ds), columns=cols, **common)
        m = meter.compute()
        out["imagenet_r"] = {"root": args.imagenet_r_root, "top1": m["top1"], "top5": m["top5"],
                             "num_samples": m["num_samples"],
                             "columns": "IMAGENET_R_INDICES (200 of the 1000-way head)"}
        print_main(f"ImageNet-R {args.imagenet_r_root}: top-1 {m['top1']:.2f} (argmax over the 200 ImageNet-R "
                   f"columns) | {m['num_samples']} images")
    if args.imagenet_sketch_root and not absent("--imagenet-sketch-root", args.imagenet_sketch_root):
        try:
            ds = ImageFolderDataset(args.imagenet_sketch_root, transform, num_classes=num_classes)
        except (FileNotFoundError, ValueError) as e:
            raise FlagError(f"--imagenet-sketch-root: {e}") from None
        meter, _ = predict(models, loader_of(ds), **common)
        m = meter.compute()
        out["imagenet_sketch"] = {"root": args.imagenet_sketch_root, "top1": m["top1"], "top5": m["top5"],
                                  "num_samples": m["num_samples"]}
        print_main(f"ImageNet-Sketch {args.imagenet_sketch_root}: top-1 {m['top1']:.2f} | {m['num_samples']} images")
    return out


def main(argv: Optional[Sequence[str]] = None) -> dict:
    return run(build_eval_parser().parse_args(argv))
