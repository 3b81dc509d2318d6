"""tools/eval.py: evaluate one checkpoint or an ensemble, on a split and on robustness benchmarks.

* ``--checkpoint`` reads our checkpoints, the original's released files (PaCo/GPaCo ResNets,
  MAE-style ViTs), converted copies and ``.safetensors`` (:mod:`gpaco.models.convert`); the
  model is rebuilt from the file's ``model_config`` (or what the file implies,
  :mod:`gpaco.methods.rebuild`), the layout is detected and whatever is unused or missing is printed and recorded in
  ``metrics.json`` (``checkpoints``). Nothing is unpickled beyond tensors and plain
  containers: a file that needs more is refused with the conversion command.
* Repeated ``--checkpoint`` sums the raw logits of the models (the paper's ensembles); each
  takes its ``--arch``/``--method`` in the same order (or one for all, or its own metadata).
* ``--save-logits FILE.npy``: the (summed) logits in test-list order, also under torchrun.
* ``--corrupted-root`` (ImageNet-C or a ``tools/make_corrupted.py`` tree), ``--imagenet-r-root``,
  ``--imagenet-sketch-root``: the robustness suites (:mod:`gpaco.classification.robustness`);
  every suite is one row of :data:`EVAL_SUITES`.
* Writes ``metrics.json``, ``per_class.csv``, ``per_class.png`` and (<= 100 classes)
  ``confusion.png`` to ``--output-dir``. Exact under torchrun: every image counted once.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from gpaco.data.build import build_eval_dataset, data_available, eval_loader, is_folder
from gpaco.data.splits import DataError, class_counts, read_split
from gpaco.distributed import cleanup, gather_in_order, init_distributed
from gpaco.classification.args import (
    FlagError, add_data_flags, add_model_flags, eval_data_kwargs, is_cifar, validate_common_args,
)
from gpaco.engine.args import HelpFormatter
from gpaco.engine.cli import add_debug_flag, run_cli
from gpaco.engine.precision import resolve_amp, resolve_channels_last
from gpaco.methods import add_method_flags, all_methods, get_method, method_names
from gpaco.methods.flags import PROJ_DIM, QUEUE_SIZE
from gpaco.methods.rebuild import build_model_from_checkpoint
from gpaco.checkpoint import CheckpointError
from gpaco.engine.lifecycle import claim_eval_dir
from gpaco.models.convert import CheckpointMismatchError, LoadedCheckpoint, read_checkpoint
from gpaco.engine.eval_suites import EvalSuite, run_eval_suites
from gpaco.engine.logging import print_main, write_json
from gpaco.metrics import format_accuracy
from gpaco.classification.predict import head_metrics, predict
from gpaco.classification.report import fairness_line, find_class_names, write_eval_report


# Method flags that may override a checkpoint's model options at evaluation (the sizes have their own flags).
_METHOD_DESTS = {f.dest for m in all_methods("classification") for f in m.flags} - {"proj_dim", "queue_size"}


def method_flags_given(args: argparse.Namespace) -> dict:
    """The method flags set on the eval command line (by dest): they override the checkpoint's model options."""
    return {k: v for k, v in vars(args).items() if k in _METHOD_DESTS}


