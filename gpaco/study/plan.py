"""A study's plan: datasets x methods x seeds, each an ordinary run folder
``OUT/<dataset>/<method>/seed<k>`` trained by ``tools/train.py`` / ``tools/train_seg.py``.

A :class:`Job` is one (dataset, method, seed): one :class:`Run` per stage of the method
(:mod:`gpaco.study.presets`). A run's state comes from its own files (:func:`run_state`):
``finished`` when its ``metrics.json`` holds the final test metric, ``partial`` when it left a
checkpoint (``--resume auto`` continues it), else ``new``. A finished run is never launched
again, so a study survives preemption and grows with more seeds; a finished run whose
``args.yaml`` records other flags than the study now asks for is an error
(:func:`check_finished_flags`), not a silent mix of two setups.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from gpaco.engine.args import FlagError
from gpaco.study.presets import COMMON, DEMO_DATA, stages_of

__all__ = ["StudyError", "Dataset", "Run", "Job", "build_plan", "run_state", "final_metric", "check_finished_flags",
           "train_command", "FINAL_METRIC", "RESERVED_FLAGS", "DATA_FLAGS"]

#: the metrics.json entry a finished run of each task has (the test split's)
FINAL_METRIC = {"classification": "top1", "segmentation": "miou"}
#: flags the study sets for each run (and where the user sets them instead)
RESERVED_FLAGS = {"--seed": "--seeds", "--output-dir": "--out", "--resume": "(the study resumes unfinished runs)",
                  "--overwrite": "the study's --overwrite (before --)", "--method": "--methods",
                  "--dry-run": "--plan (prints every command)"}
#: flags that name the data (after ``--`` they replace the demo data)
DATA_FLAGS = {"classification": ("--dataset", "--data-root", "--train-list", "--val-list", "--test-list"),
              "segmentation": ("--dataset", "--data-root")}
_TRAIN_SCRIPT = {"classification": "train.py", "segmentation": "train_seg.py"}
_TRAIN_MODULE = {"classification": "gpaco.classification", "segmentation": "gpaco.segmentation"}


class StudyError(FlagError):
    """A study that cannot run as asked: one ``error: ...`` line, exit 2 (gpaco.engine.cli)."""


class Dataset(NamedTuple):
    """A dataset of the study: its name (the first folder level under OUT) and the data flags of
    its runs."""
    name: str
    flags: Tuple[str, ...]


class Run(NamedTuple):
    """One training run: its folder and the training tool's arguments (without the interpreter)."""
    folder: str
    argv: Tuple[str, ...]


class Job(NamedTuple):
    """One (dataset, method, seed): its stages' runs, the last one holding the results."""
    dataset: str
    method: str
    seed: int
    runs: Tuple[Run, ...]

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.method}/seed{self.seed}"

    @property
    def folder(self) -> str:
        return self.runs[-1].folder


