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
import os
import sys
from typing import Iterable

#: ``--workers`` above this many per CPU only costs memory and start-up time (and hundreds of
#: worker processes can exhaust it and hang the run): such values are lowered to it, with a note.
MAX_WORKERS_PER_CPU = 4


class FlagError(SystemExit):
    """A flag combination that cannot work; the message names the flag."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each flag's default appended as ``(default: X)``, except where the help
    text already states it or the default is None (the help says what happens then)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is argparse.SUPPRESS or "%(default)" in text \
                or "(default" in text.lower():
            return text
        return super()._get_help_string(action)


class RawHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """:class:`HelpFormatter` keeping the description's line breaks (a module docstring)."""


def flag_name(dest: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + dest.replace("_", "-")


def add_run_flags(p: argparse.ArgumentParser, *, default_output: str, print_freq: int) -> argparse._ArgumentGroup:
    """The run lifecycle's flags (gpaco.engine.lifecycle): output folder, resume, seed,
    determinism, the non-finite-loss policy, the collective timeout, dry run."""
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", default=default_output,
                   help="run folder: checkpoints, logs, args.yaml, metrics.json")
    g.add_argument("--resume", default=None, help="checkpoint path, or 'auto' for OUTPUT_DIR/checkpoint.pth")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the Python, NumPy and torch generators (model init, sampling, augmentation)")
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


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask under a scheduler, else all)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def clamp_workers(args: argparse.Namespace) -> None:
    """Lower ``--workers`` to :data:`MAX_WORKERS_PER_CPU` x the CPU count, saying so once."""
    workers = getattr(args, "workers", None)
    bound = MAX_WORKERS_PER_CPU * cpu_count()
    if workers is not None and workers > bound:
        if os.environ.get("RANK", "0") == "0":
            print(f"note: --workers {workers} is more than {MAX_WORKERS_PER_CPU} per CPU ({cpu_count()} CPUs); "
                  f"using {bound}", file=sys.stderr, flush=True)
        args.workers = bound
