"""One training epoch of micro-batches, for every task and method.

The method owns the step (:meth:`gpaco.methods.base.Method.training_step`: forward and loss);
this loop owns what surrounds it: the per-iteration LR, moving the batch to the device,
gradient accumulation with DDP ``no_sync``, the GradScaler, clipping, the non-finite-loss
policy, the stop signal all ranks agree on, running sums kept on the device, and progress.

    ctx = FitContext(model=model, module=model, criterion=criterion, optimizer=opt, method=method,
                     device=torch.device("cpu"))
    stats = train_epoch(ctx, loader, epoch=0)
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from gpaco.engine.lifecycle import NonFiniteLossError, TrainingRun, autocast_context
from gpaco.engine.logging import print_main, progress_line
from gpaco.engine.schedule import LRSchedule

__all__ = ["Batch", "StepOutput", "FitContext", "train_epoch", "to_device", "default_progress", "NonFiniteLossError"]


@dataclass
class Batch:
    """A training batch on the device. ``images``: [B, 3, H, W] or a list of views;
    ``targets``: the labels [B] (segmentation: masks [B, H, W]); ``loss_targets``: what the
    loss is computed against (mixup's soft targets [B, C]; else ``targets``)."""

    images: Any
    targets: Tensor
    loss_targets: Optional[Tensor] = None

    def __post_init__(self) -> None:
        if self.loss_targets is None:
            self.loss_targets = self.targets


@dataclass
class StepOutput:
    """What a method's training step returns: the loss to back-propagate (scalar), the logits
    [B, C] the train top-1 is measured on (None: not measured), loss parts to log."""

    loss: Tensor
    logits: Optional[Tensor] = None
    parts: Mapping[str, Tensor] = field(default_factory=dict)


@dataclass
class FitContext:
    """What the loop, the task and the method's hooks share during one run.

    ``model`` is what the step calls (DDP-wrapped and compiled where asked); ``module`` the
    plain model (state dicts, evaluation). ``options``: every flag value by ``dest``.
    ``to_batch``: the loader's items -> :class:`Batch` on the device (the task's).
    ``schedule``: a per-iteration LR schedule the loop applies (per-epoch ones: the caller).
    ``steps_per_epoch``: the full epoch, for step labels, the per-iteration LR, the ETA and a
    method's per-iteration schedule (GenDD's AdamW beta2); the classification task sets it.
    ``progress``: ``(ctx, info) -> None`` prints (and logs) a progress line (default
    :func:`default_progress`: the epoch's running loss, LR, data time, images/s and ETA).
    ``before_step``: ``(ctx, step) -> None`` called before each micro-batch (per-step seeds).
    ``after_step``: ``(ctx, steps done) -> None`` called after each micro-batch that did not
    stop the epoch (segmentation's evaluation and checkpoints every N iterations).
    ``generator``: a per-step generator a criterion may draw from (segmentation's pixels).
    ``step_name``: ``(epoch, step, steps_per_epoch) -> str`` names a step in messages.
    ``evaluate``: ``(model, forward=None) -> (split, metrics) or None`` evaluates a model other
    than the trained one (a distillation teacher) on the task's test split, or val without one
    (None: neither); a method's ``setup`` may call it (on every rank).
    ``nan_skipped``: micro-batches skipped under ``--nan-policy skip`` so far in this epoch.
    ``epoch`` / ``step``: where the loop is (0-based epoch and micro-batch), for a method's step.
    """

    model: nn.Module
    criterion: Callable
    optimizer: torch.optim.Optimizer
    method: Any
    device: torch.device
    module: Optional[nn.Module] = None
    options: Dict[str, Any] = field(default_factory=dict)
    scaler: Optional[torch.amp.GradScaler] = None
    amp: str = "none"
    channels_last: bool = False
    world_size: int = 1
    accum_iter: int = 1
    clip_grad: Optional[float] = None
    schedule: Optional[LRSchedule] = None
    lifecycle: Optional[TrainingRun] = None
    to_batch: Optional[Callable[[Any, "FitContext"], Batch]] = None
    steps_per_epoch: Optional[int] = None
    epochs: Optional[int] = None
    print_freq: int = 0
    progress: Optional[Callable[["FitContext", dict], None]] = None
    before_step: Optional[Callable[["FitContext", int], None]] = None
    after_step: Optional[Callable[["FitContext", int], None]] = None
    generator: Optional[torch.Generator] = None
    step_name: Optional[Callable[[int, int, int], str]] = None
    evaluate: Optional[Callable[..., Optional[Tuple[str, dict]]]] = None
    epoch: int = 0
    step: int = 0
    nan_skipped: int = 0

    def __post_init__(self) -> None:
        if self.module is None:
            self.module = self.model

    def autocast(self):
        """The ``--amp`` autocast context of the training forward."""
        return autocast_context(self.device, self.amp)


def to_device(images, device: torch.device, channels_last: bool):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if isinstance(images, (list, tuple)):
        return [im.to(device, non_blocking=True, memory_format=fmt) for im in images]
    return images.to(device, non_blocking=True, memory_format=fmt)


def default_to_batch(item, ctx: FitContext) -> Batch:
    """``(images, labels)`` from a loader -> a :class:`Batch` on the device."""
    images, targets = item[0], item[1]
    return Batch(to_device(images, ctx.device, ctx.channels_last), targets.to(ctx.device, non_blocking=True))


def _sync_context(model: nn.Module, sync: bool):
    """DDP ``no_sync`` for the micro-batches that do not end an accumulation cycle."""
    no_sync = getattr(model, "no_sync", None)
    if sync or no_sync is None:
        return contextlib.nullcontext()
    return no_sync()


class _DeviceTally:
    """The epoch's running sums kept on the device, so a step reads nothing back to the host
    (on a GPU a read waits for every queued kernel and breaks CUDA graphs). They are read
    only where a person asked for output: every ``--print-freq`` steps and at the epoch's end.

    ``window``: the loss and its parts summed since the last progress line. With one process
    under ``--nan-policy stop`` the finiteness check is deferred the same way: the first
    non-finite step and its loss are recorded on the device and raised at the next read; the
    steps in between run on non-finite values, and nothing is saved."""

    def __init__(self, device: torch.device, loss_sum: float, correct: int) -> None:
        self.device = device
        self.loss_sum = torch.tensor(loss_sum, dtype=torch.float64, device=device)
        self.correct = torch.tensor(correct, dtype=torch.long, device=device)
        self.bad_step = torch.tensor(-1, dtype=torch.long, device=device)
        self.bad_loss = torch.zeros((), dtype=torch.float32, device=device)
        self.window: Dict[str, Tensor] = {}
        self.window_n = 0
        self.last: Dict[str, Tensor] = {}

    def add(self, out: StepOutput, targets: Tensor) -> None:
        loss = out.loss.detach()
        self.loss_sum += loss.double()
        if out.logits is not None:
            self.correct += (out.logits.detach().argmax(1) == targets).sum()
        self.last = {"loss": loss, **{k: v.detach() for k, v in out.parts.items()}}
        for k, v in self.last.items():
            self.window[k] = self.window[k] + v.double() if k in self.window else v.double()
        self.window_n += 1

    def watch(self, loss: Tensor, step: int) -> None:
        loss = loss.detach()
        first = ~torch.isfinite(loss) & (self.bad_step < 0)
        self.bad_step = torch.where(first, step, self.bad_step)
        self.bad_loss = torch.where(first, loss.float(), self.bad_loss)

    def read(self, *, last: bool = False, window: bool = False) -> Tuple[float, int, int, float, dict, dict]:
        """(loss sum, correct, first non-finite step or -1, its loss, the last step's loss and
        parts if ``last``, the window's means if ``window``, which then restarts): one host read."""
        last_keys = list(self.last) if last else []
        window_keys = list(self.window) if window else []
        values = torch.stack([self.loss_sum, self.correct.double(), self.bad_step.double(), self.bad_loss.double(),
                              *(self.last[k].double() for k in last_keys),
                              *(self.window[k] for k in window_keys)]).tolist()
        loss_sum, correct, bad_step, bad_loss = values[:4]
        last_values = dict(zip(last_keys, values[4:4 + len(last_keys)]))
        window_means = {k: v / self.window_n for k, v in zip(window_keys, values[4 + len(last_keys):])}
        if window:
            self.window, self.window_n = {}, 0
        return loss_sum, int(correct), int(bad_step), bad_loss, last_values, window_means


class _Stepper:
    """The optimizer side of a micro-batch: backward (scaled, accumulated), then on the last
    micro-batch of a cycle clipping and the step."""

    def __init__(self, ctx: FitContext) -> None:
        self.ctx = ctx
        self.cycle_has_grad = False

    def backward(self, loss: Tensor) -> None:
        ctx = self.ctx
        scaled = loss / ctx.accum_iter if ctx.accum_iter > 1 else loss
        if ctx.scaler is not None:
            ctx.scaler.scale(scaled).backward()
        else:
            scaled.backward()
        self.cycle_has_grad = True

    def drop_cycle(self) -> None:
        self.cycle_has_grad = False

    def step(self) -> None:
        ctx, opt = self.ctx, self.ctx.optimizer
        if self.cycle_has_grad:
            if ctx.scaler is not None:
                if ctx.clip_grad is not None:
                    ctx.scaler.unscale_(opt)
                    _clip(opt, ctx.clip_grad)
                ctx.scaler.step(opt)
                ctx.scaler.update()
            else:
                if ctx.clip_grad is not None:
                    _clip(opt, ctx.clip_grad)
                opt.step()
        opt.zero_grad(set_to_none=True)
        self.cycle_has_grad = False


class _Epoch:
    """One call of :func:`train_epoch`: its counters, the tally, and the micro-batch step."""

    def __init__(self, ctx: FitContext, loader, epoch: int, start_step: int, epoch_state: Optional[Dict[str, float]],
                 max_steps: Optional[int]) -> None:
        self.ctx, self.epoch, self.lc = ctx, epoch, ctx.lifecycle
        self.nan_policy = self.lc.nan_policy if self.lc is not None else "stop"
        self.faults = self.lc.faults if self.lc is not None else None
        self.epoch_iters = ctx.steps_per_epoch or start_step + len(loader)
        self.iters = start_step + len(loader) if max_steps is None else min(max_steps, start_step + len(loader))
        self.stoppable = self.epoch_iters if max_steps is None else min(max_steps, self.epoch_iters)
        self.per_iteration = ctx.schedule is not None and ctx.schedule.per_iteration
        self.to_batch = ctx.to_batch or default_to_batch
        st = dict(epoch_state or {})
        self.tally = _DeviceTally(ctx.device, float(st.get("loss_sum", 0.0)), int(st.get("correct", 0)))
        self.seen, self.steps = int(st.get("seen", 0)), int(st.get("steps", 0))
        ctx.nan_skipped = int(st.get("nan_skipped", 0))
        self.done_before = float(st.get("time_s", 0.0))
        # A per-step decision on the loss needs its value on the host: only where asked for.
        self.check_each_step = (self.lc is not None and self.lc.distributed) or self.nan_policy == "skip"
        first = ctx.optimizer.param_groups[0]
        self.lr = first["lr"] / first.get("lr_scale", 1.0)  # the unscaled LR (layer decay scales the groups)
        self.start = time.time()
        self.data_time, self.done_here = 0.0, 0
        self.stepper = _Stepper(ctx)

    def where(self, it: int) -> str:
        if self.ctx.step_name is not None:
            return self.ctx.step_name(self.epoch, it, self.epoch_iters)
        e, n = self.epoch, self.epoch_iters
        return f"epoch {e + 1} step {it + 1}/{n} (global step {e * n + it + 1})"

    def read(self, *, last: bool = False, window: bool = False) -> Tuple[float, int, dict, dict]:
        """(loss sum, correct, the last step's loss and parts, the window's means) from the device
        in one read (see :meth:`_DeviceTally.read`); a deferred non-finite loss raises here."""
        loss_sum, correct, bad_step, bad_loss, last_step, window_means = self.tally.read(last=last, window=window)
        if bad_step >= 0:
            if self.lc is None:
                raise NonFiniteLossError(f"loss is {bad_loss} at {self.where(bad_step)}")
            self.lc.nonfinite(torch.tensor(bad_loss), self.where(bad_step))  # raises under --nan-policy stop
        return loss_sum, correct, last_step, window_means

    def micro_batch(self, it: int, item) -> Tuple[bool, bool]:
        """Forward, loss, backward and (at a cycle's end) the optimizer step of micro-batch
        ``it``: (whether the optimizer stepped, whether some rank asked to stop)."""
        ctx, lc, faults = self.ctx, self.lc, self.faults
        global_step = self.epoch * self.epoch_iters + it + 1
        if self.per_iteration and it % ctx.accum_iter == 0:
            self.lr = ctx.schedule(self.epoch, it, self.epoch_iters)
            LRSchedule.apply(ctx.optimizer, self.lr)
        if ctx.before_step is not None:
            ctx.before_step(ctx, it)
        if faults is not None:
            faults.before(global_step)
        batch = self.to_batch(item, ctx)
        step_now, nonfinite = (it + 1) % ctx.accum_iter == 0, False
        # The contrastive models enqueue inside forward, so the queue advances every
        # micro-batch even with accum_iter > 1 (as the original MAE-ViT GPaCo code).
        with _sync_context(ctx.model, step_now):
            out = ctx.method.training_step(ctx, batch)
            if faults is not None:
                out.loss = faults.loss(global_step, out.loss)
            if self.check_each_step:
                nonfinite, stop_any = lc.agree(out.loss)
            else:
                self.tally.watch(out.loss, it)
                stop_any = lc is not None and lc.preempt.requested
            if nonfinite:
                lc.nonfinite(out.loss, self.where(it))  # raises under --nan-policy stop
                ctx.nan_skipped += 1
                if step_now and lc.distributed and ctx.accum_iter > 1:
                    # The cycle's earlier micro-batches ran under no_sync and this one would have
                    # all-reduced them: drop the whole cycle rather than step on unsynced gradients.
                    self.stepper.drop_cycle()
            else:
                self.stepper.backward(out.loss)
        if step_now:
            self.stepper.step()
            ctx.method.after_optimizer_step(ctx)  # e.g. adversarial weight perturbation taken back
        if not nonfinite:
            self.tally.add(out, batch.targets)
            self.seen += batch.targets.shape[0]
            self.steps += 1
        self.done_here += 1
        return step_now, stop_any

    def progress(self, it: int) -> None:
        """Read the sums; with ``--print-freq`` hand the task's progress line its numbers."""
        ctx = self.ctx
        window_n = self.tally.window_n
        loss_sum, _, _, window = self.read(window=bool(ctx.print_freq))
        if not ctx.print_freq:
            return
        elapsed = time.time() - self.start
        left = self.iters - it - 1 + (self.epoch_iters * max(ctx.epochs - self.epoch - 1, 0) if ctx.epochs else 0)
        (ctx.progress or default_progress)(ctx, {
            "epoch": self.epoch, "step": it + 1, "iters": self.iters, "epoch_iters": self.epoch_iters, "lr": self.lr,
            "elapsed": elapsed, "done": self.done_here, "images": self.seen * ctx.world_size,
            "loss": loss_sum / max(self.steps, 1), "window_n": window_n, "window": window,
            "data_ms": 1e3 * self.data_time / self.done_here, "eta_s": elapsed / self.done_here * left,
            "nan_skipped": ctx.nan_skipped})

    def stats(self, stopped_at: Optional[int]) -> Dict[str, Any]:
        loss_sum, correct, last_step, _ = self.read(last=True)
        elapsed, ctx = time.time() - self.start, self.ctx
        stats = {
            **({"lr": self.lr} if self.per_iteration else {}),
            "train_loss": loss_sum / max(self.steps, 1),
            "train_top1": 100.0 * correct / max(self.seen, 1),
            "train_images_per_s": self.seen * ctx.world_size / max(self.done_before + elapsed, 1e-9),
            "train_time_s": self.done_before + elapsed,
            **({"nan_skipped": ctx.nan_skipped} if self.nan_policy == "skip" else {}),
            "last": last_step,
        }
        if stopped_at is not None:
            stats["stopped_at_step"] = stopped_at
            stats["epoch_state"] = {"loss_sum": loss_sum, "correct": correct, "seen": self.seen, "steps": self.steps,
                                    "nan_skipped": ctx.nan_skipped, "time_s": self.done_before + elapsed}
        return stats


def train_epoch(ctx: FitContext, loader, *, epoch: int, start_step: int = 0,
                epoch_state: Optional[Dict[str, float]] = None, max_steps: Optional[int] = None) -> Dict[str, Any]:
    """Run the micro-batches the loader yields (steps ``start_step`` on of ``epoch``).

    Returns the epoch's mean loss, train top-1 (of the step's logits), throughput, the last
    step's loss and parts (``last``), and with a per-iteration schedule ``lr`` (the last LR
    set). No step reads a device value back to the host (except under DDP or ``--nan-policy
    skip``, whose per-step decisions need one; and ``--amp fp16``'s GradScaler): sums are
    read every ``ctx.print_freq`` steps for ``ctx.progress`` and at the end.

    ``ctx.accum_iter``: an optimizer step every that many micro-batches (loss divided by it;
    DDP gradient sync only on the last one); a trailing incomplete cycle is discarded, as
    MAE's loop does. A per-iteration ``ctx.schedule`` sets the LR at the start of each cycle.

    Fault tolerance: ``start_step`` micro-batches of this epoch were done before a mid-epoch
    resume (the loader yields the rest) and ``epoch_state`` (what a stopped call returned)
    continues the running sums. ``ctx.lifecycle`` (None: stop on a non-finite loss, no stop
    signals) gives the ``--nan-policy`` -- ``stop`` raises :class:`NonFiniteLossError`
    naming the first non-finite step (at once under DDP, else at the next read), ``skip``
    drops that micro-batch's gradient and counts it (``nan_skipped``) -- and the stop signal,
    polled every micro-batch: once set on any rank the loop returns after the next optimizer
    step with ``stopped_at_step`` and ``epoch_state``, except on the epoch's last step.
    """
    ctx.model.train()
    ctx.epoch = epoch
    run = _Epoch(ctx, loader, epoch, start_step, epoch_state, max_steps)
    stopped_at, last_end = None, time.perf_counter()
    ctx.optimizer.zero_grad(set_to_none=True)
    for it, item in enumerate(loader, start_step):
        if it >= run.iters:
            break
        ctx.step = it
        run.data_time += time.perf_counter() - last_end
        step_now, stop_any = run.micro_batch(it, item)
        stopping = stop_any and step_now and it + 1 < run.stoppable
        if (ctx.print_freq and ((it + 1) % ctx.print_freq == 0 or it == run.iters - 1)) or stopping:
            run.progress(it)
        if stopping:
            stopped_at = it + 1
            break
        if ctx.after_step is not None:
            ctx.after_step(ctx, it + 1)
        last_end = time.perf_counter()
    ctx.optimizer.zero_grad(set_to_none=True)  # drop a trailing incomplete accumulation cycle
    return run.stats(stopped_at)


def default_progress(ctx: FitContext, info: dict) -> None:
    """``[epoch 3][ 40/120] loss 2.314 lr 0.0200 data 3ms 42.1 img/s eta 0:01:54`` (rank 0)."""
    print_main(progress_line(info["epoch"] + 1, info["step"], info["iters"], info["elapsed"], info["images"],
                             loss=info["loss"], lr=info["lr"], data=f"{info['data_ms']:.0f}ms", eta_s=info["eta_s"]))


def _clip(optimizer: torch.optim.Optimizer, max_norm: float) -> None:
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    torch.nn.utils.clip_grad_norm_(params, max_norm)
