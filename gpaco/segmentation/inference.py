"""Segmentation inference and evaluation: whole-image or sliding-window, multi-scale + flip.

Per-class IoU over the whole split (:class:`gpaco.metrics.SegMeter`); multi-scale
averages the softmax probabilities at the original resolution; each image is seen by
one process.
"""
from __future__ import annotations

import math
import time
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from gpaco.data.build import ShardSampler
from gpaco.data.seg_datasets import SegDataset
from gpaco.data.seg_transforms import IGNORE_INDEX, SEG_MEAN, SEG_STD, rescale_size
from gpaco.engine.lifecycle import autocast_context
from gpaco.engine.logging import print_main
from gpaco.engine.precision import no_cudnn_autotune
from gpaco.engine.preemption import ignore_stop_signals
from gpaco.metrics import SegMeter

__all__ = ["MS_RATIOS", "inference", "evaluate_seg", "format_iou_table", "summary", "collate", "worker_init"]

MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def collate(batch):
    imgs, labels, idx = zip(*batch)
    return torch.stack(imgs), torch.stack(labels), torch.tensor(idx)


def worker_init(worker_id):
    torch.set_num_threads(1)
    ignore_stop_signals(worker_id)


def summary(m: dict) -> str:
    return f"mIoU {m['miou']:.2f} mAcc {m['macc']:.2f} aAcc {m['aacc']:.2f} ({m['num_images']} images)"


def _normalize(img: Tensor) -> Tensor:
    mean = torch.tensor(SEG_MEAN, device=img.device).view(1, 3, 1, 1)
    std = torch.tensor(SEG_STD, device=img.device).view(1, 3, 1, 1)
    return (img - mean) / std


def _slide(model: nn.Module, x: Tensor, num_classes: int, crop: Tuple[int, int], stride: Tuple[int, int]) -> Tensor:
    """mmseg's slide inference: overlapping crops, logits averaged where they overlap."""
    _, _, h, w = x.shape
    ch, cw = crop
    sh, sw = stride
    gh = max(h - ch + sh - 1, 0) // sh + 1
    gw = max(w - cw + sw - 1, 0) // sw + 1
    out = x.new_zeros((x.shape[0], num_classes, h, w))
    count = x.new_zeros((1, 1, h, w))
    for i in range(gh):
        for j in range(gw):
            y1, x1 = i * sh, j * sw
            y2, x2 = min(y1 + ch, h), min(x1 + cw, w)
            y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
            out[:, :, y1:y2, x1:x2] += model(x[:, :, y1:y2, x1:x2]).float()
            count[:, :, y1:y2, x1:x2] += 1
    return out / count


@torch.no_grad()
def inference(model: nn.Module, img: Tensor, *, num_classes: int, scale: Tuple[int, int],
              ratios: Sequence[float] = (1.0,), flip: bool = False, mode: str = "whole",
              crop: Optional[Tuple[int, int]] = None, stride: Optional[Tuple[int, int]] = None,
              amp: str = "none") -> Tensor:
    """Class probabilities [B, C, H, W] at the input's resolution.

    Args:
        img: [B, 3, H, W] raw RGB (0-255, any dtype); all images of a batch share a size.
        scale: the test ``img_scale`` (W, H); each ratio ``r`` resizes the image (keeping its
            aspect ratio) to fit ``(int(W*r), int(H*r))``.
        flip: also run the horizontally flipped image (flipped back before averaging).
        mode: 'whole' (one pass) or 'slide' (``crop``/``stride`` windows, as (h, w)).
    The softmax probabilities of every (ratio, flip) pass, resized bilinearly to the
    input size, are averaged.
    """
    b, _, h, w = img.shape
    x0 = img.float()
    total = None
    n = 0
    for r in ratios:
        size = rescale_size(h, w, (int(scale[0] * r), int(scale[1] * r)))
        x = x0 if size == (h, w) else F.interpolate(x0, size=size, mode="bilinear", align_corners=False)
        x = _normalize(x)
        for f in ((False, True) if flip else (False,)):
            xi = x.flip(-1) if f else x
            with autocast_context(img.device, amp):
                if mode == "slide":
                    logits = _slide(model, xi, num_classes, crop, stride)
                else:
                    logits = model(xi)
            logits = logits.float()
            if f:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            probs = logits.softmax(1)
            total = probs if total is None else total + probs
            n += 1
    return total / n


@torch.no_grad()
def evaluate_seg(model: nn.Module, dataset: SegDataset, *, device: torch.device, num_classes: int,
                 scale: Tuple[int, int], ratios: Sequence[float] = (1.0,), flip: bool = False, mode: str = "whole",
                 crop=None, stride=None, rank: int = 0, world_size: int = 1, workers: int = 0,
                 max_images: Optional[int] = None, amp: str = "none", print_every: int = 0) -> dict:
    """Per-class IoU/acc, mIoU, mAcc, aAcc (percent) over ``dataset`` (every image once over
    all processes), plus ``class_names`` and ``num_images``."""
    was_training = model.training
    model.eval()
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    loader = DataLoader(dataset, batch_size=1, sampler=ShardSampler(n, rank, world_size), num_workers=workers,
                        collate_fn=collate, worker_init_fn=worker_init if workers else None)
    meter = SegMeter(num_classes, IGNORE_INDEX, device=device)
    t0 = time.time()
    seen = 0
    with no_cudnn_autotune():  # images of every size: autotuning each new shape would cost more than it saves
        for img, label, _ in loader:
            img, label = img.to(device, non_blocking=True), label.to(device, non_blocking=True)
            probs = inference(model, img, num_classes=num_classes, scale=scale, ratios=ratios, flip=flip, mode=mode,
                              crop=crop, stride=stride, amp=amp)
            meter.update(probs.argmax(1), label)
            seen += 1
            if print_every and seen % print_every == 0:
                print_main(f"  eval {seen * world_size}/{n} images ({time.time() - t0:.0f}s)")
    meter.all_reduce()
    out = meter.compute()
    out.update(class_names=list(getattr(dataset, "class_names", [str(c) for c in range(num_classes)])),
               num_images=n, ratios=list(ratios), flip=flip, mode=mode)
    model.train(was_training)
    return out


def format_iou_table(columns: Sequence[Tuple[str, dict]], *, class_names: Optional[Sequence[str]] = None,
                     extra: Optional[Tuple[str, Sequence]] = None) -> str:
    """Markdown table: one row per class (IoU of each column), then mIoU / mAcc / aAcc rows."""
    names = class_names or columns[0][1].get("class_names") or [str(i) for i in
                                                                range(len(columns[0][1]["per_class_iou"]))]
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"  # noqa: E731
    head = ["class"] + ([extra[0]] if extra else []) + [f"{name} IoU" for name, _ in columns]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for c, cname in enumerate(names):
        row = [cname] + ([str(extra[1][c])] if extra else []) + [fmt(m["per_class_iou"][c]) for _, m in columns]
        lines.append("| " + " | ".join(row) + " |")
    for key, label in (("miou", "mIoU"), ("macc", "mAcc"), ("aacc", "aAcc")):
        row = [f"**{label}**"] + ([""] if extra else []) + [fmt(m[key]) for _, m in columns]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