class _Repeatable(argparse.Action):
    """``--arch A --arch B``: ``args.arch`` is the last value (argparse's usual meaning),
    ``args.<dest>_list`` all of them in order (``--checkpoint``: the ensemble's members)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, self.dest + "_list", list(getattr(namespace, self.dest + "_list", None) or []) + [values])


def build_eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/eval.py", conflict_handler="resolve", formatter_class=HelpFormatter,
                                description="Evaluate gpaco or original PaCo/GPaCo checkpoints (one, or an ensemble "
                                            "summing their logits): top-1/top-5, many/medium/few, per-class report, "
                                            "ImageNet-C/-R/-Sketch; exact under torchrun.")
    add_data_flags(p)
    add_model_flags(p)
    add_method_flags(p, "classification", "method options (evaluation-time model options, e.g. --reslt-gamma; "
                                          "unset: the checkpoint's)")
    for action in p._actions:  # only what the command line sets overrides the checkpoint's training flags
        if action.dest in _METHOD_DESTS:
            action.default = argparse.SUPPRESS
    g = p.add_argument_group("checkpoints (repeat --checkpoint for an ensemble)")
    g.add_argument("--checkpoint", action=_Repeatable, required=True, metavar="PATH",
                   help="ours (best.pth, checkpoint.pth, or a run folder: its best.pth), the original's released "
                        ".pth.tar / MAE .pth, a converted file or .safetensors; repeat it to sum the logits of "
                        "several models. Without --test-list (and --dataset, robustness roots) the first "
                        "checkpoint's run is evaluated on its own test split (its --test-list, --data-root, "
                        "--dataset)")
    g.add_argument("--arch", "-a", action=_Repeatable, default=None,
                   help="backbone; repeat in --checkpoint order for an ensemble (one value: all). Default: the "
                        "checkpoint's own (ours, the original's 'arch', MAE's args.model)")
    g.add_argument("--method", action=_Repeatable, choices=method_names("classification"), default=None,
                   help="model type; repeat like --arch. Default: the checkpoint's, else what its layout implies")
    for f in (PROJ_DIM, QUEUE_SIZE):  # the sizes of a model built without a checkpoint (dry run)
        g.add_argument(*f.names, **f.kwargs)
    # Unset model/data flags fall back to the checkpoint's training flags, then to the defaults.
    p.set_defaults(proj_dim=None, queue_size=None, norm=None, image_size=None, interpolation=None, arch_list=None,
                   method_list=None, checkpoint_list=None)
    # Unset: the run's own test split (use_run_test_split), else "split" under "data" as for training.
    p.set_defaults(dataset=None, data_root=None)
    p.add_argument("--batch-size", "-b", type=int, default=128, help="global evaluation batch")
    p.add_argument("--output-dir", default=None, help="where metrics.json and per_class.* go "
                                                      "(default: CHECKPOINT_DIR/eval, ensembles .../eval_ensemble); "
                                                      "a folder that holds a metrics.json is refused unless "
                                                      "--overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace the results already in --output-dir")
    p.add_argument("--save-logits", default=None, metavar="FILE.npy",
                   help="write the (summed) logits of the test split, [N, C] float32 in test-list order")
    r = p.add_argument_group("robustness (docs/method.md#metrics)")
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
    add_debug_flag(p)
    return p


FALLBACKS = {"method": "ce", "arch": "resnet50", "proj_dim": 128, "queue_size": 8192, "norm": "imagenet",
             "image_size": 224}
#: --dataset and --data-root when neither the command line nor the run's own test split sets them.
DATA_FALLBACKS = {"dataset": "split", "data_root": "data"}
_ROBUSTNESS_ROOTS = ("corrupted_root", "imagenet_r_root", "imagenet_sketch_root")


def resolve_from_checkpoint(args: argparse.Namespace, train_args: dict) -> None:
    for name, default in FALLBACKS.items():
        if getattr(args, name, None) is None:
            setattr(args, name, train_args.get(name, default))
    if args.resize_size is None and train_args.get("resize_size") and args.image_size == train_args.get("image_size"):
        args.resize_size = train_args["resize_size"]
    if getattr(args, "interpolation", None) is None:
        args.interpolation = train_args.get("interpolation") or "bilinear"


def checkpoint_file(path: str) -> str:
    """A run folder's ``best.pth`` (else its ``checkpoint.pth``); any other path as given."""
    if os.path.isdir(path):
        for name in ("best.pth", "checkpoint.pth"):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise FlagError(f"--checkpoint {path}: the folder holds no best.pth or checkpoint.pth (a tools/train.py run "
                        f"folder, or a checkpoint file)")
    return path


