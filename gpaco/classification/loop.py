"""One training epoch and one evaluation pass: data -> model -> loss -> optimizer -> metrics."""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from gpaco.engine.lifecycle import NonFiniteLossError, TrainingRun, autocast_context
from gpaco.engine.logging import print_main, progress_line
from gpaco.engine.schedule import LRSchedule
from gpaco.losses.criteria import output_logits
from gpaco.metrics import ClassificationMeter

__all__ = ["train_one_epoch", "evaluate", "predict", "forward_train", "to_device", "NonFiniteLossError"]


def to_device(images, device: torch.device, channels_last: bool):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if isinstance(images, (list, tuple)):
        return [im.to(device, non_blocking=True, memory_format=fmt) for im in images]
    return images.to(device, non_blocking=True, memory_format=fmt)


def forward_train(model: nn.Module, images, targets: torch.Tensor, takes_labels: bool = False):
    """Two-view models take (view1, view2, labels); a single-view model that takes the
    labels (single-view GPaCo, registry ``takes_labels``) takes (view, None, labels);
    classifiers take one image batch."""
    if isinstance(images, list):
        if len(images) == 2:
            return model(images[0], images[1], targets)
        return model(images[0], None, targets)
    if takes_labels:
        return model(images, None, targets)
    return model(images)


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

    With one process under ``--nan-policy stop`` the finiteness check is deferred the same
    way: the first non-finite step and its loss are recorded on the device and raised at the
    next read; the steps in between run on non-finite values, and nothing is saved."""

    def __init__(self, device: torch.device, loss_sum: float, correct: int) -> None:
        self.loss_sum = torch.tensor(loss_sum, dtype=torch.float64, device=device)
        self.correct = torch.tensor(correct, dtype=torch.long, device=device)
        self.bad_step = torch.tensor(-1, dtype=torch.long, device=device)
        self.bad_loss = torch.zeros((), dtype=torch.float32, device=device)

    def add(self, loss: Tensor, logits: Tensor, targets: Tensor) -> None:
        loss = loss.detach()
        self.loss_sum += loss.double()
        self.correct += (logits.detach().argmax(1) == targets).sum()

    def watch(self, loss: Tensor, step: int) -> None:
        loss = loss.detach()
        first = ~torch.isfinite(loss) & (self.bad_step < 0)
        self.bad_step = torch.where(first, step, self.bad_step)
        self.bad_loss = torch.where(first, loss.float(), self.bad_loss)

    def read(self) -> Tuple[float, int, int, float]:
        """(loss sum, correct, first non-finite step or -1, its loss): one host read."""
        loss_sum, correct, bad_step, bad_loss = torch.stack([
            self.loss_sum, self.correct.double(), self.bad_step.double(), self.bad_loss.double()]).tolist()
        return loss_sum, int(correct), int(bad_step), bad_loss


def train_one_epoch(
    model: nn.Module,
    criterion: Callable,
    loader,
    optimizer: torch.optim.Optimizer,
    scaler: Optional[torch.amp.GradScaler],
    *,
    epoch: int,
    device: torch.device,
    amp: str = "none",
    channels_last: bool = False,
    print_freq: int = 20,
    max_steps: Optional[int] = None,
    world_size: int = 1,
    accum_iter: int = 1,
    lr_schedule: Optional[LRSchedule] = None,
    mixup_fn: Optional[Callable] = None,
    random_erasing: Optional[Callable] = None,
    clip_grad: Optional[float] = None,
    takes_labels: bool = False,
    start_step: int = 0,
    epoch_state: Optional[Dict[str, float]] = None,
    lifecycle: Optional[TrainingRun] = None,
    epochs: Optional[int] = None,
    device_augment: Optional[Callable] = None,
) -> Dict[str, float]:
    """Returns the epoch's mean loss, train top-1 (view 1) and throughput (and, with a
    per-iteration schedule, ``lr``: the last LR it set).

    No step reads a device value back to the host (except under DDP or ``--nan-policy
    skip``, whose per-step decisions need one; and ``--amp fp16``'s GradScaler): loss and
    accuracy are summed on the device and read every ``print_freq`` steps, which print one
    line with the epoch's running-average loss, images/s, data-loading time per step and
    the ETA of the run (of ``epochs`` epochs; of this epoch when None).

    ``accum_iter``: an optimizer step every ``accum_iter`` micro-batches (loss divided by
    it; DDP gradient sync only on the last one). A trailing incomplete cycle at the end of
    the epoch is discarded, as MAE's loop does (its gradients are zeroed).
    ``lr_schedule``: a per-iteration schedule (``mae_cosine``) sets the LR at the start of
    each accumulation cycle from the fractional epoch ``epoch + it / len(loader)``;
    per-epoch schedules are applied by the caller.
    ``random_erasing`` (every view) then ``mixup_fn`` (CE baselines: soft targets) act on
    the batch on the device; train top-1 is measured against the unmixed labels.
    ``device_augment`` (``--gpu-aug``): turns the loader's batch of uint8 crops and augmentation
    parameters into the normalised views on the device (:class:`~gpaco.data.gpu_aug.DeviceAugment`).

    Fault tolerance:
    ``start_step``: micro-batches of this epoch already done (a mid-epoch resume); the
    loader yields only the rest (its sampler starts at that offset) and ``epoch_state``
    (what a stopped call returned) continues the epoch's running sums.
    ``lifecycle`` (the run's :class:`~gpaco.engine.lifecycle.TrainingRun`; None: stop on a
    non-finite loss, no stop signals): its ``--nan-policy`` -- ``stop`` raises
    :class:`NonFiniteLossError` naming the first non-finite step (at once under DDP, else at
    the next progress line or the epoch's end, see :class:`_DeviceTally`) -- ``skip`` drops
    that micro-batch's gradient and counts it (``nan_skipped``) -- and its stop signal,
    polled every micro-batch: once set (on any rank) the loop returns after the next
    optimizer step with ``stopped_at_step`` (micro-batches of the epoch done) and
    ``epoch_state``. Not honoured on the epoch's last micro-batch (the caller finishes the
    epoch normally). Under DDP the ranks agree on both decisions.
    """
    nan_policy = lifecycle.nan_policy if lifecycle is not None else "stop"
    faults = lifecycle.faults if lifecycle is not None else None
    model.train()
    epoch_iters = start_step + len(loader)  # the full epoch, whatever was already done
    iters = epoch_iters if max_steps is None else min(max_steps, epoch_iters)
    per_iteration = lr_schedule is not None and lr_schedule.per_iteration
    st = dict(epoch_state or {})
    tally = _DeviceTally(device, float(st.get("loss_sum", 0.0)), int(st.get("correct", 0)))
    seen, steps, nan_skipped = int(st.get("seen", 0)), int(st.get("steps", 0)), int(st.get("nan_skipped", 0))
    done_before = float(st.get("time_s", 0.0))
    distributed = lifecycle is not None and lifecycle.distributed
    # A per-step decision on the loss needs its value on the host: only where asked for.
    check_each_step = distributed or nan_policy == "skip"
    first = optimizer.param_groups[0]
    lr = first["lr"] / first.get("lr_scale", 1.0)  # the unscaled LR (layer decay scales the groups)
    start = time.time()
    data_time, last_end, done_here = 0.0, time.perf_counter(), 0
    stopped_at = None
    cycle_has_grad = False
    nonfinite = False

    def where(it: int) -> str:
        return f"epoch {epoch + 1} step {it + 1}/{epoch_iters} (global step {epoch * epoch_iters + it + 1})"

    def read() -> Tuple[float, int]:
        loss_sum, correct, bad_step, bad_loss = tally.read()
        if bad_step >= 0:
            message = f"loss is {bad_loss} at {where(bad_step)}"
            if lifecycle is None:
                raise NonFiniteLossError(message)
            lifecycle.nonfinite(torch.tensor(bad_loss), where(bad_step))  # raises under --nan-policy stop
        return loss_sum, correct

    optimizer.zero_grad(set_to_none=True)
    for it, (images, targets) in enumerate(loader, start_step):
        if it >= iters:
            break
        data_time += time.perf_counter() - last_end
        global_step = epoch * epoch_iters + it + 1
        if faults is not None:
            faults.before(global_step)
        if per_iteration and it % accum_iter == 0:
            lr = lr_schedule(epoch, it, epoch_iters)
            LRSchedule.apply(optimizer, lr)
        if device_augment is not None:  # --gpu-aug: uint8 crops + parameters -> augmented views
            images = device_augment(images, device, channels_last)
        else:
            images = to_device(images, device, channels_last)
        targets = targets.to(device, non_blocking=True)
        if random_erasing is not None:
            images = [random_erasing(v) for v in images] if isinstance(images, list) else random_erasing(images)
        loss_targets = targets
        if mixup_fn is not None:
            images, loss_targets = mixup_fn(images, targets)
        step_now = (it + 1) % accum_iter == 0
        # The contrastive models enqueue inside forward, so the queue advances every
        # micro-batch even with accum_iter > 1 (as the original MAE-ViT GPaCo code).
        with _sync_context(model, step_now):
            with autocast_context(device, amp):
                output = forward_train(model, images, targets, takes_labels)
            loss = criterion(output, loss_targets)
            if faults is not None:
                loss = faults.loss(global_step, loss)
            if check_each_step:
                nonfinite, stop_any = lifecycle.agree(loss)
            else:
                tally.watch(loss, it)
                stop_any = lifecycle is not None and lifecycle.preempt.requested
            if nonfinite:
                lifecycle.nonfinite(loss, where(it))  # raises under --nan-policy stop
                nan_skipped += 1
                if step_now and distributed and accum_iter > 1:
                    # The cycle's earlier micro-batches ran under no_sync and this one would have
                    # all-reduced them: drop the whole cycle rather than step on unsynced gradients.
                    cycle_has_grad = False
            else:
                scaled = loss / accum_iter if accum_iter > 1 else loss
                if scaler is not None:
                    scaler.scale(scaled).backward()
                else:
                    scaled.backward()
                cycle_has_grad = True
        if step_now:
            if cycle_has_grad:
                if scaler is not None:
                    if clip_grad is not None:
                        scaler.unscale_(optimizer)
                        _clip(optimizer, clip_grad)
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    if clip_grad is not None:
                        _clip(optimizer, clip_grad)
                    optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            cycle_has_grad = False

        if not nonfinite:
            batch = targets.shape[0]
            tally.add(loss, output_logits(output, batch), targets)
            seen += batch
            steps += 1
        done_here += 1
        last = it == iters - 1
        stopping = stop_any and step_now and it + 1 < iters
        if (print_freq and ((it + 1) % print_freq == 0 or last)) or stopping:
            loss_sum, _ = read()
            if print_freq:
                elapsed = time.time() - start
                per_step = elapsed / done_here
                left = iters - it - 1 + (epoch_iters * max(epochs - epoch - 1, 0) if epochs else 0)
                print_main(progress_line(epoch + 1, it + 1, iters, elapsed, seen * world_size,
                                         loss=loss_sum / max(steps, 1), lr=lr,
                                         data=f"{1e3 * data_time / done_here:.0f}ms",
                                         eta_s=per_step * left))
        if stopping:
            stopped_at = it + 1
            break
        last_end = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)  # drop a trailing incomplete accumulation cycle
    loss_sum, correct = read()
    elapsed = time.time() - start
    stats = {
        **({"lr": lr} if per_iteration else {}),
        "train_loss": loss_sum / max(steps, 1),
        "train_top1": 100.0 * correct / max(seen, 1),
        "train_images_per_s": seen * world_size / max(done_before + elapsed, 1e-9),
        "train_time_s": done_before + elapsed,
        **({"nan_skipped": nan_skipped} if nan_policy == "skip" else {}),
    }
    if stopped_at is not None:
        stats["stopped_at_step"] = stopped_at
        stats["epoch_state"] = {"loss_sum": loss_sum, "correct": correct, "seen": seen, "steps": steps,
                                "nan_skipped": nan_skipped, "time_s": done_before + elapsed}
    return stats


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    *,
    num_classes: int,
    device: torch.device,
    train_counts: Optional[Sequence[int]] = None,
    amp: str = "none",
    channels_last: bool = False,
    max_steps: Optional[int] = None,
) -> dict:
    """Exact metrics over the whole split (each sample fed to exactly one process)."""
    meter, _ = predict([model], loader, num_classes=num_classes, device=device, amp=amp,
                       channels_last=channels_last, max_steps=max_steps)
    return meter.compute(train_counts)


@torch.no_grad()
def predict(models: Sequence[torch.nn.Module], loader, *, num_classes: int, device: torch.device, amp: str = "none",
            channels_last: bool = False, max_steps: Optional[int] = None, columns: Optional[Sequence[int]] = None,
            keep_logits: bool = False):
    """Sum of the models' raw logits (optionally restricted to ``columns``) over this process's
    shard, counted in a :class:`ClassificationMeter` and summed over processes.

    Returns (meter after all_reduce, local logits [N_local, C'] in shard order or None).
    """
    for m in models:
        m.eval()
    width = len(columns) if columns is not None else num_classes
    cols = torch.as_tensor(list(columns), device=device) if columns is not None else None
    meter = ClassificationMeter(width, device=device)
    kept = []
    for it, (images, targets) in enumerate(loader):
        if max_steps is not None and it >= max_steps:
            break
        images = to_device(images, device, channels_last)
        targets = targets.to(device, non_blocking=True)
        logits = None
        for m in models:
            with autocast_context(device, amp):
                out = m(images)
            out = out.float()
            logits = out if logits is None else logits + out
        if cols is not None:
            logits = logits.index_select(1, cols)
        meter.update(logits, targets)
        if keep_logits:
            kept.append(logits.cpu())
    meter.all_reduce()
    local = (torch.cat(kept) if kept else torch.zeros(0, width)) if keep_logits else None
    return meter, local


def _clip(optimizer: torch.optim.Optimizer, max_norm: float) -> None:
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    torch.nn.utils.clip_grad_norm_(params, max_norm)

