"""Semantic segmentation: criterion, poly schedule, iteration-based training and evaluation.

``tools/train_seg.py`` runs :func:`main`; ``tools/eval_seg.py`` runs
:func:`gpaco.engine.seg_eval.main`. Both work as one process (CPU or one GPU) or one
process per GPU under ``torchrun`` (``--batch-size`` is the global batch).

* Loss (SPEC §2.5): pixel CE on the bilinear-upsampled logits (weight 1), the aux FCN
  head's CE (weight 0.4) and, for GPaCo, :func:`gpaco.losses.pixel.pixel_paco_loss` on
  ``num_pixels`` (8192) random pixels per image of the 1/4-resolution embeddings and
  logits, with labels nearest-downsampled to that size. The CE is averaged over all
  pixels of the crop, ignored ones included (mmseg 0.x; ``avg_non_ignore=True`` divides
  by the labelled pixels instead).
* Schedule: mmcv's poly ``(lr - min_lr) * (1 - it/max_iters)^power + min_lr``, times the
  linear warmup factor ``1 - (1 - it/warmup) * (1 - warmup_ratio)`` during warmup.
* Evaluation: per-class IoU over the whole split (:class:`gpaco.metrics.SegMeter`),
  whole-image or sliding-window inference, optional multi-scale + flip averaging the
  softmax probabilities at the original resolution; each image is seen by one process.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from gpaco.data.build import ShardSampler
from gpaco.data.seg_datasets import SEG_DATASETS, SegDataset, SyntheticSegDataset, build_seg_dataset
from gpaco.data.seg_transforms import IGNORE_INDEX, SEG_MEAN, SEG_STD, SegEvalTransform, SegTrainTransform, \
    rescale_size
from gpaco.distributed import cleanup, init_distributed
from gpaco.engine.checkpoint import check_writable, find_resume, load_checkpoint, rng_state, save_checkpoint, \
    set_rng_state
from gpaco.engine.logging import RunLogger, print_main, save_args_yaml, to_jsonable
from gpaco.engine.loop import autocast_context
from gpaco.losses.pixel import pixel_paco_loss
from gpaco.metrics import SegMeter
from gpaco.models.seg import SEG_ARCHS, build_seg_model

__all__ = [
    "sample_pixel_indices", "SegCriterion", "poly_lr", "build_seg_optimizer", "IterationSampler",
    "inference", "evaluate_seg", "format_iou_table", "build_train_parser", "main", "run",
]

MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


class FlagError(SystemExit):
    def __init__(self, message: str):
        super().__init__(f"error: {message}")


# --------------------------------------------------------------------------- loss


def sample_pixel_indices(batch: int, num: int, k: int, *, device=None,
                         generator: Optional[torch.Generator] = None) -> Tensor:
    """[batch, min(k, num)] pixel indices: per image an independent random subset of
    ``range(num)`` (a random permutation's first ``k``); ``k < 0`` keeps every pixel."""
    if k < 0 or k >= num:
        return torch.arange(num, device=device).expand(batch, num)
    keys = torch.rand(batch, num, device=device, generator=generator)
    return keys.argsort(dim=1)[:, :k]


def _pad_labels(labels: Tensor, size: Tuple[int, int]) -> Tensor:
    h, w = labels.shape[-2:]
    if (h, w) == tuple(size):
        return labels
    return F.pad(labels, (0, size[1] - w, 0, size[0] - h), value=IGNORE_INDEX)


class SegCriterion(nn.Module):
    """CE (+ 0.4 aux CE) (+ pixel GPaCo) on a :class:`~gpaco.models.seg.SegModel`'s train outputs."""

    def __init__(self, num_classes: int, *, method: str = "gpaco", alpha: float = 0.01, temperature: float = 0.07,
                 num_pixels: int = 8192, aux_weight: float = 0.4, paco_weight: float = 1.0,
                 ignore_index: int = IGNORE_INDEX, avg_non_ignore: bool = False):
        super().__init__()
        self.num_classes, self.method = num_classes, method
        self.alpha, self.temperature, self.num_pixels = alpha, temperature, num_pixels
        self.aux_weight, self.paco_weight = aux_weight, paco_weight
        self.ignore_index, self.avg_non_ignore = ignore_index, avg_non_ignore

    def _ce(self, logits: Tensor, labels: Tensor) -> Tensor:
        logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, labels, ignore_index=self.ignore_index, reduction="none")
        if self.avg_non_ignore:
            return loss.sum() / (labels != self.ignore_index).sum().clamp_min(1)
        return loss.mean()

    def paco(self, embed: Tensor, logits: Tensor, labels: Tensor,
             generator: Optional[torch.Generator] = None) -> Tensor:
        b, d, h, w = embed.shape
        small = F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
        small = torch.where(small >= self.num_classes, torch.full_like(small, self.ignore_index), small)
        idx = sample_pixel_indices(b, h * w, self.num_pixels, device=embed.device, generator=generator)
        feats = embed.float().flatten(2).transpose(1, 2)  # [B, HW, D]
        logit = logits.float().flatten(2).transpose(1, 2)  # [B, HW, C]
        take = lambda t: torch.gather(t, 1, idx[..., None].expand(-1, -1, t.shape[-1]))  # noqa: E731
        return pixel_paco_loss(take(feats), torch.gather(small.flatten(1), 1, idx), take(logit),
                               alpha=self.alpha, temperature=self.temperature, ignore_index=self.ignore_index)

    def forward(self, out: Dict, labels: Tensor, generator: Optional[torch.Generator] = None):
        """Returns (total loss, {'ce', 'aux', 'paco'} detached floats-as-tensors)."""
        labels = _pad_labels(labels, out["padded_size"])
        parts = {"ce": self._ce(out["logits"], labels)}
        if "aux" in out and self.aux_weight:
            parts["aux"] = self.aux_weight * self._ce(out["aux"], labels)
        if self.method == "gpaco":
            parts["paco"] = self.paco_weight * self.paco(out["embed"], out["logits"], labels, generator)
        total = sum(parts.values())
        return total, {k: v.detach() for k, v in parts.items()}