def use_run_test_split(args: argparse.Namespace, train_args: dict, checkpoint: Optional[str]) -> None:
    """Nothing to evaluate on the command line (no --test-list, --dataset or robustness root): the
    run's own test split, from its training flags (``train_args``): its --dataset, --test-list (or
    CIFAR's test set, or the class folders' test part with its --split-seed) and --data-root (unless
    given). The unset data flags then take :data:`DATA_FALLBACKS`."""
    own = not args.test_list and args.dataset is None and not any(getattr(args, r) for r in _ROBUSTNESS_ROOTS)
    if own and train_args:
        dataset = train_args.get("dataset") or "split"
        args.dataset = "split" if dataset == "webdataset" else dataset  # shards train; their val/test are lists
        args.split_seed = train_args.get("split_seed", args.split_seed)
        if args.data_root is None:
            args.data_root = train_args.get("data_root")
        if dataset in ("split", "webdataset"):
            args.test_list = train_args.get("test_list")
            if not args.test_list:
                raise FlagError(f"--test-list is required: the run of {checkpoint} had no --test-list to evaluate "
                                f"on; give one (with --data-root)")
        split = f"--test-list {args.test_list}" if args.test_list else f"the {args.dataset} test split"
        print_main(f"evaluating on the run's own test split: {split} under --data-root {args.data_root} (from the "
                   f"checkpoint's training flags; --test-list chooses another)")
        if args.test_list and not args.dry_run and not os.path.isfile(args.test_list):
            raise FlagError(f"--test-list {args.test_list} (the run's own, from its training flags): no such file; "
                            f"give --test-list (and --data-root) where the test split is now")
    for name, default in DATA_FALLBACKS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if not args.dry_run and (args.test_list or is_cifar(args.dataset) or is_folder(args.dataset)) \
            and not os.path.isdir(args.data_root):
        raise FlagError(f"--data-root {args.data_root}: no such folder (the --test-list paths are relative to it)")


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


# --------------------------------------------------------------------------- run


def _load_members(args, paths, dry_run: bool):
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
    return archs, methods, loaded


def check_data_flags(args: argparse.Namespace) -> None:
    """A missing --data-root or --test-list is named before any checkpoint is read (a dry run
    falls back to synthetic images instead)."""
    if args.dry_run:
        return
    if args.test_list and not os.path.isfile(args.test_list):
        raise FlagError(f"--test-list {args.test_list}: no such file (expected '<relative/path> <label>' lines)")
    data_root = args.data_root if args.data_root is not None else DATA_FALLBACKS["data_root"]
    if (args.test_list or is_cifar(args.dataset) or is_folder(args.dataset)) and not os.path.isdir(data_root):
        raise FlagError(f"--data-root {data_root}: no such folder (the --test-list paths are relative to it)")


def build_members(args: argparse.Namespace, loaded: Sequence[Optional[LoadedCheckpoint]],
                  archs: Sequence[Optional[str]], methods: Sequence[Optional[str]], device: torch.device):
    """(models, load reports) of the ensemble's members, in --checkpoint order; an absent
    checkpoint (dry run) is a randomly initialised model of the flags."""
    fallback_classes = args.num_classes or next((c.meta.get("num_classes") for c in loaded if c is not None), None) \
        or (10 if args.dry_run else 1000)
    models, reports = [], []
    for c, arch, method in zip(loaded, archs, methods):
        try:
            model, report = build_model_from_checkpoint(
                c, method=method or (args.method if c is None else None),
                arch=arch or (args.arch if c is None else None),
                num_classes=args.num_classes or (fallback_classes if c is None else None),
                defaults={"proj_dim": args.proj_dim, "queue_size": args.queue_size},
                flag_values=method_flags_given(args))
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
    return models, reports


