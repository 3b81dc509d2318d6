#!/usr/bin/env python
"""Convert a checkpoint (the original's released PaCo/GPaCo ResNets, MAE-style ViTs, the GenDD authors'
students, ours) into our layout.

    python tools/convert_checkpoint.py IN OUT.pth            # weights-only .pth with metadata
    python tools/convert_checkpoint.py IN OUT.safetensors    # weights only (metadata in the header)
    python tools/convert_checkpoint.py --trust-pickle IN OUT.pth
    python tools/convert_checkpoint.py --overwrite IN OUT.pth   # OUT.pth exists: replace it

The layout of IN is detected. Classification: the classifier (the class centers, the original's ``linear``)
becomes ``fc``; the projection, key encoder and queue are mapped when the target model has
them. Segmentation: an mmseg DeepLabV3+ ResNetV1c checkpoint (the original's
``deeplabv3plus_r{18,50,101}-d8`` releases) is renamed key for key to our SegModel
(``backbone.`` -> ``encoder.``, ``decode_head.conv_seg.`` -> ``cls_seg.1.``, ...) and
written for tools/eval_seg.py. Unused and missing keys are printed. Without ``--trust-pickle`` IN is read with
``torch.load(weights_only=True)``: nothing in it is executed.
"""
import argparse
import os
import sys

from gpaco.methods import method_names
from gpaco.checkpoint import CheckpointError
from gpaco.engine.args import FlagError
from gpaco.engine.cli import add_debug_flag, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/convert_checkpoint.py", description=__doc__.split("\n\n")[0])
    p.add_argument("input", help="checkpoint to read (.pth, .pth.tar, .safetensors)")
    p.add_argument("output", help="file to write: .safetensors for weights only, anything else a .pth")
    p.add_argument("--trust-pickle", action="store_true",
                   help="the input holds pickled Python objects (e.g. an argparse.Namespace): unpickle it. Data-only "
                        "objects (Namespace, NumPy scalars/arrays) are rebuilt without running code; anything else "
                        "is FULLY unpickled, which runs whatever code the file contains. Only for files you trust.")
    p.add_argument("--method", choices=method_names("classification"), default=None,
                   help="target model type (default: the checkpoint's, or what its layout implies)")
    p.add_argument("--arch", default=None, help="backbone (default: the checkpoint's own 'arch' / MAE args.model)")
    p.add_argument("--num-classes", type=int, default=None, help="default: the classifier's rows")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists (otherwise refused)")
    add_debug_flag(p)
    return p


def convert_mmseg(src: str, dst: str, *, trust_pickle: bool = False):
    """An mmseg segmentation checkpoint -> our seg checkpoint (None if ``src`` is not one)."""
    from gpaco.checkpoint import load_checkpoint, load_checkpoint_trusting_pickle, save_checkpoint, unwrap_state_dict
    from gpaco.models.mmseg import from_mmseg_state_dict, infer_mmseg_model, is_mmseg_state_dict
    from gpaco.models.seg import build_seg_model

    obj = load_checkpoint_trusting_pickle(src)[0] if trust_pickle else load_checkpoint(src)
    try:
        state = unwrap_state_dict(obj, src)
    except ValueError:
        return None
    if not is_mmseg_state_dict(state):
        return None
    try:
        info = infer_mmseg_model(state)
        mapped = from_mmseg_state_dict(state)
        model = build_seg_model(info["arch"], info["num_classes"], method=info["method"], embed_dim=info["embed_dim"])
        model.load_state_dict(mapped, strict=True)
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"{src}: mmseg checkpoint, not convertible: {' '.join(str(e).split())[:400]}") from None
    save_checkpoint({"model": mapped, **info, "args": dict(info), "conversion": {"source": src, "layout": "mmseg"}},
                    dst)
    print(f"{src}: mmseg {info['method']} {info['arch']}, {info['num_classes']} classes: {len(mapped)} tensors, "
          f"every key mapped; wrote {dst} (evaluate with tools/eval_seg.py --checkpoint {dst} --dataset ...)")
    return {"layout": "mmseg", **info}


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    from gpaco.methods.rebuild import convert_file

    if os.path.exists(args.output) and not args.overwrite:  # before anything is read
        raise FlagError(f"{args.output} already exists; give another output file, or --overwrite to replace it")
    if args.trust_pickle:
        print(f"--trust-pickle: {args.input} may be unpickled in full, which runs any code it contains",
              file=sys.stderr)
    try:
        seg = convert_mmseg(args.input, args.output, trust_pickle=args.trust_pickle)
        if seg is not None:
            return seg
        report, conversion = convert_file(args.input, args.output, trust_pickle=args.trust_pickle, method=args.method,
                                          arch=args.arch, num_classes=args.num_classes,
                                          overwrite=args.overwrite)
    except (CheckpointError, FileNotFoundError, FileExistsError, ValueError) as e:  # ValueError: not a state dict (unwrap_state_dict)
        raise SystemExit(f"error: {e}") from None
    print(report.summary())
    print(f"wrote {args.output} ({report.method} {report.arch}, {report.loaded} tensors)")
    return conversion


if __name__ == "__main__":
    run_cli(main)
