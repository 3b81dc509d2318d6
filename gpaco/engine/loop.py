"""One training epoch and one evaluation pass: data -> model -> loss -> optimizer -> metrics."""
from __future__ import annotations

import contextlib
import math
import time
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import nn

from gpaco.engine.logging import print_main, progress_line
from gpaco.metrics import ClassificationMeter


class NonFiniteLossError(RuntimeError):
    pass


def autocast_context(device: torch.device, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(images, device: torch.device, channels_last: bool):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if isinstance(images, (list, tuple)):
        return [im.to(device, non_blocking=True, memory_format=fmt) for im in images]
    return images.to(device, non_blocking=True, memory_format=fmt)


def forward_train(model: nn.Module, images, targets: torch.Tensor):
    """Two-view contrastive models take (view1, view2, labels); classifiers take one image batch."""
    if isinstance(images, list):
        if len(images) == 2:
            return model(images[0], images[1], targets)
        return model(images[0], None, targets)
    return model(images)


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
) -> Dict[str, float]:
    """Returns the epoch's mean loss, train top-1 (view 1) and throughput."""
    model.train()
    iters = len(loader) if max_steps is None else min(max_steps, len(loader))
    loss_sum, correct, seen, steps = 0.0, 0, 0, 0
    start = time.time()
    for it, (images, targets) in enumerate(loader):
        if it >= iters:
            break
        images = to_device(images, device, channels_last)
        targets = targets.to(device, non_blocking=True)
        with autocast_context(device, amp):
            output = forward_train(model, images, targets)
        loss = criterion(output, targets)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"loss is {loss.item()} at epoch {epoch} step {it}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

        logits = output if isinstance(output, torch.Tensor) else output.logits
        batch = targets.shape[0]
        loss_sum += loss.item()
        correct += (logits[:batch].argmax(1) == targets).sum().item()
        seen += batch
        steps += 1
        if print_freq and (it % print_freq == 0 or it == iters - 1):
            print_main(progress_line(epoch + 1, it + 1, iters, time.time() - start, seen * world_size,
                                     loss=loss.item(), lr=optimizer.param_groups[0]["lr"]))
    elapsed = time.time() - start
    return {
        "train_loss": loss_sum / max(steps, 1),
        "train_top1": 100.0 * correct / max(seen, 1),
        "train_images_per_s": seen * world_size / max(elapsed, 1e-9),
        "train_time_s": elapsed,
    }


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
    return_logits: bool = False,
):
    """Exact metrics over the whole split (each sample fed to exactly one process).

    Returns the metric dict; with ``return_logits`` also (logits [N_local, C], indices [N_local]).
    """
    model.eval()
    meter = ClassificationMeter(num_classes, device=device)
    all_logits = []
    for it, (images, targets) in enumerate(loader):
        if max_steps is not None and it >= max_steps:
            break
        images = to_device(images, device, channels_last)
        targets = targets.to(device, non_blocking=True)
        with autocast_context(device, amp):
            logits = model(images)
        logits = logits.float()
        meter.update(logits, targets)
        if return_logits:
            all_logits.append(logits.cpu())
    meter.all_reduce()
    metrics = meter.compute(train_counts)
    if return_logits:
        return metrics, (torch.cat(all_logits) if all_logits else torch.zeros(0, num_classes))
    return metrics


def finite_or_none(x: float) -> Optional[float]:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None