def training_counts(args: argparse.Namespace, first: Optional[LoadedCheckpoint], num_classes: int):
    """The per-class training counts many/medium/few need: read off an explicit --train-list
    (no image opened; the user asked for that split), else the checkpoint's; None when neither
    is there."""
    counts = first.meta.get("class_counts") if first is not None else None
    given = bool(args.train_list) and os.path.isfile(args.train_list)
    if counts is not None and len(counts) == num_classes and not given:
        return counts
    if not is_cifar(args.dataset) and args.train_list and os.path.isfile(args.train_list):
        samples = read_split(args.train_list, args.data_root, num_classes=num_classes,
                             allow_outside_root=args.allow_outside_root)
        return class_counts(samples, num_classes)
    return None


def report_class_names(args: argparse.Namespace, first: Optional[LoadedCheckpoint], num_classes: int):
    """The names the report gives the classes: the checkpoint's, else a classes.txt beside
    --test-list or --train-list (or in --data-root), else the checkpoint's run folder's; None
    (class indices) when there are none, and in a dry run."""
    if args.dry_run:
        return None
    try:
        return find_class_names(checkpoint=first.path if first is not None else None,
                                checkpoint_meta=first.meta if first is not None else None,
                                paths=[args.test_list, args.train_list, args.data_root], num_classes=num_classes)
    except DataError as e:
        raise FlagError(str(e)) from None


def eval_split(args: argparse.Namespace, num_classes: int):
    """The --test-list dataset (synthetic in a dry run without data), or None when only
    robustness roots are evaluated. A dry run also shrinks the images (here, before any
    suite builds its transform)."""
    if args.dry_run:
        args.image_size = min(args.image_size, 64)
        args.resize_size = None
    synthetic = args.dry_run and not data_available(dataset=args.dataset, data_root=args.data_root,
                                                    list_path=args.test_list)
    robustness = [x for x in (args.corrupted_root, args.imagenet_r_root, args.imagenet_sketch_root) if x]
    test_set = None
    if args.test_list or is_cifar(args.dataset) or is_folder(args.dataset) or synthetic and not robustness:
        test_set = build_eval_dataset(args.test_list, **eval_data_kwargs(args, num_classes=num_classes,
                                                                         synthetic=synthetic))
    if test_set is None and not robustness:
        raise FlagError("--test-list is required (the split to evaluate), or a robustness root "
                        "(--corrupted-root / --imagenet-r-root / --imagenet-sketch-root)")
    if test_set is None and args.save_logits:
        raise FlagError("--save-logits writes the logits of the test split: give --test-list")
    return test_set


def mce_baseline(args: argparse.Namespace) -> Optional[tuple]:
    """--mce-baseline's per-corruption errors (and its label), None without the flag."""
    if not args.mce_baseline:
        return None
    if not args.corrupted_root:
        raise FlagError("--mce-baseline needs --corrupted-root")
    from gpaco.classification.robustness import load_baseline_errors

    try:
        return load_baseline_errors(args.mce_baseline)
    except FileNotFoundError as e:
        raise FlagError(str(e)) from None
    except ValueError as e:
        if str(e).startswith("--mce-baseline"):  # the reader's own message names the file
            raise FlagError(str(e)) from None
        bad = e
    except (OSError, TypeError, AttributeError, RecursionError) as e:  # corrupt JSON, or JSON of another shape
        bad = e
    raise FlagError(f"--mce-baseline {args.mce_baseline}: not a metrics.json of tools/eval.py --corrupted-root "
                    f"({type(bad).__name__}: {bad})")


