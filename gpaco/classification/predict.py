"""Prediction and one evaluation pass: data -> model (the method's test-time forward) -> exact metrics.

Training is the engine's (:func:`gpaco.engine.step.train_epoch`, the method's step)."""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from gpaco.engine.lifecycle import autocast_context
from gpaco.engine.step import to_device
from gpaco.metrics import ClassificationMeter

__all__ = ["evaluate", "predict", "head_metrics"]

#: ``(model, images [B, 3, H, W]) -> logits [B, C]``: a method's test-time forward. It may also
#: return ``{"logits": [B, C], head: [B, C], ...}``: ``logits`` is the prediction, every other
#: entry a second head measured on its own (GenDD's linear probe), see :func:`predict`.
Forward = Callable[[nn.Module, Tensor], Union[Tensor, Mapping[str, Tensor]]]


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
    forward: Optional[Forward] = None,
) -> dict:
    """Exact metrics over the whole split (each sample fed to exactly one process).
    ``forward(model, images)``: the test-time logits (a method's ``eval_forward``; default ``model(images)``).
    A forward with extra heads adds ``heads``: ``{head: {"top1": ..., "top5": ...}}``."""
    heads: Dict[str, ClassificationMeter] = {}
    meter, _ = predict([model], loader, num_classes=num_classes, device=device, amp=amp,
                       channels_last=channels_last, max_steps=max_steps, forward=forward, heads=heads)
    metrics = meter.compute(train_counts)
    if heads:
        metrics["heads"] = head_metrics(heads)
    return metrics


def head_metrics(heads: Mapping[str, ClassificationMeter]) -> Dict[str, Dict[str, float]]:
    """``{head: {"top1": ..., "top5": ...}}`` of the extra heads :func:`predict` counted."""
    return {name: {k: v for k, v in meter.compute().items() if k in ("top1", "top5")} for name, meter in heads.items()}


@torch.no_grad()
def predict(models: Sequence[torch.nn.Module], loader, *, num_classes: int, device: torch.device, amp: str = "none",
            channels_last: bool = False, max_steps: Optional[int] = None, columns: Optional[Sequence[int]] = None,
            keep_logits: bool = False,
            forward: Union[None, Forward, Sequence[Optional[Forward]]] = None,
            heads: Optional[Dict[str, ClassificationMeter]] = None):
    """Sum of the models' raw logits (optionally restricted to ``columns``) over this process's
    shard, counted in a :class:`ClassificationMeter` and summed over processes.

    ``forward``: how a model's logits are made (a method's ``eval_forward``), one for all or one
    per model; default ``model(images)``. A forward returning ``{"logits": ..., head: ...}``
    (see :data:`Forward`): its ``logits`` are counted; with ``heads`` (a dict, filled here) each
    other head's logits (summed over the models that have it, all columns) get a meter of their
    own under their name, else they are ignored.

    Returns (meter after all_reduce, local logits [N_local, C'] in shard order or None).
    """
    forwards = list(forward) if isinstance(forward, (list, tuple)) else [forward] * len(models)
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
        extra: Dict[str, Tensor] = {}
        for m, fwd in zip(models, forwards):
            with autocast_context(device, amp):
                out = m(images) if fwd is None else fwd(m, images)
            if isinstance(out, Mapping):
                for name, head in out.items():
                    if name != "logits" and heads is not None:
                        extra[name] = head.float() if name not in extra else extra[name] + head.float()
                out = out["logits"]
            out = out.float()
            logits = out if logits is None else logits + out
        if cols is not None:
            logits = logits.index_select(1, cols)
        meter.update(logits, targets)
        for name, head in extra.items():
            if name not in heads:
                heads[name] = ClassificationMeter(head.shape[1], device=device)
            heads[name].update(head, targets)
        if keep_logits:
            kept.append(logits.cpu())
    meter.all_reduce()
    for name in sorted(heads or {}):  # the same order on every process
        heads[name].all_reduce()
    local = (torch.cat(kept) if kept else torch.zeros(0, width)) if keep_logits else None
    return meter, local