def train_command(task: str, python: str = sys.executable) -> List[str]:
    """The interpreter and entry of a training run: ``tools/train.py`` of this checkout, or the
    module's ``cli`` when gpaco is installed without its tools."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools",
                          _TRAIN_SCRIPT[task])
    if os.path.isfile(script):
        return [python, script]
    return [python, "-c", f"from {_TRAIN_MODULE[task]}.train import cli; cli()"]


def _flag_given(flags: Sequence[str], names: Sequence[str]) -> Optional[str]:
    return next((f.split("=")[0] for f in flags if f.split("=")[0] in names), None)


def _flag_value(flags: Sequence[str], name: str) -> Optional[str]:
    value = None
    for i, f in enumerate(flags):
        if f == name and i + 1 < len(flags):
            value = flags[i + 1]
        elif f.startswith(name + "="):
            value = f[len(name) + 1:]
    return value


def datasets_of(task: str, data: Sequence[str], extra: Sequence[str], name: Optional[str]) -> List[Dataset]:
    """The study's datasets: each ``--data`` folder; else the data flags after ``--`` (one dataset,
    named by ``--name`` or its ``--data-root``); else the demo data."""
    given = _flag_given(extra, DATA_FLAGS[task])
    if data and given:
        raise StudyError(f"--data names the data and so does {given} after --: give one of them")
    if given:
        root = _flag_value(extra, "--data-root")
        label = name or (os.path.basename(os.path.normpath(root)) if root else "data")
        return [Dataset(label, ())]  # the flags after -- are added to every run
    if name and len(data) > 1:
        raise StudyError(f"--name names one dataset; --data gives {len(data)} (they are named by their folders)")
    out = []
    for folder in data or [DEMO_DATA[task]]:
        label = name or os.path.basename(os.path.normpath(folder))
        if task == "classification":
            flags = ("--data-root", folder, "--train-list", os.path.join(folder, "train.txt"),
                     "--val-list", os.path.join(folder, "val.txt"), "--test-list", os.path.join(folder, "test.txt"))
            if data:  # the demo data is built before the runs; a user's must be there
                missing = [f for f in ("train.txt", "val.txt", "test.txt")
                           if not os.path.isfile(os.path.join(folder, f))]
                if missing:
                    raise StudyError(f"--data {folder}: no {', '.join(missing)} (a --data folder holds train.txt, "
                                     f"val.txt and test.txt; other layouts: give the data flags after --)")
        else:
            if data and not os.path.isdir(folder):
                raise StudyError(f"--data {folder}: no such folder")
            flags = ("--data-root", folder)
        out.append(Dataset(label, flags))
    names = [d.name for d in out]
    if len(set(names)) != len(names):
        raise StudyError(f"--data: two folders have the same name {sorted(n for n in names if names.count(n) > 1)[0]!r}"
                         f" (the study's folders are named by it); rename or link one")
    return out


def _two_view_of(aug: str) -> Optional[str]:
    from gpaco.data.transforms import TWO_VIEW_STRATEGIES

    if aug in TWO_VIEW_STRATEGIES:
        return aug
    return next((name for name, views in TWO_VIEW_STRATEGIES.items() if views == (aug, aug)), None)


def override_flags(task: str, method: str, *, arch: Optional[str], aug: Optional[str], aug2: Optional[str],
                   norm: Optional[str]) -> Tuple[str, ...]:
    """The study's ``--arch``, ``--aug``/``--aug2`` and ``--norm`` as training flags of one method:
    a two-view method (GPaCo, PaCo, ResCom) gets ``--aug2``, else the two-view strategy of
    ``--aug`` twice (``digits`` -> ``digits_digits``)."""
    flags: List[str] = []
    if arch:
        flags += ["--arch", arch]
    if task == "segmentation":
        if aug or aug2 or norm:
            raise StudyError("--aug, --aug2 and --norm are classification flags (segmentation augments with "
                             "--ratio-range, --flip-prob, --photometric after --)")
        return tuple(flags)
    from gpaco.methods import get_method

    two_view = get_method(method).views == 2 and not get_method(method).paired_views
    if two_view and (aug2 or aug):
        name = aug2 or _two_view_of(aug)
        if name is None:
            raise StudyError(f"--aug {aug}: {method} trains on two views and no two-view strategy repeats {aug}; "
                             f"pass --aug2 with a two-view strategy for it")
        flags += ["--aug", name]
    elif aug:
        flags += ["--aug", aug]
    if norm:
        flags += ["--norm", norm]
    return tuple(flags)


def check_extra_flags(extra: Sequence[str]) -> None:
    for f in extra:
        key = f.split("=")[0]
        if key in RESERVED_FLAGS:
            raise StudyError(f"{key} after --: the study sets it for each run; use {RESERVED_FLAGS[key]}")


def parse_method_labels(task: str, methods: Sequence[str]) -> List[Tuple[str, str]]:
    """``--methods`` entries as (label, method): ``gpaco`` or ``gpaco_a01=gpaco`` (a variant with its
    own ``--flags gpaco_a01=...``)."""
    from gpaco.methods import method_names

    known = method_names(task)
    out = []
    for entry in methods:
        label, _, method = entry.partition("=")
        method = method or label
        if not label or "/" in label or label.startswith("."):
            raise StudyError(f"--methods: {entry!r} is not a method name (LABEL or LABEL=METHOD)")
        if method not in known:
            raise StudyError(f"--methods: unknown {task} method {method!r} (choose from {', '.join(known)})")
        out.append((label, method))
    labels = [lab for lab, _ in out]
    if len(set(labels)) != len(labels):
        raise StudyError(f"--methods: {sorted(lab for lab in labels if labels.count(lab) > 1)[0]!r} is listed twice "
                         f"(name a variant LABEL=METHOD)")
    return out


def merge_flags(task: str, argv: Sequence[str]) -> Tuple[str, ...]:
    """``argv`` with each flag given once: where a later occurrence (or its ``--no-`` form) sets the same
    option again, its value replaces the earlier one in the earlier place, so a printed command reads
    as what runs (``--epochs 30 ... --epochs 5`` -> ``--epochs 5``). Unknown flags stay as they are
    (the training tool names them)."""
    actions = {s: a for a in _train_parser(task)._actions for s in a.option_strings}
    groups: List[Tuple[Optional[str], List[str]]] = []  # (dest or None, tokens)
    i = 0
    while i < len(argv):
        tok = argv[i]
        key = tok.split("=", 1)[0]
        action = actions.get(key) if tok.startswith("-") else None
        if action is None:
            groups.append((None, [tok]))
            i += 1
            continue
        n = 0 if "=" in tok else (0 if action.nargs == 0 else 1 if action.nargs in (None, "?") else
                                  action.nargs if isinstance(action.nargs, int) else -1)
        j = i + 1
        while (n < 0 or j < i + 1 + n) and j < len(argv) and not (argv[j].startswith("-") and
                                                                   not _is_number(argv[j])):
            j += 1
        groups.append((action.dest, list(argv[i:j])))
        i = j
    last = {dest: k for k, (dest, _) in enumerate(groups) if dest is not None}
    out, placed = [], set()
    for dest, tokens in groups:
        if dest is None:
            out += tokens
        elif dest not in placed:
            placed.add(dest)
            out += groups[last[dest]][1]
    return tuple(out)


def _is_number(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def build_plan(task: str, out: str, methods: Sequence[Tuple[str, str]], seeds: Sequence[int],
               datasets: Sequence[Dataset], *, extra: Sequence[str] = (), per_method: Dict[str, Sequence[str]] = (),
               overrides: Dict[str, Sequence[str]] = (), overwrite: bool = False) -> List[Job]:
    """Every job of the study, seed-major (seed 0 of every method first, so a study cut short has
    the same seeds of every method).

    A run's arguments, later ones winning (:func:`merge_flags`): ``--method``, the task's common demo
    flags, the dataset's flags, the first stage's preset flags, ``overrides[label]`` (the study's
    --arch/--aug/--norm), ``extra`` (after ``--``), a later stage's preset flags,
    ``per_method[folder label]`` (``--flags LABEL=...``: ``mislas_stage1`` and ``mislas`` are
    MiSLAS's two stages), then seed, output folder and ``--resume auto`` (``--overwrite`` instead
    with ``overwrite``).
    """
    per_method, overrides = dict(per_method), dict(overrides)
    jobs = []
    for data in datasets:
        for seed in seeds:
            for label, method in methods:
                runs, previous = [], None
                for stage in stages_of(task, method):
                    stage_label = label + stage.folder_suffix
                    folder = os.path.join(out, data.name, stage_label, f"seed{seed}")
                    flags = tuple(f.replace("{previous}", previous) if previous else f for f in stage.flags)
                    # a later stage's own flags (MiSLAS stage 2: 3 epochs) define it: they win over --'s
                    first, later = (flags, ()) if previous is None else ((), flags)
                    argv = merge_flags(task, ("--method", stage.method, *COMMON[task], *data.flags, *first,
                                              *overrides.get(label, ()), *extra, *later,
                                              *per_method.get(stage_label, ()), "--seed", str(seed),
                                              "--output-dir", folder,
                                              *(("--overwrite",) if overwrite else ("--resume", "auto"))))
                    runs.append(Run(folder, argv))
                    previous = folder
                jobs.append(Job(data.name, label, seed, tuple(runs)))
    return jobs


def final_metric(folder: str, task: str) -> Optional[float]:
    """The final test metric in ``folder/metrics.json`` (top-1 / mIoU), or None when the run has not
    finished (no file, a partial file, a run stopped by ``--stop-after``)."""
    path = os.path.join(folder, "metrics.json")
    try:
        with open(path, encoding="utf-8") as f:
            metrics = json.load(f)
    except (OSError, ValueError):
        return None
    value = metrics.get(FINAL_METRIC[task]) if isinstance(metrics, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def run_state(folder: str, task: str) -> str:
    """``finished`` (metrics.json with the test metric), ``partial`` (a checkpoint to resume) or
    ``new``."""
    from gpaco.engine.lifecycle import run_evidence

    if final_metric(folder, task) is not None:
        return "finished"
    return "partial" if os.path.isdir(folder) and run_evidence(folder) else "new"


def _train_parser(task: str) -> argparse.ArgumentParser:
    if task == "classification":
        from gpaco.classification.args import build_train_parser
    else:
        from gpaco.segmentation.train import build_train_parser
    return build_train_parser()


def parse_run(task: str, run: Run) -> argparse.Namespace:
    """The run's flags as its training tool parses and checks them (notes it prints are dropped);
    a flag it refuses is a :class:`StudyError` naming the run."""
    if task == "classification":
        from gpaco.classification.args import parse_train_args
    else:
        from gpaco.segmentation.train import parse_train_args
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            return parse_train_args(list(run.argv))
    except SystemExit as e:  # argparse (usage printed into err) or our FlagError
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        message = e.code if isinstance(e.code, str) else (lines[-1] if lines else f"exit {e.code}")
        message = message.split("error: ", 1)[-1]
        raise StudyError(f"{run.folder}: the training flags do not parse: {message}") from None


def check_finished_flags(task: str, run: Run, parsed: argparse.Namespace) -> Dict[str, tuple]:
    """``{flag dest: (recorded, asked)}`` for the flags the study gives explicitly (values other than
    the tool's defaults) that differ from the finished run's ``args.yaml`` (empty: none, or no
    args.yaml to compare with)."""
    import yaml

    from gpaco.engine.lifecycle import changed_args

    path = os.path.join(run.folder, "args.yaml")
    try:
        with open(path, encoding="utf-8") as f:
            recorded = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return {}
    if not isinstance(recorded, dict):
        return {}
    defaults = {a.dest: a.default for a in _train_parser(task)._actions}
    asked = {k: v for k, v in vars(parsed).items()
             if v is not None and (k not in defaults or v != defaults[k]) and k != "seed"}
    return changed_args(recorded, asked)


def check_plan(task: str, jobs: Sequence[Job]) -> Dict[str, str]:
    """Parse every run's flags (a bad flag stops the study before anything trains) and compare each
    finished run with its ``args.yaml``; returns ``{folder: state}``."""
    states, stale = {}, []
    for job in jobs:
        for run in job.runs:
            parsed = parse_run(task, run)
            states[run.folder] = run_state(run.folder, task)
            if states[run.folder] == "finished":
                changed = check_finished_flags(task, run, parsed)
                if changed:
                    stale.append((run.folder, changed))
    if stale:
        folder, changed = stale[0]
        what = ", ".join(f"--{k.replace('_', '-')} {old} -> {new}" for k, (old, new) in sorted(changed.items()))
        more = f" (and {len(stale) - 1} more run(s))" if len(stale) > 1 else ""
        raise StudyError(f"{folder} finished with other flags ({what}){more}: the study would mix two setups; "
                         f"rerun with the flags it had, retrain with --overwrite, or write to another --out")
    return states
