"""tools/eval_seg.py: evaluate a segmentation checkpoint, single- and/or multi-scale.

    python tools/eval_seg.py --checkpoint runs/.../best.pth --mode both
    torchrun --nproc_per_node 8 tools/eval_seg.py --checkpoint ... --mode ms
    python tools/eval_seg.py --compare runs/demo_seg/ce runs/demo_seg/gpaco   # per-class IoU side by side

``ss``: one pass at the dataset's test scale (whole image, or sliding window for
Pascal-Context-59). ``ms``: ratios 0.5-1.75 of that scale, each with its horizontal
flip, softmax probabilities averaged. Per-class IoU is accumulated over the whole split;
mIoU/mAcc skip classes absent from both prediction and label (IoU) or from the label (acc).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Mapping, Optional, Sequence

from gpaco.data.seg_datasets import SEG_DATASETS, SyntheticSegDataset, build_seg_dataset
from gpaco.data.seg_transforms import SegEvalTransform
from gpaco.distributed import cleanup, init_distributed
from gpaco.checkpoint import load_checkpoint, unwrap_state_dict
from gpaco.engine.lifecycle import claim_eval_dir
from gpaco.engine.eval_suites import EvalSuite, run_eval_suites
from gpaco.engine.logging import print_main, write_json
from gpaco.engine.args import FlagError, RawHelpFormatter, clamp_workers
from gpaco.engine.cli import add_debug_flag, run_cli
from gpaco.segmentation.inference import evaluate_seg, format_iou_table, summary
from gpaco.segmentation.train import add_seg_test_flags
from gpaco.methods import get_method, method_names, method_options
from gpaco.methods.rebuild import build_from_config, model_config
from gpaco.models.convert import is_model_config
from gpaco.models.mmseg import from_mmseg_state_dict, is_mmseg_state_dict
from gpaco.models.seg import SEG_ARCHS, SegModel


def build_eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/eval_seg.py", description=__doc__,
                                formatter_class=RawHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="checkpoint of tools/train_seg.py (best.pth, checkpoint.pth)")
    g = p.add_argument_group("data (unset: the checkpoint's training flags)")
    g.add_argument("--dataset", default=None, choices=sorted(SEG_DATASETS), help="dataset layout")
    g.add_argument("--data-root", default=None, help="the dataset's folder (images and masks)")
    g.add_argument("--split", default="val", help="split to evaluate (val, test, ...)")
    g.add_argument("--img-scale", type=int, nargs=2, default=None, metavar=("W", "H"), help="test resize scale")
    g.add_argument("--workers", "-j", type=int, default=2,
                   help="data loader worker processes per process (0: load in the main process)")
    g = p.add_argument_group("model (unset: the checkpoint's)")
    g.add_argument("--arch", default=None, help=f"{', '.join(sorted(SEG_ARCHS))} or smp:<decoder>:<encoder>")
    g.add_argument("--encoder", default=None, help="smp encoder of an smp:... arch")
    g.add_argument("--method", default=None, choices=method_names("segmentation"), help="segmentation method")
    g.add_argument("--embed-dim", type=int, default=None, help="GPaCo embedding size of the head")
    g.add_argument("--amp", default="none", choices=("none", "fp16", "bf16"), help="autocast dtype")
    add_seg_test_flags(p)
    p.add_argument("--mode", default="ss", choices=("ss", "ms", "both"),
                   help="ss: single scale; ms: multi-scale + flip; both: one after the other")
    p.add_argument("--ms-flip", action=argparse.BooleanOptionalAction, default=True,
                   help="add the horizontal flip of every scale in the 'ms' evaluation")
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--output-dir", default=None, help="metrics.json and per_class_iou.md (default: "
                   "CHECKPOINT_DIR/eval); a folder that holds a metrics.json is refused unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace the results already in --output-dir")
    p.add_argument("--print-every", type=int, default=100, help="images between progress lines")
    p.add_argument("--dry-run", action="store_true", help="build everything, evaluate one small image (random "
                   "weights if the checkpoint is absent, synthetic data if the data root is), write nothing")
    p.add_argument("--compare", nargs="+", default=None, metavar="RUN",
                   help="print the per-class IoU of several runs' metrics.json side by side and exit")
    p.add_argument("--compare-out", default=None, help="with --compare: also write the table here")
    add_debug_flag(p)
    return p


def compare(runs: Sequence[str], out: Optional[str] = None) -> str:
    cols = []
    for r in runs:
        path = os.path.join(r, "metrics.json") if os.path.isdir(r) else r
        if not os.path.isfile(path):
            raise FlagError(f"{path} not found (did the run finish?)")
        with open(path) as f:
            m = json.load(f)
        m = m.get("ss", m)
        m["per_class_iou"] = [float("nan") if v is None else v for v in m["per_class_iou"]]
        cols.append((os.path.basename(os.path.normpath(r if os.path.isdir(r) else os.path.dirname(r))), m))
    table = format_iou_table(cols)
    if out:
        with open(out, "w") as f:
            f.write(table + "\n")
    return table


def run(args: argparse.Namespace) -> dict:
    if args.compare:
        table = compare(args.compare, args.compare_out)
        print(table)
        return {"table": table}
    if not args.checkpoint:
        raise FlagError("--checkpoint is required (or --compare RUN ...)")
    d = init_distributed()
    ckpt = None
    if os.path.exists(args.checkpoint):
        ckpt = load_checkpoint(args.checkpoint)
    elif not args.dry_run:
        raise FlagError(f"--checkpoint {args.checkpoint}: no such file")
    out = None
    if not args.dry_run:  # refused before anything is evaluated (a missing checkpoint first: no folder made)
        out = claim_eval_dir(args.output_dir or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "eval"),
                             overwrite=args.overwrite)
    train_args = (ckpt or {}).get("args") or {}
    recorded = recorded_seg_config(ckpt)
    model_flags = {"method": args.method, "arch": args.arch, "encoder": args.encoder}  # as given on the command line
    for name in model_flags:  # unset: the recorded model's
        if getattr(args, name) is None and recorded is not None:
            setattr(args, name, recorded["options"].get(name) if name == "encoder" else recorded[name])
    fallbacks = {"dataset": "demo", "data_root": "data/demo_seg", "arch": "r50", "method": "gpaco", "encoder": None}
    for name, default in fallbacks.items():
        if getattr(args, name) is None:
            setattr(args, name, train_args.get(name, default))
    info = SEG_DATASETS[args.dataset]
    num_classes = info.num_classes
    scale = list(args.img_scale or train_args.get("img_scale") or info.img_scale)
    mode = args.test_mode or info.test_mode
    crop = list(args.test_crop or info.test_crop or train_args.get("crop_size") or info.crop_size)
    stride = list(args.test_stride or info.test_stride or [max(c * 2 // 3, 1) for c in crop])
    synthetic = args.dry_run and not os.path.isdir(args.data_root)
    if args.dry_run:
        scale = [min(scale[0], 128), min(scale[1], 64)]
        crop = [min(crop[0], 64), min(crop[1], 64)]
        stride = [max(c * 2 // 3, 1) for c in crop]
    if synthetic:
        dataset = SyntheticSegDataset(1, num_classes, (48, 64), transform=SegEvalTransform(),
                                      class_names=info.class_names)
    else:
        dataset = build_seg_dataset(args.dataset, args.data_root, args.split, SegEvalTransform())

    cfg = eval_model_config(args, recorded, model_flags, train_args, num_classes)
    # --embed-dim overrides, where the method takes it
    overrides = method_options(get_method(cfg["method"], "segmentation"),
                               {} if args.embed_dim is None else {"embed_dim": args.embed_dim})[0]
    model = build_from_config(cfg, **overrides)
    if ckpt is not None:
        state = unwrap_state_dict(ckpt, args.checkpoint)
        if is_mmseg_state_dict(state):  # an mmseg EncoderDecoder checkpoint (the original's releases)
            state = from_mmseg_state_dict(state)
            print_main(f"{args.checkpoint}: mmseg layout, {len(state)} tensors mapped to our names")
        # Training-only branches (GPaCo's embedding, CeCo's) the evaluated method lacks: a CeCo
        # checkpoint evaluates as the plain model (--method ce), with the same logits.
        own = model.state_dict()
        state = {k: v for k, v in state.items()
                 if k in own or not k.startswith(SegModel.TRAINING_ONLY_PREFIXES)}
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise FlagError(f"checkpoint {args.checkpoint} does not fit --arch {args.arch} --method {args.method} "
                            f"--dataset {args.dataset}: {str(e).splitlines()[0]}") from None
    model.to(d.device)
    modes = ("ss", "ms") if args.mode == "both" else (args.mode,)
    max_images = 1 if args.dry_run else args.max_images
    print_main(f"gpaco eval_seg: {args.checkpoint} ({args.arch} {args.method}) on {args.dataset}/{args.split}: "
               f"{len(dataset) if max_images is None else min(max_images, len(dataset))} images, test {mode} at "
               f"scale {scale[0]}x{scale[1]}{f', crop {crop} stride {stride}' if mode == 'slide' else ''}"
               f"{' (synthetic stand-in: data root absent)' if synthetic else ''}; {d.world_size} process(es)")
    ctx = dict(model=model, dataset=dataset, device=d.device, num_classes=num_classes, scale=tuple(scale), mode=mode,
               crop=tuple(crop), stride=tuple(stride), rank=d.rank, world_size=d.world_size,
               workers=0 if args.dry_run else args.workers, max_images=max_images, amp=args.amp,
               print_every=0 if args.dry_run else args.print_every, args=args)
    results = run_eval_suites(EVAL_SUITES, args, ctx)
    table = format_iou_table([(m, results[m]) for m in modes])
    print_main(table)
    if out is not None and d.rank == 0:
        write_json(os.path.join(out, "metrics.json"), {"checkpoint": args.checkpoint, "dataset": args.dataset,
                                                        "split": args.split, **results})
        with open(os.path.join(out, "per_class_iou.md"), "w") as f:
            f.write(table + "\n")
        print_main(f"wrote {out}/metrics.json and per_class_iou.md")
    cleanup()
    return {**results, "miou": results[modes[0]]["miou"]}


def recorded_seg_config(ckpt: Optional[Mapping]) -> Optional[dict]:
    """The checkpoint's recorded segmentation ``model_config`` (None for files without one)."""
    cfg = (ckpt or {}).get("model_config")
    return dict(cfg) if is_model_config(cfg) and cfg["task"] == "segmentation" else None


