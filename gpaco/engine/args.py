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
from typing import Iterable, Optional, Sequence

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


def add_run_flags(p: argparse.ArgumentParser, *, print_freq: int) -> argparse._ArgumentGroup:
    """The run lifecycle's flags (gpaco.engine.lifecycle): output folder, resume, seed,
    determinism, the non-finite-loss policy, the collective timeout, dry run."""
    g = p.add_argument_group("run")
    g.add_argument("--config", default=None, metavar="ARGS_YAML",
                   help="take every flag from a run's args.yaml (flags on the command line override it; "
                        f"{', '.join(flag_name(k) for k in CONFIG_IGNORED if k != 'config')} are not taken from it)")
    g.add_argument("--output-dir", default=None,
                   help="the run folder (default: runs/<method>-<arch>-<YYYYmmdd-HHMMSS>). A folder that holds "
                        "a run is refused unless --resume or --overwrite")
    g.add_argument("--overwrite", action="store_true",
                   help="a fresh run may replace the run in --output-dir (its checkpoint.pth, best.pth, logs)")
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
                dry_run=args.dry_run, nan_policy=args.nan_policy, dist_timeout=args.dist_timeout,
                overwrite=args.overwrite, run_name=f"{args.method}-{args.arch}")


#: args.yaml keys that --config does not take: they say how this invocation runs, not what it trains.
CONFIG_IGNORED = ("config", "resume", "overwrite", "dry_run")


def parse_with_config(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """``parser.parse_args(argv)``; with ``--config ARGS_YAML`` the file's values are the
    defaults, so the flags given on the command line override them. Each value goes through
    its flag's type, choices and nargs as on the command line (:func:`config_value`). Unknown
    keys, a bad value, a file that is not a YAML mapping or cannot be read are a FlagError
    naming the file (and key)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    path = pre.parse_known_args(argv)[0].config
    if path:
        import yaml

        try:
            with open(path, encoding="utf-8") as f:
                values = yaml.safe_load(f)
        except OSError as e:
            raise FlagError(f"--config {path}: cannot read it ({e.strerror or e})") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise FlagError(f"--config {path}{f':{mark.line + 1}' if mark else ''}: not valid YAML") from None
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise FlagError(f"--config {path}: expected one 'flag_name: value' per line, got a {type(values).__name__}")
        # --help is no value to take from a file
        actions = {a.dest: a for a in parser._actions if not isinstance(a, argparse._HelpAction)}
        unknown = [k for k in values if k not in actions]
        if unknown:
            raise FlagError(f"--config {path}: unknown key {unknown[0]!r} (not a flag of {parser.prog})")
        defaults = {}
        for key, value in values.items():
            if key in CONFIG_IGNORED:
                continue
            try:
                defaults[key] = config_value(parser, actions[key], value)
            except ValueError as e:
                raise FlagError(f"--config {path}: key {key!r}: {e}") from None
        parser.set_defaults(**defaults)
    return parser.parse_args(argv)


def _yaml_repr(value: object) -> str:
    """A YAML value as the user wrote it: ``true``/``null``, strings quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, (str, int, float)) else str(value)  # a date: 2024-01-01


def _config_scalar(parser: argparse.ArgumentParser, action: argparse.Action, value: object) -> object:
    """One value of a flag taking values, converted and checked like the command-line token."""
    expected = _expected(action, item=True)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):  # lists, mappings, dates, null
        what = {list: "a list", tuple: "a list", dict: "a mapping"}.get(type(value), _yaml_repr(value))
        raise ValueError(f"expected {expected}, got {what}")
    kind = action.type
    if kind is int and isinstance(value, float):  # `--epochs 2.5` is refused too
        raise ValueError(f"expected {expected}, got {value!r}")
    if kind is float and not isinstance(value, str):
        converted = float(value)  # a YAML int for a float flag is fine
    elif kind is int and not isinstance(value, str):
        converted = value
    else:  # the flag's own conversion of the command-line token (`arch: 50` is the token "50")
        try:
            converted = parser._get_value(action, value if isinstance(value, str) else str(value))
        except argparse.ArgumentError as e:
            detail = f"got {value!r}" if kind in (None, str, int, float) else e.message
            raise ValueError(f"expected {expected}, {detail}") from None
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(repr(c) for c in action.choices)
        raise ValueError(f"invalid choice {converted!r} (choose from {choices})")
    return converted


def _expected(action: argparse.Action, *, item: bool = False) -> str:
    """What the flag takes: ``an integer``, ``a list of 2 numbers``; ``item``: one element's kind."""
    kind = action.type
    name = {None: "a string", str: "a string", int: "an integer", float: "a number"}.get(
        kind, f"a {getattr(kind, '__name__', 'valid')} value")
    if item or action.nargs in (None, "?"):
        return name
    plural = name.split(" ", 1)[1] + "s"
    count = {"+": "one or more ", "*": ""}.get(action.nargs, f"{action.nargs} ")
    return f"a list of {count}{plural}"


def config_value(parser: argparse.ArgumentParser, action: argparse.Action, value: object) -> object:
    """The value ``--config`` gives ``action``: what the command line would give for it, or
    ValueError saying what was expected (argparse never checks defaults, so this does)."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
        if isinstance(value, bool) or (value is None and action.default is None):
            return value
        # "no" or 0 would otherwise switch the flag on
        raise ValueError(f"expected true or false, got {_yaml_repr(value)}")
    if type(action) is not argparse._StoreAction:
        raise ValueError(f"{flag_name(action.dest)} cannot be set from a config file")
    if value is None:
        if action.default is None:  # null is leaving the flag out
            return None
        raise ValueError(f"expected {_expected(action)}, got null (leave the key out for the default "
                         f"{_yaml_repr(action.default)})")
    if action.nargs in (None, "?"):
        return _config_scalar(parser, action, value)
    if isinstance(value, (list, tuple)):
        items = list(value)
    elif action.nargs in ("+", "*") and not isinstance(value, dict):
        items = [value]  # `milestones: 160` is `--milestones 160`
    else:
        raise ValueError(f"expected {_expected(action)}, got {_yaml_repr(value)}")
    if (isinstance(action.nargs, int) and len(items) != action.nargs) or (action.nargs == "+" and not items):
        raise ValueError(f"expected {_expected(action)}, got {len(items)} value{'s' * (len(items) != 1)}")
    return [_config_scalar(parser, action, v) for v in items]


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
    output = getattr(args, "output_dir", None)
    if output is not None and not output.strip():
        raise FlagError("--output-dir is empty; name a run folder (or leave the flag out for "
                        "runs/<method>-<arch>-<time>)")
    if output is None and getattr(args, "resume", None) == "auto":
        raise FlagError("--resume auto continues the run in --output-dir: name that folder (the default folder "
                        "is new for every run)")
    if getattr(args, "overwrite", False) and getattr(args, "resume", None):
        raise FlagError("--overwrite replaces the run in --output-dir and --resume continues one: give one of them")


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
