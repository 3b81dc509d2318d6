"""Flags every tool shares: the error type for bad flags, the run group, range checks.

The sh/ recipe is the config: every hyperparameter is a flag, the resolved values are
written to ``args.yaml`` in the run folder. Booleans use ``BooleanOptionalAction`` so
they can be switched off. Task flags live in ``gpaco.classification.args`` and
``gpaco.segmentation.train``; the methods' own flags in their registry rows
(:mod:`gpaco.methods`).
"""
from __future__ import annotations

import argparse
import math
from typing import Iterable


class FlagError(SystemExit):
    """A flag combination that cannot work; the message names the flag."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


def flag_name(dest: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + dest.replace("_", "-")


def add_run_flags(p: argparse.ArgumentParser, *, default_output: str, print_freq: int) -> argparse._ArgumentGroup:
    """The run lifecycle's flags (gpaco.engine.lifecycle): output folder, resume, seed,
    determinism, the non-finite-loss policy, the collective timeout, dry run."""
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", default=default_output)
    g.add_argument("--resume", default=None, help="checkpoint path, or 'auto' for OUTPUT_DIR/checkpoint.pth")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--deterministic", action="store_true",
                   help="torch deterministic algorithms: two CPU runs are bit-identical (docs/reliability.md "
                        "says what differs on GPU)")
    g.add_argument("--nan-policy", default="stop", choices=("stop", "skip"),
                   help="non-finite loss: stop (name the step, keep the last checkpoint) or skip the "
                        "batch and count it in the log (nan_skipped)")
    g.add_argument("--dist-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="process-group collective timeout under torchrun: a dead or stuck peer fails the "
                        "job after this long instead of hanging it")
    g.add_argument("--print-freq", type=int, default=print_freq, help="iterations between progress lines")
    return g


def run_kwargs(args: argparse.Namespace) -> dict:
    """gpaco.engine.lifecycle.TrainingRun keywords of the run flags."""
    return dict(output_dir=args.output_dir, resume=args.resume, seed=args.seed, deterministic=args.deterministic,
                dry_run=args.dry_run, nan_policy=args.nan_policy, dist_timeout=args.dist_timeout)


def check_finite(args: argparse.Namespace, names: Iterable[str]) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and not math.isfinite(value):
            raise FlagError(f"{flag_name(name)} must be a finite number, got {value}")


def check_positive(args: argparse.Namespace, names: Iterable[str], *, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and (value < 0 if allow_zero else value <= 0):
            raise FlagError(f"{flag_name(name)} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def validate_run_args(args: argparse.Namespace) -> None:
    """Range checks of the run group."""
    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed < 2**63:
        raise FlagError(f"--seed must be in [0, 2^63), got {seed}")
    timeout = getattr(args, "dist_timeout", None)
    check_finite(args, ("dist_timeout",))
    if timeout is not None and timeout <= 0:
        raise FlagError(f"--dist-timeout must be > 0 seconds, got {timeout}")
    check_positive(args, ("print_freq",), allow_zero=True)
