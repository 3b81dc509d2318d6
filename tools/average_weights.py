#!/usr/bin/env python
"""Write the exponential average of a run's weights over epochs as a checkpoint (the DKL code's "SWA").

    python tools/average_weights.py runs/ikl_at_c100            # -> runs/ikl_at_c100/averaged.pth
    python tools/average_weights.py --epoch-files e1.pt e2.pt ... --decay 0.9 --out swa.pth

An adversarial-training run (``--method pgd_at / trades_at / ikl_at / gkl_at``) keeps
``S_1 = w_1, S_e = (1 - d) w_e + d S_{e-1}`` (``--at-average-decay`` d, 0.9) in its checkpoint
as it trains; this writes it out as ``averaged.pth``, a checkpoint of the run that
``tools/eval.py`` and ``tools/eval_adversarial.py`` take like ``best.pth``. With
``--epoch-files`` it averages state dicts given in epoch order instead (the original's
``ours-model-epoch{e}.pt`` files; ``module.`` prefixes dropped), as its ``swa.py DIR 0.9 1 200``.
Integer buffers (BatchNorm's batch counters) are averaged as floats and rounded back.
"""
import argparse
import os

import torch

from gpaco.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, unwrap_state_dict
from gpaco.engine.args import FlagError
from gpaco.engine.cli import add_debug_flag, run_cli
from gpaco.models.weight_average import average_state_dicts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/average_weights.py", description=__doc__.split("\n\n")[0])
    p.add_argument("run", nargs="?", help="an adversarial-training run folder (its checkpoint.pth) or checkpoint file")
    p.add_argument("--out", default=None, help="file to write (default: RUN/averaged.pth)")
    p.add_argument("--epoch-files", nargs="+", default=None, metavar="FILE",
                   help="average these state dicts, in the order given, instead of a run's running average")
    p.add_argument("--decay", type=float, default=0.9, help="with --epoch-files: S = (1 - decay) w + decay S")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_debug_flag(p)
    return p


def _like(average, reference):
    """The averaged tensors in the dtypes of ``reference`` (integer counters rounded)."""
    return {k: (v.round() if not reference[k].is_floating_point() else v).to(reference[k].dtype)
            for k, v in average.items()}


def from_run(path: str) -> tuple:
    """(checkpoint with the averaged weights as its model, the epochs averaged) of a run."""
    ckpt_path = os.path.join(path, "checkpoint.pth") if os.path.isdir(path) else path
    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"{ckpt_path} not found (give an adversarial-training run folder or its checkpoint.pth)")
    ckpt = load_checkpoint(ckpt_path)
    average = (ckpt.get("method_state") or {}).get("weight_average") if isinstance(ckpt, dict) else None
    if not average or not average.get("count"):
        raise CheckpointError(f"{ckpt_path} holds no weight average (only --method pgd_at/trades_at/ikl_at/gkl_at "
                              f"runs keep one, from their first finished epoch on)")
    out = {k: v for k, v in ckpt.items() if k not in ("optimizer", "scaler", "method_state", "rng")}
    out["model"] = _like(average["average"], ckpt["model"])
    out["weight_average"] = {"decay": average["decay"], "epochs": average["count"], "source": ckpt_path}
    return out, average["count"]


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if (args.run is None) == (args.epoch_files is None):
        raise FlagError("give either a run folder (RUN) or --epoch-files FILE ..., not both")
    if not 0.0 <= args.decay < 1.0:
        raise FlagError(f"--decay must be in [0, 1), got {args.decay}")
    out = args.out or (os.path.join(args.run, "averaged.pth") if args.run and os.path.isdir(args.run) else None)
    if out is None:
        raise FlagError("--out FILE is needed unless RUN is a run folder")
    if os.path.exists(out) and not args.overwrite:
        raise FlagError(f"{out} already exists; give another --out, or --overwrite to replace it")
    if args.run is not None:
        state, epochs = from_run(args.run)
        decay = state["weight_average"]["decay"]
    else:
        missing = [f for f in args.epoch_files if not os.path.isfile(f)]
        if missing:
            raise FileNotFoundError(f"--epoch-files: {missing[0]} not found")
        first = unwrap_state_dict(load_checkpoint(args.epoch_files[0]), args.epoch_files[0])
        files = iter(args.epoch_files)
        average = average_state_dicts((unwrap_state_dict(load_checkpoint(f), f) for f in files), args.decay)
        state, epochs, decay = {"model": _like(average, first)}, len(args.epoch_files), args.decay
    save_checkpoint(state, out)
    print(f"wrote {out}: the average of {epochs} epochs' weights (decay {decay:g})")
    return {"out": out, "epochs": epochs}


if __name__ == "__main__":
    run_cli(main)
