"""tools/train.py: flags -> :class:`~gpaco.classification.task.ClassificationTask` -> :func:`~gpaco.engine.fit.fit`.

The run (process group, seeding, resume, atomic saves, preemption, NaN policy, logs, the
loop) is the engine's; the model, criterion and training step are the method's
(:mod:`gpaco.methods`); data, evaluation and the report are the task's. Runs as one plain
process (CPU or one GPU) or one process per GPU under torchrun.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from gpaco.classification.args import parse_train_args
from gpaco.classification.task import ClassificationTask
from gpaco.engine.cli import run_cli
from gpaco.engine.fit import fit

__all__ = ["run", "main", "cli"]


def run(args: argparse.Namespace) -> dict:
    return fit(ClassificationTask(args))


def main(argv: Optional[Sequence[str]] = None) -> dict:
    return run(parse_train_args(argv))


def cli(argv: Optional[Sequence[str]] = None) -> None:
    """tools/train.py (docs/reliability.md: one ``error: ...`` line, exit 2; a preempted run exits 0)."""
    run_cli(main, argv)
