#!/usr/bin/env python
"""Convert a checkpoint (the original's released PaCo/GPaCo ResNets, MAE-style ViTs, ours) into our layout.

    python tools/convert_checkpoint.py IN OUT.pth            # weights-only .pth with metadata
    python tools/convert_checkpoint.py IN OUT.safetensors    # weights only (metadata in the header)
    python tools/convert_checkpoint.py --trust-pickle IN OUT.pth

The layout of IN is detected; the classifier (the class centers, the original's ``linear``)
becomes ``fc``; the projection, key encoder and queue are mapped when the target model has
them. Unused and missing keys are printed. Without ``--trust-pickle`` IN is read with
``torch.load(weights_only=True)``: nothing in it is executed.
"""
import argparse
import sys

from gpaco.methods import method_names
from gpaco.checkpoint import CheckpointError


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
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    from gpaco.models.convert import convert_file

    if args.trust_pickle:
        print(f"--trust-pickle: {args.input} may be unpickled in full, which runs any code it contains",
              file=sys.stderr)
    try:
        report, conversion = convert_file(args.input, args.output, trust_pickle=args.trust_pickle, method=args.method,
                                          arch=args.arch, num_classes=args.num_classes)
    except (CheckpointError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    print(report.summary())
    print(f"wrote {args.output} ({report.method} {report.arch}, {report.loaded} tensors)")
    return conversion


if __name__ == "__main__":
    main()