def eval_model_config(args: argparse.Namespace, recorded: Optional[dict], model_flags: Mapping[str, Optional[str]],
                      train_args: Mapping, num_classes: int) -> dict:
    """The model to evaluate: the recorded one unless ``model_flags`` (--method/--arch/--encoder
    as given) or the dataset's class count ask for another; otherwise the flags with the
    method's model options as trained (builder defaults where unknown)."""
    if recorded is not None and recorded["num_classes"] == num_classes and all(
            value is None or value == (recorded["options"].get(name) if name == "encoder" else recorded[name])
            for name, value in model_flags.items()):
        return recorded
    model_kw, _ = method_options(get_method(args.method, "segmentation"), train_args)
    return model_config(args.method, "segmentation", args.arch, num_classes, {"encoder": args.encoder, **model_kw})


def _scales(name: str, multi_scale: bool):
    """An evaluation suite's run: single scale, or the --ms-ratios with (--ms-flip) flips."""

    def run(ctx: dict) -> dict:
        args, kw = ctx["args"], {k: v for k, v in ctx.items() if k != "args"}
        t0 = time.time()
        ratios = tuple(args.ms_ratios) if multi_scale else (1.0,)
        res = evaluate_seg(kw.pop("model"), kw.pop("dataset"), ratios=ratios, flip=multi_scale and args.ms_flip, **kw)
        print_main(f"{name}: {summary(res)} in {time.time() - t0:.0f}s")
        return res

    return run


#: The segmentation evaluation suites (``--mode ss | ms | both``), in the order they run.
EVAL_SUITES = (
    EvalSuite("ss", "ss", lambda a: a.mode in ("ss", "both"), _scales("ss", False), "--mode"),
    EvalSuite("ms", "ms", lambda a: a.mode in ("ms", "both"), _scales("ms", True), "--mode"),
)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = build_eval_parser().parse_args(argv)
    clamp_workers(args)
    return run(args)


def cli(argv: Optional[Sequence[str]] = None) -> None:
    """tools/eval_seg.py under the one error contract (gpaco.engine.cli)."""
    run_cli(main, argv)