def write_results(out: str, args: argparse.Namespace, result: dict, ctx: "EvalContext") -> None:
    """metrics.json, the per-class report (with a test split) and --save-logits (an existing
    logits file is refused unless --overwrite, before anything is written)."""
    if ctx.logits_all is not None and os.path.exists(args.save_logits) and not args.overwrite:
        raise FlagError(f"--save-logits {args.save_logits} already exists; give another file, or --overwrite to "
                        f"replace it")
    write_json(os.path.join(out, "metrics.json"), result)
    if ctx.test_set is not None:
        write_eval_report(out, result, ctx.train_counts, confusion=ctx.confusion)
    if ctx.logits_all is not None:
        parent = os.path.dirname(os.path.abspath(args.save_logits))
        os.makedirs(parent, exist_ok=True)
        np.save(args.save_logits, ctx.logits_all.numpy().astype(np.float32))
        print_main(f"wrote {args.save_logits} ({ctx.logits_all.shape[0]} x {ctx.logits_all.shape[1]} logits, "
                   f"test-list order)")
    print_main(f"wrote {out}/metrics.json" + (", per_class.csv, per_class.png" if ctx.test_set is not None else "")
               + (", confusion.png" if ctx.confusion is not None else ""))


def run(args: argparse.Namespace) -> dict:
    dist = init_distributed()
    device = dist.device
    if args.batch_size % dist.world_size:
        raise FlagError(f"--batch-size {args.batch_size} must be divisible by the number of processes "
                        f"({dist.world_size})")
    check_data_flags(args)
    paths = [checkpoint_file(p) for p in (args.checkpoint_list or [args.checkpoint])]
    archs, methods, loaded = _load_members(args, paths, args.dry_run)
    first = next((c for c in loaded if c is not None), None)
    train_args = (first.meta.get("args") or {}) if first is not None else {}
    use_run_test_split(args, train_args, first.path if first is not None else None)  # before a folder is made
    out = None
    if not args.dry_run:  # refused before anything is evaluated (a missing checkpoint first: no folder made)
        out = claim_eval_dir(args.output_dir or os.path.join(os.path.dirname(os.path.abspath(paths[0])),
                                                             "eval" if len(paths) == 1 else "eval_ensemble"),
                             overwrite=args.overwrite)
    # data flags: the command line, then the first checkpoint's training flags, then the defaults
    if first is not None:
        args.arch = args.arch or first.meta.get("arch")
        args.method = args.method or first.meta.get("method")
    resolve_from_checkpoint(args, train_args)
    models, reports = build_members(args, loaded, archs, methods, device)
    num_classes = int(models[0].fc.out_features)
    amp = resolve_amp(args.amp, device, dry_run=args.dry_run)
    channels_last = resolve_channels_last(args.channels_last, device, amp)
    if channels_last:
        for m in models:
            m.to(memory_format=torch.channels_last)
    train_counts = training_counts(args, first, num_classes)
    class_names = report_class_names(args, first, num_classes)
    test_set = eval_split(args, num_classes)
    baseline = mce_baseline(args)
    batch = 4 if args.dry_run else args.batch_size // dist.world_size
    workers = 0 if args.dry_run else args.workers

    def loader_of(dataset):
        return eval_loader(dataset, batch_size=batch, workers=workers, rank=dist.rank, world_size=dist.world_size,
                           pin_memory=device.type == "cuda")

    # each member's test-time logits are its method's (eval_forward: ResLT's combination, sampling...)
    forwards = [get_method(r.method if r is not None else (m or args.method)).eval_forward
                for r, m in zip(reports, methods)]
    common = dict(num_classes=num_classes, device=device, amp=amp, channels_last=channels_last,
                  max_steps=1 if args.dry_run else None, forward=forwards)
    ctx = EvalContext(args=args, models=models, loader_of=loader_of, common=common, num_classes=num_classes,
                      test_set=test_set, train_counts=train_counts, baseline=baseline, class_names=class_names,
                      name=paths[0] if len(paths) == 1 else "ensemble of " + " + ".join(paths))
    result: dict = {"checkpoint": paths[0] if len(paths) == 1 else list(paths)}
    result.update(run_eval_suites(EVAL_SUITES, args, ctx))
    if len(paths) > 1:
        result["ensemble"] = {"checkpoints": list(paths), "archs": [r.arch if r else a for r, a in zip(reports, archs)],
                              "combination": "sum of raw logits"}
    result["checkpoints"] = [r.as_dict() for r in reports if r is not None]
    if out is not None and dist.rank == 0:
        write_results(out, args, result, ctx)
    cleanup()
    return result