# --------------------------------------------------------------------------- schedule & optimizer


def poly_lr(it: int, *, base_lr: float, max_iters: int, power: float = 0.9, min_lr: float = 0.0,
            warmup_iters: int = 0, warmup_ratio: float = 1e-6) -> float:
    """mmcv's PolyLrUpdaterHook (by iteration) with its linear warmup; ``it`` is 0-based."""
    lr = (base_lr - min_lr) * (1.0 - it / max_iters) ** power + min_lr
    if warmup_iters and it < warmup_iters:
        k = (1.0 - it / warmup_iters) * (1.0 - warmup_ratio)
        lr = lr * (1.0 - k)
    return lr


DEFAULT_NO_DECAY = ("absolute_pos_embed", "relative_position_bias_table", "norm")


def build_seg_optimizer(model: nn.Module, *, name: str, lr: float, wd: float, momentum: float = 0.9,
                        betas: Tuple[float, float] = (0.9, 0.999),
                        no_decay_keys: Sequence[str] = ()) -> torch.optim.Optimizer:
    """SGD or AdamW; parameters whose name contains one of ``no_decay_keys`` get no weight decay
    (mmcv ``paramwise_cfg.custom_keys`` with ``decay_mult=0``)."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if any(k in n for k in no_decay_keys) else decay).append(p)
    groups = [{"params": decay, "weight_decay": wd}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), weight_decay=wd)
    raise ValueError(f"unknown optimizer {name!r}")


# --------------------------------------------------------------------------- sampler


class IterationSampler(Sampler):
    """Per-process sample keys ``(index, aug_seed)`` for iterations ``start_iter .. max_iters-1``.

    Epoch ``e`` is a permutation of the dataset seeded by ``(seed, e)``, cut into global
    batches (the incomplete last one dropped); process ``rank`` takes its slice of each.
    Iteration ``it`` therefore sees the same images with the same augmentation seeds
    however the run was interrupted and resumed, and whatever the number of workers.
    """

    def __init__(self, num_samples: int, per_rank_batch: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 start_iter: int = 0, max_iters: int):
        self.n, self.b, self.rank, self.world = num_samples, per_rank_batch, rank, world_size
        self.seed, self.start, self.stop = seed, start_iter, max_iters
        self.per_epoch = num_samples // (per_rank_batch * world_size)
        if self.per_epoch < 1:
            raise FlagError(f"the train split has {num_samples} images, fewer than one global batch "
                            f"({per_rank_batch * world_size}); lower --batch-size")

    def __len__(self) -> int:
        return max(self.stop - self.start, 0) * self.b

    def __iter__(self) -> Iterator[Tuple[int, Tuple[int, ...]]]:
        epoch, perm = -1, None
        gb = self.b * self.world
        for it in range(self.start, self.stop):
            e, pos = divmod(it, self.per_epoch)
            if e != epoch:
                epoch = e
                perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + e))
            mine = perm[pos * gb + self.rank * self.b: pos * gb + (self.rank + 1) * self.b]
            for j, idx in enumerate(mine.tolist()):
                yield idx, (self.seed, it, self.rank, j)


def _collate(batch):
    imgs, labels, idx = zip(*batch)
    return torch.stack(imgs), torch.stack(labels), torch.tensor(idx)


def _worker_init(_):
    torch.set_num_threads(1)


# --------------------------------------------------------------------------- inference


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
                        collate_fn=_collate, worker_init_fn=_worker_init if workers else None)
    meter = SegMeter(num_classes, IGNORE_INDEX, device=device)
    t0 = time.time()
    seen = 0
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


# --------------------------------------------------------------------------- flags


def add_seg_data_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="demo", choices=sorted(SEG_DATASETS))
    g.add_argument("--data-root", default="data/demo_seg")
    g.add_argument("--img-scale", type=int, nargs=2, default=None, metavar=("W", "H"),
                   help="train rescale / test resize scale (default per dataset, e.g. 2048 512 for ADE20K)")
    g.add_argument("--workers", "-j", type=int, default=4)


def add_seg_test_flags(p: argparse.ArgumentParser, *, multi_scale: bool = True) -> None:
    g = p.add_argument_group("test-time")
    g.add_argument("--test-mode", default=None, choices=("whole", "slide"),
                   help="default per dataset (Pascal-Context-59: slide)")
    g.add_argument("--test-crop", type=int, nargs=2, default=None, metavar=("H", "W"))
    g.add_argument("--test-stride", type=int, nargs=2, default=None, metavar=("H", "W"))
    if multi_scale:
        g.add_argument("--ms-ratios", type=float, nargs="+", default=list(MS_RATIOS),
                       help="multi-scale ratios of the 'ms' evaluation (with flip)")


def build_train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/train_seg.py", description="Train a segmentation model (CE or GPaCo), "
                                "iteration-based, on one process or under torchrun.")
    add_seg_data_flags(p)
    g = p.add_argument_group("data")
    g.add_argument("--crop-size", type=int, nargs=2, default=None, metavar=("H", "W"))
    g.add_argument("--ratio-range", type=float, nargs=2, default=(0.5, 2.0))
    g.add_argument("--cat-max-ratio", type=float, default=0.75)
    g.add_argument("--flip-prob", type=float, default=0.5, help="horizontal flip probability")
    g.add_argument("--photometric", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--val-split", default="val", help="split evaluated every --eval-interval (best.pth)")
    g.add_argument("--test-split", default=None, help="split of the final report (default: --val-split)")
    g = p.add_argument_group("model")
    g.add_argument("--arch", default="r50", choices=sorted(SEG_ARCHS))
    g.add_argument("--encoder", default=None, help="override the arch's smp encoder name")
    g.add_argument("--method", default="gpaco", choices=("ce", "gpaco"))
    g.add_argument("--pretrained", default=None, help="local encoder weights file (nothing is downloaded)")
    g.add_argument("--embed-dim", type=int, default=128)
    g.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=True,
                   help="SyncBatchNorm under torchrun on CUDA (CPU runs keep plain BN)")
    g.add_argument("--amp", default="none", choices=("none", "fp16", "bf16"))
    g = p.add_argument_group("loss")
    g.add_argument("--alpha", type=float, default=0.01)
    g.add_argument("--temperature", type=float, default=0.07)
    g.add_argument("--num-pixels", type=int, default=8192, help="pixels sampled per image for GPaCo (-1: all)")
    g.add_argument("--aux-weight", type=float, default=0.4)
    g.add_argument("--paco-weight", type=float, default=1.0)
    g.add_argument("--ce-avg-non-ignore", action=argparse.BooleanOptionalAction, default=False,
                   help="average the CE over labelled pixels only (default: over all pixels, as mmseg 0.x)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--iters", type=int, default=40000)
    g.add_argument("--batch-size", "-b", type=int, default=16, help="GLOBAL batch over all processes")
    g.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"))
    g.add_argument("--lr", type=float, default=0.01)
    g.add_argument("--wd", type=float, default=5e-4)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.999))
    g.add_argument("--power", type=float, default=0.9, help="poly power")
    g.add_argument("--min-lr", type=float, default=1e-4)
    g.add_argument("--warmup-iters", type=int, default=0)
    g.add_argument("--warmup-ratio", type=float, default=1e-6)
    g.add_argument("--no-decay-keys", default=None,
                   help="comma-separated name parts without weight decay (default: adamw "
                        "'absolute_pos_embed,relative_position_bias_table,norm', sgd none)")
    add_seg_test_flags(p, multi_scale=False)  # training evaluates single-scale; tools/eval_seg.py does both
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", default="runs/seg")
    g.add_argument("--resume", default=None, help="checkpoint path, or 'auto' for OUTPUT_DIR/checkpoint.pth")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--deterministic", action="store_true")
    g.add_argument("--eval-interval", type=int, default=None, help="iterations between val evaluations "
                   "(default iters/10; 0: only at the end)")
    g.add_argument("--ckpt-interval", type=int, default=None, help="iterations between checkpoints "
                   "(default iters/10)")
    g.add_argument("--print-freq", type=int, default=50)
    g.add_argument("--stop-after", type=int, default=None, metavar="ITERS",
                   help="leave after this many iterations of this run with a checkpoint, as if preempted")
    g.add_argument("--dry-run", action="store_true", help="build everything (synthetic data when --data-root "
                   "is absent), two small iterations and one small evaluation; write nothing")
    g.add_argument("--dry-run-crop", type=int, default=64)
    g.add_argument("--dry-run-batch", type=int, default=2)
    return p


def parse_train_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = build_train_parser().parse_args(argv)
    info = SEG_DATASETS[args.dataset]
    args.img_scale = list(args.img_scale or info.img_scale)
    args.crop_size = list(args.crop_size or info.crop_size)
    args.test_mode = args.test_mode or info.test_mode
    args.test_crop = list(args.test_crop or info.test_crop or args.crop_size)
    args.test_stride = list(args.test_stride or info.test_stride or [max(c * 2 // 3, 1) for c in args.test_crop])
    args.test_split = args.test_split or args.val_split
    if args.no_decay_keys is None:
        args.no_decay_keys = ",".join(DEFAULT_NO_DECAY) if args.optimizer == "adamw" else ""
    for name in ("iters", "batch_size", "lr"):
        if getattr(args, name) <= 0:
            raise FlagError(f"--{name.replace('_', '-')} must be > 0")
    if args.temperature <= 0:
        raise FlagError("--temperature must be > 0")
    if args.num_pixels == 0:
        raise FlagError("--num-pixels must be > 0 (or -1 for all pixels)")
    if args.eval_interval is None:
        args.eval_interval = max(args.iters // 10, 1)
    if args.ckpt_interval is None:
        args.ckpt_interval = max(args.iters // 10, 1)
    return args


# --------------------------------------------------------------------------- training


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _iter_seed(seed: int, it: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, it, rank]).generate_state(1)[0])


def _datasets(args, synthetic: bool):
    info = SEG_DATASETS[args.dataset]
    train_tf = SegTrainTransform(tuple(args.img_scale), tuple(args.crop_size), ratio_range=tuple(args.ratio_range),
                                 cat_max_ratio=args.cat_max_ratio, flip_prob=args.flip_prob,
                                 photometric=args.photometric)
    if synthetic:
        size = tuple(args.crop_size)
        train = SyntheticSegDataset(8, info.num_classes, size, transform=train_tf, class_names=info.class_names)
        val = SyntheticSegDataset(2, info.num_classes, size, transform=SegEvalTransform(),
                                  class_names=info.class_names, seed=100)
        return train, val, val
    train = build_seg_dataset(args.dataset, args.data_root, "train", train_tf)
    val = build_seg_dataset(args.dataset, args.data_root, args.val_split, SegEvalTransform())
    test = val if args.test_split == args.val_split else build_seg_dataset(
        args.dataset, args.data_root, args.test_split, SegEvalTransform())
    return train, val, test


def _eval_kwargs(args, dist_info) -> dict:
    return dict(device=dist_info.device, scale=tuple(args.img_scale), mode=args.test_mode,
                crop=tuple(args.test_crop), stride=tuple(args.test_stride), rank=dist_info.rank,
                world_size=dist_info.world_size, amp=args.amp)


def _summary(m: dict) -> str:
    return f"mIoU {m['miou']:.2f} mAcc {m['macc']:.2f} aAcc {m['aacc']:.2f} ({m['num_images']} images)"


def run(args: argparse.Namespace) -> dict:
    d = init_distributed()
    rank, world, device = d.rank, d.world_size, d.device
    if args.batch_size % world:
        raise FlagError(f"--batch-size {args.batch_size} is the global batch and must be divisible by the number "
                        f"of processes ({world})")
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    _seed_all(args.seed)
    info = SEG_DATASETS[args.dataset]
    num_classes = info.num_classes
    synthetic = args.dry_run and not os.path.isdir(args.data_root)
    if args.dry_run:
        c = args.dry_run_crop
        args.crop_size = [min(args.crop_size[0], c), min(args.crop_size[1], c)]
        args.img_scale = [min(args.img_scale[0], 2 * c), min(args.img_scale[1], c)]
        args.test_crop = [min(args.test_crop[0], c), min(args.test_crop[1], c)]
        args.test_stride = [max(x * 2 // 3, 1) for x in args.test_crop]
    train_set, val_set, test_set = _datasets(args, synthetic)
    per_process = args.dry_run_batch if args.dry_run else args.batch_size // world

    print_main(f"gpaco train_seg: {args.method} {args.arch} ({SEG_ARCHS[args.arch].decoder}, encoder "
               f"{args.encoder or SEG_ARCHS[args.arch].encoder}) on {args.dataset}: {len(train_set)} train images, "
               f"{num_classes} classes{' (synthetic stand-in: data root absent)' if synthetic else ''}")
    print_main(f"processes {world} on {device.type}, global batch {per_process * world} = {per_process} per "
               f"process, crop {args.crop_size[0]}x{args.crop_size[1]}, {args.iters} iterations, {args.optimizer} "
               f"lr {args.lr} wd {args.wd}")

    if args.dry_run and args.pretrained and not os.path.exists(args.pretrained):
        print_main(f"warning: --pretrained {args.pretrained} not found; the dry run uses random weights")
        args.pretrained = None
    model = build_seg_model(args.arch, num_classes, method=args.method, embed_dim=args.embed_dim,
                            encoder=args.encoder, pretrained=args.pretrained)
    if d.distributed and args.sync_bn:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            print_main("note: SyncBatchNorm needs CUDA; the CPU processes keep per-process BatchNorm")
    model.to(device)
    criterion = SegCriterion(num_classes, method=args.method, alpha=args.alpha, temperature=args.temperature,
                             num_pixels=args.num_pixels, aux_weight=args.aux_weight, paco_weight=args.paco_weight,
                             avg_non_ignore=args.ce_avg_non_ignore)
    no_decay = tuple(k for k in args.no_decay_keys.split(",") if k)
    optimizer = build_seg_optimizer(model, name=args.optimizer, lr=args.lr, wd=args.wd, momentum=args.momentum,
                                    betas=tuple(args.betas), no_decay_keys=no_decay)
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    model_without_ddp = model
    if d.distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    out = args.output_dir
    start_iter, best_miou, best_iter = 0, -1.0, -1
    max_iters = 2 if args.dry_run else args.iters
    if not args.dry_run:
        if rank == 0:
            check_writable(out)
        resume_path = find_resume(out, args.resume)
        if resume_path:
            ckpt = load_checkpoint(resume_path)
            model_without_ddp.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            start_iter = int(ckpt["iter"])
            best_miou, best_iter = float(ckpt.get("best_miou", -1.0)), int(ckpt.get("best_iter", -1))
            if "rng" in ckpt:
                set_rng_state(ckpt["rng"])
            print_main(f"resumed from {resume_path}: {start_iter} iterations done")
        elif args.resume == "auto":
            print_main(f"--resume auto: no checkpoint in {out}, starting from scratch")
    logger = RunLogger(out, enabled=rank == 0 and not args.dry_run)
    if rank == 0 and not args.dry_run:
        save_args_yaml(args, os.path.join(out, "args.yaml"))

    stop = max_iters if args.stop_after is None or args.dry_run else min(max_iters, start_iter + args.stop_after)
    sampler = IterationSampler(len(train_set), per_process, rank=rank, world_size=world, seed=args.seed,
                               start_iter=start_iter, max_iters=stop)
    workers = 0 if args.dry_run else args.workers
    loader = DataLoader(train_set, batch_size=per_process, sampler=sampler, num_workers=workers,
                        collate_fn=_collate, pin_memory=device.type == "cuda", drop_last=False,
                        worker_init_fn=_worker_init if workers else None, persistent_workers=False)
    eval_kw = _eval_kwargs(args, d)

    def save(it: int, is_best: bool = False) -> None:
        if rank != 0 or args.dry_run:
            return
        state = {"model": model_without_ddp.state_dict(), "optimizer": optimizer.state_dict(),
                 "scaler": scaler.state_dict() if scaler is not None else None, "iter": it,
                 "best_miou": best_miou, "best_iter": best_iter, "rng": rng_state(), "args": vars(args),
                 "num_classes": num_classes, "arch": args.arch, "method": args.method, "dataset": args.dataset,
                 "class_names": list(train_set.class_names)}
        save_checkpoint(state, os.path.join(out, "checkpoint.pth"))
        if is_best:
            save_checkpoint({k: state[k] for k in ("model", "iter", "args", "num_classes", "arch", "method",
                                                   "dataset", "class_names", "best_miou")},
                            os.path.join(out, "best.pth"))

    model.train()
    sums: Dict[str, float] = {}
    window_n, t_window, t_start = 0, time.time(), time.time()
    last: Dict[str, float] = {}
    it = start_iter
    for imgs, labels, _ in loader:
        lr = poly_lr(it, base_lr=args.lr, max_iters=max_iters, power=args.power, min_lr=args.min_lr,
                     warmup_iters=args.warmup_iters, warmup_ratio=args.warmup_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        s = _iter_seed(args.seed, it, rank)
        torch.manual_seed(s)  # dropout: a function of (seed, iteration, rank), so resuming is exact
        gen = torch.Generator(device=device).manual_seed(s)
        imgs = imgs.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with autocast_context(device, args.amp):
            outputs = model(imgs, train_outputs=True)
        loss, parts = criterion(outputs, labels, generator=gen)
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss is {loss.item()} at iteration {it}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        it += 1
        vals = {"loss": loss.item(), **{k: v.item() for k, v in parts.items()}}
        for k, v in vals.items():
            sums[k] = sums.get(k, 0.0) + v
        window_n += 1
        last = vals
        if args.dry_run or (args.print_freq and (it % args.print_freq == 0 or it == stop)):
            avg = {k: v / window_n for k, v in sums.items()}
            rate = window_n * per_process * world / max(time.time() - t_window, 1e-9)
            eta = (time.time() - t_start) / max(it - start_iter, 1) * (max_iters - it)
            parts_s = " ".join(f"{k} {v:.4f}" for k, v in avg.items() if k != "loss")
            print_main(f"[iter {it}/{max_iters}] loss {avg['loss']:.4f} ({parts_s}) lr {lr:.3e} {rate:.1f} img/s "
                       f"eta {time.strftime('%H:%M:%S', time.gmtime(eta)) if eta < 86400 else f'{eta / 3600:.0f}h'}")
            logger.log_epoch({"iter": it, "lr": lr, **avg})
            logger.log_scalars({f"train/{k}": v for k, v in avg.items()} | {"train/lr": lr}, it)
            sums, window_n, t_window = {}, 0, time.time()
        if args.dry_run:
            continue
        is_best = False
        if args.eval_interval and it % args.eval_interval == 0 and it < max_iters:
            val = evaluate_seg(model_without_ddp, val_set, num_classes=num_classes, workers=min(workers, 2),
                               **eval_kw)
            is_best = val["miou"] > best_miou
            if is_best:
                best_miou, best_iter = val["miou"], it
            print_main(f"[iter {it}] val {_summary(val)}; best mIoU {best_miou:.2f} at {best_iter}")
            logger.log_epoch({"iter": it, "val_miou": val["miou"], "val_macc": val["macc"], "val_aacc": val["aacc"]})
            logger.log_scalars({"val/miou": val["miou"], "val/macc": val["macc"], "val/aacc": val["aacc"]}, it)
        if it % args.ckpt_interval == 0 or it == stop or is_best:
            save(it, is_best)

    if args.dry_run:
        val = evaluate_seg(model_without_ddp, val_set, num_classes=num_classes, max_images=1, **eval_kw)
        print_main(f"dry run ok: 2 iterations, loss {last.get('loss', float('nan')):.4f}, eval {_summary(val)}; "
                   f"nothing written")
        cleanup()
        return {"dry_run": True, "train_loss": last.get("loss"), **{k: last[k] for k in last if k != "loss"},
                "miou": val["miou"]}

    if stop < max_iters:
        print_main(f"stopped after iteration {stop} of {max_iters} (--stop-after); continue with --resume auto")
        logger.close()
        cleanup()
        return {"stopped_at_iter": stop, "train_loss": last.get("loss")}

    # Final report: the last iteration's model (as the original's numbers) on the test split.
    test = evaluate_seg(model_without_ddp, test_set, num_classes=num_classes, workers=min(workers, 2), **eval_kw)
    if args.val_split == args.test_split and test["miou"] > best_miou:
        best_miou, best_iter = test["miou"], max_iters
        save(max_iters, True)
    print_main(f"final ({args.test_split}, iteration {max_iters}, single scale): {_summary(test)}")
    result = {"split": args.test_split, "iter": max_iters, "best_val_miou": best_miou if best_iter > 0 else None,
              "best_val_iter": best_iter if best_iter > 0 else None,
              "train_loss": last.get("loss"), **test}
    if rank == 0:
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump(to_jsonable(result), f, indent=1)
        with open(os.path.join(out, "per_class_iou.md"), "w") as f:
            f.write(format_iou_table([(args.method, test)]) + "\n")
        print_main(format_iou_table([(args.method, test)]))
    logger.close()
    cleanup()
    return result


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_train_args(argv)
    t0 = time.time()
    result = run(args)
    print_main(f"done in {time.time() - t0:.1f}s")
    return result
