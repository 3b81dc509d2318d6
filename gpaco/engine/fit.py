"""One ``fit`` for every task: the run from flags to the final report.

The engine owns the run -- the process group and seeds (:class:`~gpaco.engine.lifecycle.TrainingRun`),
building the model, criterion and optimizer through the method, resume and its checks, the
output folder, the loop over epochs (:func:`~gpaco.engine.step.train_epoch`), the method's
end-of-epoch hook, validation and the best checkpoint, saving, preemption, ``--stop-after``
and the final report. A :class:`Task` supplies what differs between classification and
segmentation: its data, how a model is evaluated, what a checkpoint records of its
position, and its report. A method (:mod:`gpaco.methods`) owns the training step.

    fit(ClassificationTask(args))   # tools/train.py
    fit(SegmentationTask(args))     # tools/train_seg.py (one "epoch" of --iters iterations)
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from gpaco.checkpoint import CheckpointError, rng_state
from gpaco.distributed import broadcast_buffers
from gpaco.engine.args import run_kwargs
from gpaco.engine.lifecycle import NonFiniteLossError, TrainingRun
from gpaco.engine.logging import print_main
from gpaco.engine.step import FitContext, train_epoch

__all__ = ["Task", "Position", "fit"]


class Position(dict):
    """Where a run stands: ``epoch`` (epochs done), ``step`` (micro-batches of the next epoch
    done), and for a mid-epoch stop its ``epoch_state`` and per-rank RNG states."""


class Task:
    """What a task supplies to :func:`fit` (classification and segmentation subclass it).

    Attributes: ``args`` (the parsed flags), ``method`` (this run's copy of the method),
    ``best_metric_key`` / ``best_step_key`` (checkpoint names of the best metric and its step),
    ``best_keys`` (what ``best.pth`` holds), ``resume_fixed`` (flags a resume may not change),
    ``epochs`` (the loop's epochs; segmentation: 1), ``num_classes``.
    """

    name = "task"
    step_key = "epoch"  # the checkpoint's position key (reconcile_best compares best.pth's)
    best_metric_key = "best_metric"
    best_step_key = "best_step"
    best_keys: Tuple[str, ...] = ()
    resume_fixed: Tuple[str, ...] = ()

    def __init__(self, args, method) -> None:
        self.args, self.method = args, method
        self.best_metric, self.best_step = -1.0, -1
        self.num_classes = 0
        self.epochs = 1
        self.stop_after_epochs: Optional[int] = None  # --stop-after in epochs (None: run to the end)
        self.model_config: Optional[Dict[str, Any]] = None  # how to rebuild the model (gpaco.methods.rebuild)
        self.last_step: Dict[str, float] = {}  # the last training step's loss and parts
        self.fit: Optional["_Fit"] = None  # set by fit(): save() and the context
        self.checkpoint: Optional[dict] = None  # the checkpoint this run resumes (set before build_model)

    # ------------------------------------------------------------------ building
    def build_data(self, lc: TrainingRun) -> None:
        """Datasets and the class count (before the model); print the run's header."""
        raise NotImplementedError

    def model_options(self) -> Dict[str, Any]:
        """``method.build_model`` keywords besides the architecture and the class count."""
        raise NotImplementedError

    def build_model(self, lc: TrainingRun, fresh: bool) -> nn.Module:
        raise NotImplementedError

    def build_context(self, lc: TrainingRun, model: nn.Module) -> FitContext:
        """The criterion, optimizer, scaler and schedule around ``model`` (fit wraps it in DDP after
        the method's ``setup``)."""
        raise NotImplementedError

    def train_loader(self, ctx: FitContext):
        raise NotImplementedError

    # ------------------------------------------------------------------ the run
    def dry_run(self, ctx: FitContext, loader) -> dict:
        raise NotImplementedError

    def read_position(self, ckpt: dict) -> Position:
        """The resumed checkpoint's position (KeyError/TypeError/ValueError: not a checkpoint of this task)."""
        raise NotImplementedError

    def resumed(self, position: Position, loader, lc: TrainingRun) -> str:
        """Check ``position`` against the loader and the flags (CheckpointError / FlagError,
        before anything is written); the line that says where the run resumes."""
        raise NotImplementedError

    def say_resumed(self, note: str) -> None:
        """Print ``note`` (from :meth:`resumed`) with the best so far, once best.pth is checked."""

    def position_state(self, position: Position) -> Dict[str, Any]:
        """What a checkpoint records of ``position`` (and of the task: class counts, names)."""
        raise NotImplementedError

    def describe_stop(self, position: Position, epoch_steps: int) -> Tuple[str, str, Dict[str, Any]]:
        """A stop at ``position`` (mid-epoch when its step > 0): (where the checkpoint is, what
        the preemption line says, the result's fields)."""
        raise NotImplementedError

    def start_epoch(self, ctx: FitContext, loader, epoch: int, skip: int, rng: Optional[dict]) -> None:
        """Point the loader at ``epoch`` (``skip`` steps done), seed it, set a per-epoch LR."""

    def end_epoch(self, ctx: FitContext, epoch: int, stats: dict) -> None:
        """Validation, the best, the checkpoint and the epoch's log record."""

    def finish(self, ctx: FitContext, last_epoch: int) -> dict:
        """The final report (or the ``--stop-after`` note); the run's result."""
        raise NotImplementedError


class _Fit:
    """The state of one :func:`fit`: the lifecycle, the task, the context."""

    def __init__(self, task: Task, lc: TrainingRun) -> None:
        self.task, self.lc, self.args = task, lc, task.args
        self.ctx: Optional[FitContext] = None
        task.fit = self  # the task's hooks save through it

    def run(self) -> dict:
        task, lc = self.task, self.lc
        task.build_data(lc)
        ckpt = task.checkpoint = lc.resume_checkpoint()
        model = task.build_model(lc, fresh=ckpt is None)
        self.ctx = ctx = task.build_context(lc, model)
        ctx.method.setup(ctx)
        ctx.model = lc.wrap_ddp(ctx.module)
        if getattr(self.args, "compile", False):
            ctx.model = torch.compile(ctx.model)
        loader = task.train_loader(ctx)
        if self.args.dry_run:
            return task.dry_run(ctx, loader)
        position, note = Position(epoch=0, step=0), None
        if ckpt is not None:
            position, note = self.resume(ckpt, loader)
        lc.open_output(vars(self.args))
        if ckpt is not None:
            task.best_metric, task.best_step = lc.reconcile_best(
                ckpt, step_key=task.step_key, best_step_key=task.best_step_key,
                best_metric_key=task.best_metric_key, best_keys=task.best_keys)
            task.say_resumed(note)
            # The record of the checkpoint's step, when the run that saved it died before logging it
            # (only into that run's own folder: a run started from another's checkpoint has its own history).
            own = os.path.realpath(os.path.dirname(lc.resume_path or "")) == os.path.realpath(lc.output_dir)
            if own and lc.logger.log_pending(ckpt.get("pending_log")):
                print_main(f"note: the log record of {task.step_key} {ckpt['pending_log'].get(task.step_key)} was "
                           f"missing (the run stopped right after its checkpoint); logged it from {lc.resume_path}")
        return self.loop(loader, position)

    def resume(self, ckpt: dict, loader) -> Tuple[Position, str]:
        task, lc, ctx = self.task, self.lc, self.ctx
        lc.check_resume_args(ckpt.get("args") or {}, vars(self.args),
                             task.resume_fixed + tuple(task.method.model_options))
        try:
            lc.load_model_state(ctx.module, ckpt["model"], lc.resume_path)
            ctx.optimizer.load_state_dict(ckpt["optimizer"])
            lay_out_like_params(ctx.optimizer)
            if ctx.scaler is not None and ckpt.get("scaler"):
                ctx.scaler.load_state_dict(ckpt["scaler"])
            position = task.read_position(ckpt)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{lc.resume_path} is not a gpaco {task.name} training checkpoint (--resume needs "
                                  f"the checkpoint.pth of a run): {type(e).__name__}: {e}") from None
        try:
            ctx.method.load_state_dict(ckpt.get("method_state") or {})
        except ValueError as e:
            raise CheckpointError(f"{lc.resume_path}: {e}") from None
        return position, task.resumed(position, loader, lc)

    def loop(self, loader, position: Position) -> dict:
        task, lc, ctx = self.task, self.lc, self.ctx
        start_epoch, start_step = position["epoch"], position["step"]
        stop_after = None if task.stop_after_epochs is None else start_epoch + task.stop_after_epochs
        last_epoch = task.epochs if stop_after is None else min(task.epochs, stop_after)
        ctx.epochs = last_epoch  # the ETA covers the epochs this process will run
        for epoch in range(start_epoch, last_epoch):
            skip = start_step if epoch == start_epoch else 0
            task.start_epoch(ctx, loader, epoch, skip, position.get("rng") if skip else None)
            stats = train_epoch(ctx, loader, epoch=epoch, start_step=skip,
                                epoch_state=position.get("epoch_state") if skip else None)
            task.last_step = stats.pop("last")
            # Rank 0's BatchNorm statistics on every rank (DDP's own rule), so that the evaluation
            # below and the checkpoint (written by rank 0) are the same model.
            broadcast_buffers(ctx.module)
            if "stopped_at_step" in stats:  # preempted mid-epoch: every rank stopped after the same step
                stopped = Position(epoch=epoch, step=stats["stopped_at_step"], epoch_state=stats["epoch_state"],
                                   rng_per_rank=lc.gather_rng_states(), world_size=lc.world_size)
                where, said, info = task.describe_stop(stopped, skip + len(loader))
                self.save(stopped, where=where)
                return lc.preempted(said, info)
            ctx.method.on_train_epoch_end(ctx)
            epoch_steps = skip + len(loader)
            if epoch_steps and stats.get("nan_skipped", 0) >= epoch_steps:
                raise NonFiniteLossError(f"every step of epoch {epoch + 1} ({epoch_steps}) had a non-finite loss and "
                                         f"was skipped (--nan-policy skip); stopped, the last checkpoint is kept (lower "
                                         f"--lr or set --clip-grad)")
            task.end_epoch(ctx, epoch, stats)
            # A stop signal during the last step, the evaluation or the save: the epoch's checkpoint is written.
            if epoch + 1 < task.epochs and lc.stop_agreed():
                _, said, info = task.describe_stop(Position(epoch=epoch + 1, step=0), 0)
                return lc.preempted(said, info)
        return task.finish(ctx, last_epoch)

    # ------------------------------------------------------------------ saving
    def state(self, position: Position) -> Dict[str, Any]:
        """The checkpoint of the run at ``position``: weights, optimizer, scaler, the method's
        own state, how to rebuild the model, the flags, the best so far and the task's fields."""
        task, ctx = self.task, self.ctx
        return {
            "model": ctx.module.state_dict(), "optimizer": ctx.optimizer.state_dict(),
            "scaler": ctx.scaler.state_dict() if ctx.scaler is not None else None,
            **task.position_state(position),
            task.best_metric_key: task.best_metric, task.best_step_key: task.best_step,
            "args": vars(self.args), "num_classes": task.num_classes, "arch": self.args.arch,
            "method": self.args.method, "model_config": task.model_config,
            "method_state": ctx.method.state_dict(), "rng": rng_state(),
        }

    def save(self, position: Position, *, best: bool = False, where: str = "") -> None:
        self.lc.save(self.state(position), best_keys=self.task.best_keys if best else None, where=where)


def lay_out_like_params(optimizer: torch.optim.Optimizer) -> int:
    """Give every per-parameter state tensor (momentum, Adam's moments) its parameter's memory
    layout; returns how many were re-laid. ``load_state_dict`` keeps the saved strides, and a
    fused kernel walking a parameter and its NCHW momentum buffer as if both were channels-last
    gives wrong updates without an error (a checkpoint of another memory format)."""
    moved = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    optimizer.state[p][key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
                    moved += 1
    return moved


def fit(task: Task) -> dict:
    """Train ``task`` under a :class:`TrainingRun` of its flags; the run's result dict. A run
    that was not preempted ends with ``done in <seconds>s``."""
    t0 = time.time()
    with TrainingRun(**run_kwargs(task.args)) as lc:
        task.args.output_dir = lc.output_dir
        result = _Fit(task, lc).run()
    if not result.get("preempted") and os.environ.get("RANK", "0") == "0":  # the group is gone: not print_main
        print(f"done in {time.time() - t0:.1f}s", flush=True)
    return result