# --------------------------------------------------------------------------- evaluation suites


@dataclass
class EvalContext:
    """What every suite of :data:`EVAL_SUITES` evaluates with; the clean split also leaves
    its confusion matrix and (``--save-logits``) its logits here."""

    args: argparse.Namespace
    models: List[torch.nn.Module]
    loader_of: Callable
    common: dict  # predict() keywords: num_classes, device, amp, channels_last, max_steps
    num_classes: int
    test_set: Optional[object]
    train_counts: Optional[Sequence[int]]
    baseline: Optional[tuple]
    name: str
    class_names: Optional[List[str]] = None
    confusion: Optional[torch.Tensor] = None
    logits_all: Optional[torch.Tensor] = None

    @property
    def transform(self):
        """The evaluation transform of the flags (resize, center crop, normalise)."""
        from gpaco.data.transforms import NORMALIZATION, build_eval_transform

        mean, std = NORMALIZATION[self.args.norm]
        return build_eval_transform(self.args.image_size, resize_size=self.args.resize_size, mean=mean, std=std,
                                    interpolation=self.args.interpolation,
                                    reduced_decode=self.args.reduced_jpeg_decode)

    def root(self, flag: str) -> Optional[str]:
        """The folder a robustness flag names; None (skipped, said so) when absent in a dry run."""
        path = getattr(self.args, flag.lstrip("-").replace("-", "_"))
        if os.path.isdir(path):
            return path
        if self.args.dry_run:
            print_main(f"dry run: {flag} {path} is absent; skipped")
            return None
        raise FlagError(f"{flag} {path}: no such folder")


def _clean(ctx: EvalContext) -> dict:
    """The --test-list split: top-1/5, many/medium/few, per class, confusion."""
    args = ctx.args
    heads: dict = {}  # a second head's meter (GenDD's linear probe)
    meter, local = predict(ctx.models, ctx.loader_of(ctx.test_set), keep_logits=bool(args.save_logits), heads=heads,
                           **ctx.common)
    metrics = meter.compute(ctx.train_counts)  # with the confusion matrix up to 100 classes
    if ctx.class_names is not None:  # metrics.json, per_class.csv/png, confusion.png and the worst class name them
        metrics["class_names"] = list(ctx.class_names)
    if heads:
        metrics["heads"] = head_metrics(heads)
    if meter.confusion is not None:
        ctx.confusion = meter.confusion.cpu()
    if args.save_logits and not args.dry_run:
        ctx.logits_all = gather_in_order(local, len(ctx.test_set), ctx.common["device"])
    shots = (" | " + " ".join(f"{g} {format_accuracy(metrics[g])}" for g in ("many", "medium", "few"))
             if "many" in metrics else " | many/medium/few need the train counts (--train-list)")
    extra = "".join(f" | {name} top-1 {m['top1']:.2f}" for name, m in metrics.get("heads", {}).items())
    print_main(f"{ctx.name}: top-1 {metrics['top1']:.2f} top-5 {metrics['top5']:.2f}{shots} | "
               f"{metrics['num_samples']} images{extra}")
    print_main(fairness_line(metrics))
    return metrics


