"""Pixel-level GPaCo loss for semantic segmentation (docs/method.md#pixel-gpaco-for-segmentation).

Every sampled pixel is an anchor and a contrast sample (no queue, no prior). Pixels
labelled ``ignore_index`` stay in every denominator as negatives but have no center
target and are left out of the mean.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .lovasz import lovasz_softmax
from .paco import host_readable, paco_rows

__all__ = ["pixel_paco_loss", "sample_pixel_indices", "pad_labels", "SegmentationLoss"]


def pixel_paco_loss(features: Tensor, labels: Tensor, logits: Tensor, *, alpha: float, temperature: float,
                    ignore_index: int = 255) -> Tensor:
    """Mean PaCo loss over the non-ignored pixels.

    Args:
        features: [N, D] (one image) or [B, N, D] (B images, each its own contrast set),
            L2-normalised per pixel.
        labels: [N] or [B, N]; ``ignore_index`` marks unlabeled pixels, any other value
            must be in ``[0, C)``.
        logits: [N, C] or [B, N, C] per-pixel classifier logits (the centers).
    Returns:
        Scalar: per image the mean over its valid pixels (0 if it has none), then the
        mean over images.
    """
    if features.ndim == 2:
        features, labels, logits = features[None], labels[None], logits[None]
    if features.ndim != 3 or labels.ndim != 2 or logits.ndim != 3:
        raise ValueError(
            f"expected features [B, N, D], labels [B, N], logits [B, N, C]; got {tuple(features.shape)}, "
            f"{tuple(labels.shape)}, {tuple(logits.shape)}"
        )
    num_classes = logits.shape[-1]
    valid = labels != ignore_index
    # CPU only: on a GPU the read would stall every step (SegmentationLoss maps labels >= C
    # to ignore_index before this anyway)
    if host_readable(labels):
        bad = valid & ((labels < 0) | (labels >= num_classes))
        if bad.any():
            raise ValueError(
                f"pixel labels must be in [0, {num_classes}) or ignore_index={ignore_index}; "
                f"found {labels[bad].unique().tolist()[:5]}"
            )
    # Give ignored pixels a label no valid pixel has, so they are never a valid anchor's positive.
    labels = torch.where(valid, labels, torch.full_like(labels, num_classes))
    rows = paco_rows(
        features, labels, logits, features.shape[1],
        alpha=alpha, temperature=temperature, center_valid=valid,
    )
    valid_f = valid.to(rows.dtype)
    rows = torch.where(valid, rows, rows.new_zeros(()))
    per_image = (rows * valid_f).sum(-1) / (valid_f.sum(-1) + 1e-12)
    return per_image.mean()


def sample_pixel_indices(batch: int, num: int, k: int, *, device=None,
                         generator: Optional[torch.Generator] = None) -> Tensor:
    """[batch, min(k, num)] pixel indices: per image an independent random subset of
    ``range(num)`` (a random permutation's first ``k``); ``k < 0`` keeps every pixel."""
    if k < 0 or k >= num:
        return torch.arange(num, device=device).expand(batch, num)
    keys = torch.rand(batch, num, device=device, generator=generator)
    return keys.argsort(dim=1)[:, :k]


def pad_labels(labels: Tensor, size: Tuple[int, int], ignore_index: int) -> Tensor:
    """[B, H, W] labels padded (bottom/right) with ``ignore_index`` to ``size`` = (Hp, Wp), the
    padded input a SegModel's train outputs cover (``out['padded_size']``)."""
    h, w = labels.shape[-2:]
    if (h, w) == tuple(size):
        return labels
    return F.pad(labels, (0, size[1] - w, 0, size[0] - h), value=ignore_index)


class SegmentationLoss(nn.Module):
    """Pixel CE (+ ``aux_weight`` x aux CE) (+ ``paco_weight`` x pixel GPaCo when ``paco``) on a
    :class:`~gpaco.models.seg.SegModel`'s train outputs (docs/method.md#pixel-gpaco-for-segmentation).

    The CE is bilinear-upsampled logits vs the crop's labels, averaged over all pixels of the
    crop, ignored ones included (mmseg 0.x), or over the labelled ones with
    ``ce_avg_non_ignore``. The pixel loss samples ``num_pixels`` pixels per image of the
    1/4-resolution embeddings and logits, labels nearest-downsampled to that size.
    ``lovasz_weight`` > 0 adds the Lovász-softmax loss on the upsampled logits (the original's
    ``UPerHead_paco11`` ablation; :mod:`gpaco.losses.lovasz`).
    """

    def __init__(self, num_classes: int, *, paco: bool = True, alpha: float = 0.01, temperature: float = 0.07,
                 num_pixels: int = 8192, aux_weight: float = 0.4, paco_weight: float = 1.0,
                 ignore_index: int = 255, ce_avg_non_ignore: bool = False, lovasz_weight: float = 0.0):
        super().__init__()
        self.lovasz_weight = lovasz_weight
        self.num_classes, self.use_paco = num_classes, paco
        self.alpha, self.temperature, self.num_pixels = alpha, temperature, num_pixels
        self.aux_weight, self.paco_weight = aux_weight, paco_weight
        self.ignore_index, self.avg_non_ignore = ignore_index, ce_avg_non_ignore

    @staticmethod
    def _upsample(logits: Tensor, labels: Tensor) -> Tensor:
        return F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)

    def pixel_ce(self, logits: Tensor, labels: Tensor) -> Tensor:
        """CE of low-resolution ``logits`` [B, C, h, w] upsampled to ``labels`` [B, H, W]."""
        logits = self._upsample(logits, labels)
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
        labels = pad_labels(labels, out["padded_size"], self.ignore_index)
        parts = {"ce": self.pixel_ce(out["logits"], labels)}
        if "aux" in out and self.aux_weight:
            parts["aux"] = self.aux_weight * self.pixel_ce(out["aux"], labels)
        if self.lovasz_weight:
            parts["lovasz"] = self.lovasz_weight * lovasz_softmax(self._upsample(out["logits"], labels), labels,
                                                                  ignore_index=self.ignore_index)
        if self.use_paco:
            parts["paco"] = self.paco_weight * self.paco(out["embed"], out["logits"], labels, generator)
        total = sum(parts.values())
        return total, {k: v.detach() for k, v in parts.items()}