def _imagenet_c(ctx: EvalContext) -> Optional[dict]:
    """Every corruption x severity folder: errors, the three mCE figures (docs/method.md#metrics)."""
    from gpaco.classification.robustness import corruption_table, evaluate_corruptions
    from gpaco.data.robustness import ImageFolderDataset

    root = ctx.root("--corrupted-root")
    if root is None:
        return None
    transform = ctx.transform

    def evaluate_folder(folder):
        ds = ImageFolderDataset(folder, transform, num_classes=ctx.num_classes)
        meter, _ = predict(ctx.models, ctx.loader_of(ds), **ctx.common)
        m = meter.compute()
        return {"top1": m["top1"], "num_samples": m["num_samples"], "label_index_named": ds.label_index_named}

    print_main(f"corruptions: {root}")
    try:
        res = evaluate_corruptions(root, evaluate_folder, baseline_errors=ctx.baseline[0] if ctx.baseline else None,
                                   baseline_label=ctx.baseline[1] if ctx.baseline else None,
                                   max_folders=2 if ctx.args.dry_run else None, log=print_main)
    except (FileNotFoundError, ValueError) as e:
        raise FlagError(str(e)) from None
    print_main(corruption_table(res))
    return res


def _imagenet_r(ctx: EvalContext) -> Optional[dict]:
    """ImageNet-R: top-1 over the 200 ImageNet-R columns of a 1000-way head."""
    from gpaco.classification.robustness import imagenet_r_columns
    from gpaco.data.robustness import ImageFolderDataset

    root = ctx.root("--imagenet-r-root")
    if root is None:
        return None
    try:
        cols = imagenet_r_columns(ctx.num_classes)
        ds = ImageFolderDataset(root, ctx.transform, expect_classes=len(cols))
    except (FileNotFoundError, ValueError) as e:
        raise FlagError(f"--imagenet-r-root: {e}") from None
    meter, _ = predict(ctx.models, ctx.loader_of(ds), columns=cols, **ctx.common)
    m = meter.compute()
    print_main(f"ImageNet-R {root}: top-1 {m['top1']:.2f} (argmax over the 200 ImageNet-R columns) | "
               f"{m['num_samples']} images")
    return {"root": root, "top1": m["top1"], "top5": m["top5"], "num_samples": m["num_samples"],
            "columns": "IMAGENET_R_INDICES (200 of the 1000-way head)"}


def _imagenet_sketch(ctx: EvalContext) -> Optional[dict]:
    """ImageNet-Sketch: top-1 with the full head."""
    from gpaco.data.robustness import ImageFolderDataset

    root = ctx.root("--imagenet-sketch-root")
    if root is None:
        return None
    try:
        ds = ImageFolderDataset(root, ctx.transform, num_classes=ctx.num_classes)
    except (FileNotFoundError, ValueError) as e:
        raise FlagError(f"--imagenet-sketch-root: {e}") from None
    meter, _ = predict(ctx.models, ctx.loader_of(ds), **ctx.common)
    m = meter.compute()
    print_main(f"ImageNet-Sketch {root}: top-1 {m['top1']:.2f} | {m['num_samples']} images")
    return {"root": root, "top1": m["top1"], "top5": m["top5"], "num_samples": m["num_samples"]}


#: The classification evaluation suites, in the order they run.
EVAL_SUITES = (
    EvalSuite("clean split", None, lambda a: True, lambda ctx: _clean(ctx) if ctx.test_set is not None else None,
              "--test-list"),
    EvalSuite("ImageNet-C", "corruption", lambda a: bool(a.corrupted_root), _imagenet_c, "--corrupted-root"),
    EvalSuite("ImageNet-R", "imagenet_r", lambda a: bool(a.imagenet_r_root), _imagenet_r, "--imagenet-r-root"),
    EvalSuite("ImageNet-Sketch", "imagenet_sketch", lambda a: bool(a.imagenet_sketch_root), _imagenet_sketch,
              "--imagenet-sketch-root"),
)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = build_eval_parser().parse_args(argv)
    validate_common_args(args)
    return run(args)


def cli(argv: Optional[Sequence[str]] = None) -> None:
    """tools/eval.py and the ``gpaco-eval`` command (docs/reliability.md: one ``error: ...`` line, exit 2)."""
    run_cli(main, argv)
