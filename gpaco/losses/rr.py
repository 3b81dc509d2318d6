"""Region Rebalance (RR) for semantic segmentation: a region branch and its five losses.

The maths is written out in docs/method.md#region-rebalance-for-segmentation. In short, with decoder features
``o`` [n, ch, h, w], pixel logits ``z`` = cls_seg(o) [n, C, h, w] and full-resolution
labels ``y``:

* a *region classifier* R (1x1 conv ch->ch, ReLU, Dropout2d, 1x1 conv ch->C+1; the
  extra column C means "class absent") classifies pooled region features;
* *soft regions* (per image): ``r_c = sum_x p_c(x) o(x) / (sum_x p_c(x) + 1e-12)`` with
  ``p = softmax_c(z)``; ``B = R(r)`` [n, C, C+1] and the per-image class bias
  ``b = mean_c B[:, c, :C]`` [n, C] that is added to every pixel's logits (training
  losses and inference alike);
* *ground-truth regions* (training): labels nearest-downsampled to h x w; for every
  distinct value v of the **whole batch** (the ignore value included),
  ``g_v = mean of o over the pixels labelled v``; ``G = R(g)`` [K, C+1].

Losses (``Z`` = bilinear upsampling of ``z`` to the label size; every CE ignores
``ignore_index`` and averages over the labelled pixels):

* L1 = main_w * CE(Z, y);  L2 = main_w * CE(Z + b, y);
* L3 = main_w * CE((Z + b) * m, y), ``m[i, c]`` = 1 iff class c occurs in image i (the
  logits of absent classes are multiplied by 0, not masked out);
* L4 = region_w * sum_rows w_row * CE_smooth(B_row + log_prior) / sum_rows w_row, rows
  (i, c) with target c if c occurs in image i, else C;
* L5 = the same on G with targets min(v, C).

``CE_smooth`` puts ``smooth`` on the target column and ``(1 - smooth) / C`` on each of
the other C columns; ``log_prior = log(w + 1e-12)`` with ``w_c = f_c / sum f`` (image-level
class frequencies) and ``w_C = 1``. The row weight is ``neg_w`` on "absent" rows
(target C) and 1 elsewhere. The original code's mask expression has an
operator-precedence slip that makes the weight 1 on every row whenever ``neg_w != 0``
(and 0 on absent rows when ``neg_w == 0``); ``neg_w_precedence_bug=True`` reproduces it.

Image-level class counts (how many training images contain each class) come from a
one-integer-per-line file (:func:`read_class_counts`) or from the masks themselves
(:func:`image_class_counts`); CeCo uses the same helpers.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .pixel import SegmentationLoss, pad_labels

__all__ = [
    "RegionBranch", "RegionRebalanceLoss", "RRSegmentationLoss", "region_rebalance_loss", "smoothed_region_ce",
    "read_class_counts", "write_class_counts", "image_class_counts", "class_frequencies",
    "region_log_prior", "RR_OUTPUT_KEYS",
]

#: keys of :meth:`RegionBranch.forward`'s dict that :class:`RegionRebalanceLoss` reads.
RR_OUTPUT_KEYS = ("region_logits", "region_bias", "gt_region_logits", "gt_region_labels")


# --------------------------------------------------------------------------- class counts


def read_class_counts(path: Union[str, os.PathLike], *, num_classes: Optional[int] = None) -> List[int]:
    """Read a class-count file: one non-negative integer per line, line ``c`` = class ``c``.

    Trailing empty lines are allowed; any other empty or non-integer line is an error
    that names the file and the (1-based) line. ``num_classes`` (if given) must equal
    the number of lines.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"class-count file {p} does not exist (expected one integer per line, one per class)")
    lines = p.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ValueError(f"{p}: the class-count file is empty (expected one integer per line, one per class)")
    counts = []
    for lineno, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text:
            raise ValueError(f"{p}:{lineno}: empty line; expected one integer per line (line c = count of class c)")
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{p}:{lineno}: {text!r} is not an integer; expected one integer per line") from None
        if value < 0:
            raise ValueError(f"{p}:{lineno}: class counts must be >= 0, got {value}")
        counts.append(value)
    if num_classes is not None and len(counts) != num_classes:
        raise ValueError(f"{p}: has {len(counts)} class counts (lines), expected num_classes={num_classes}")
    if sum(counts) <= 0:
        raise ValueError(f"{p}: all {len(counts)} class counts are 0")
    return counts


def write_class_counts(path: Union[str, os.PathLike], counts: Sequence[int]) -> None:
    """Write ``counts`` in the format :func:`read_class_counts` reads."""
    Path(path).write_text("".join(f"{int(c)}\n" for c in counts))


def classes_present(mask, num_classes: int, *, ignore_index: int = 255, where: str = "mask") -> Tensor:
    """[num_classes] bool: the classes occurring in one label map (tensor or array, any shape);
    ValueError naming ``where`` for a value outside ``[0, num_classes)`` and ``ignore_index``."""
    values = torch.as_tensor(np.asarray(mask)).reshape(-1).unique()
    values = values[values != ignore_index]
    if values.numel() and (values.min() < 0 or values.max() >= num_classes):
        bad = values[(values < 0) | (values >= num_classes)]
        raise ValueError(f"{where}: labels must be in [0, {num_classes}) or ignore_index={ignore_index}; "
                         f"found {bad.tolist()[:8]}")
    present = torch.zeros(num_classes, dtype=torch.bool)
    present[values.long()] = True
    return present


def image_class_counts(masks: Iterable, num_classes: int, *, ignore_index: int = 255) -> List[int]:
    """Image-level class counts: for each class, the number of masks in which it occurs.

    Args:
        masks: iterable of label maps (tensors or arrays of any shape, one per image).
            Values are class ids in ``[0, num_classes)`` or ``ignore_index``.
    Returns:
        ``num_classes`` integers.
    """
    counts = torch.zeros(num_classes, dtype=torch.int64)
    for i, mask in enumerate(masks):
        counts += classes_present(mask, num_classes, ignore_index=ignore_index, where=f"mask {i}")
    return counts.tolist()


def class_frequencies(counts: Sequence[float]) -> Tensor:
    """``counts / sum(counts)`` as a float64 [C] tensor (validated)."""
    f = torch.as_tensor(counts, dtype=torch.float64)
    if f.ndim != 1 or f.numel() == 0:
        raise ValueError(f"class counts must be a non-empty 1-D sequence, got shape {tuple(f.shape)}")
    if (f < 0).any() or f.sum() <= 0:
        raise ValueError("class counts must be non-negative with a positive sum")
    return f / f.sum()


def region_log_prior(counts: Sequence[float]) -> Tensor:
    """RR's log prior over the C+1 region classes: ``log(w + 1e-12)``, ``w = [f / sum f, 1]``. [C+1] float64"""
    w = torch.cat([class_frequencies(counts), torch.ones(1, dtype=torch.float64)])
    return torch.log(w + 1e-12)


# --------------------------------------------------------------------------- branch


def _labels_3d(labels: Tensor) -> Tensor:
    if labels.ndim == 4 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 3:
        raise ValueError(f"labels must be [n, H, W] (or [n, 1, H, W]), got {tuple(labels.shape)}")
    return labels.long()


def _pool_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _present(labels: Tensor, num_classes: int) -> Tensor:
    """[n, C] bool: class c occurs in image i (values outside [0, C) are ignored)."""
    n = labels.shape[0]
    flat = labels.reshape(n, -1)
    inside = (flat >= 0) & (flat < num_classes)
    idx = torch.where(inside, flat, torch.full_like(flat, num_classes))
    hits = torch.zeros(n, num_classes + 1, dtype=torch.bool, device=labels.device)
    hits.scatter_(1, idx, True)
    return hits[:, :num_classes]


class RegionBranch(nn.Module):
    """RR's region classifier and the two ways of pooling regions.

    ``region_cls``: 1x1 conv (ch->ch) + ReLU, Dropout2d(``dropout``), 1x1 conv (ch->C+1),
    PyTorch default initialisation. Regions are classified as [K, ch, 1, 1] maps, so
    Dropout2d drops single feature values.

    ``branch(features, logits)`` returns ``{'region_logits', 'region_bias'}``;
    ``branch(features, logits, labels)`` (training) adds ``'gt_region_logits'`` and
    ``'gt_region_labels'``:

    ======================  ===============  ==========================================
    key                     shape            meaning
    ======================  ===============  ==========================================
    ``region_logits``       [n, C, C+1]      B = R(soft regions)
    ``region_bias``         [n, C]           b: add to the pixel logits (broadcast)
    ``gt_region_logits``    [K, C+1]         G = R(ground-truth regions)
    ``gt_region_labels``    [K] long         sorted distinct label values v of the batch
    ======================  ===============  ==========================================

    Inputs: ``features`` o [n, ch, h, w] (decoder output), ``logits`` z [n, C, h, w]
    (``cls_seg(o)``), ``labels`` [n, H, W] (or [n, 1, H, W]) covering the same area as
    the features (pad with the ignore value where the image was padded); they are
    nearest-downsampled to h x w.
    """

    def __init__(self, channels: int, num_classes: int, *, dropout: float = 0.1):
        super().__init__()
        self.channels, self.num_classes = int(channels), int(num_classes)
        self.region_cls = nn.Sequential(
            nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes + 1, 1),
        )

    def classify(self, regions: Tensor) -> Tensor:
        """[..., ch] region features -> [..., C+1] region logits."""
        lead = regions.shape[:-1]
        x = regions.reshape(-1, regions.shape[-1], 1, 1).to(self.region_cls[0].weight.dtype)
        return self.region_cls(x).reshape(*lead, self.num_classes + 1)

    @staticmethod
    def soft_regions(features: Tensor, logits: Tensor) -> Tensor:
        """[n, C, ch]: per image, the softmax(z)-weighted mean of the features for each class
        (float32, or float64 for float64 inputs; autocast off)."""
        dtype = _pool_dtype(features, logits)
        with torch.autocast(device_type=features.device.type, enabled=False):
            p = logits.to(dtype).softmax(dim=1).flatten(2)  # [n, C, hw]
            o = features.to(dtype).flatten(2)  # [n, ch, hw]
            return torch.bmm(p, o.transpose(1, 2)) / (p.sum(-1, keepdim=True) + 1e-12)

    @staticmethod
    def gt_regions(features: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor]:
        """Ground-truth regions over the whole batch: (sorted values v [K], mean features [K, ch]).

        ``labels`` are nearest-downsampled to the feature size; every distinct value
        (the ignore value included) is one region.
        """
        labels = _labels_3d(labels)
        small = F.interpolate(labels[:, None].float(), size=features.shape[-2:], mode="nearest")[:, 0].long()
        # one region per value present: unique sizes the outputs, a device read per step by design
        values, inverse = torch.unique(small.reshape(-1), sorted=True, return_inverse=True)
        feats = features.to(_pool_dtype(features)).permute(0, 2, 3, 1).reshape(-1, features.shape[1])  # [n*h*w, ch]
        sums = feats.new_zeros(values.numel(), feats.shape[1]).index_add_(0, inverse.reshape(-1), feats)
        sizes = torch.bincount(inverse.reshape(-1), minlength=values.numel()).to(feats.dtype)
        return values, sums / sizes[:, None]

    def region_bias(self, region_logits: Tensor) -> Tensor:
        """b = mean over the C regions of ``region_logits[..., :C]``: [n, C, C+1] -> [n, C]."""
        return region_logits[..., : self.num_classes].mean(dim=1)

    def forward(self, features: Tensor, logits: Tensor, labels: Optional[Tensor] = None) -> Dict[str, Tensor]:
        if features.ndim != 4 or logits.ndim != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(f"expected features [n, {self.channels}, h, w] and logits [n, {self.num_classes}, h, w], "
                             f"got {tuple(features.shape)} and {tuple(logits.shape)}")
        if features.shape[-2:] != logits.shape[-2:] or features.shape[0] != logits.shape[0]:
            raise ValueError(f"features {tuple(features.shape)} and logits {tuple(logits.shape)} must share n, h, w")
        region_logits = self.classify(self.soft_regions(features, logits))
        out = {"region_logits": region_logits, "region_bias": self.region_bias(region_logits)}
        if labels is not None:
            values, regions = self.gt_regions(features, labels)
            out["gt_region_logits"] = self.classify(regions)
            out["gt_region_labels"] = values
        return out


# --------------------------------------------------------------------------- losses


def smoothed_region_ce(region_logits: Tensor, targets: Tensor, *, smooth: float, log_prior: Optional[Tensor] = None,
                       neg_w: float = 1.0, neg_w_precedence_bug: bool = False) -> Tensor:
    """Weighted label-smoothed CE over C+1 region classes (RR's L4/L5 before ``region_w``).

    Args:
        region_logits: [K, C+1] (any leading shape is flattened).
        targets: [K] in ``[0, C]``; C = "absent".
        smooth: mass on the target column; ``(1 - smooth) / C`` on each other column.
        log_prior: [C+1] added to the logits, or None.
        neg_w: weight of the rows whose target is C (1 for the others).
        neg_w_precedence_bug: use the original code's weights instead: 1 on every row if
            ``neg_w != 0``, else 0 on absent rows and 1 on the others.
    Returns:
        Scalar ``sum_k w_k CE_k / sum_k w_k`` (0 if every weight is 0).
    """
    c1 = region_logits.shape[-1]
    logits = region_logits.reshape(-1, c1)
    targets = targets.reshape(-1).long()
    if log_prior is not None:
        logits = logits + log_prior.to(device=logits.device, dtype=logits.dtype)
    logp = logits.log_softmax(dim=-1)
    num_classes = c1 - 1
    off = (1.0 - smooth) / num_classes
    t = torch.full_like(logp, off)
    t.scatter_(1, targets[:, None], smooth)
    rows = -(t * logp).sum(-1)
    absent = targets == num_classes
    if neg_w_precedence_bug:
        weight = torch.ones_like(rows) if neg_w != 0 else (~absent).to(rows.dtype)
    else:
        weight = torch.where(absent, torch.full_like(rows, float(neg_w)), torch.ones_like(rows))
    return (weight * rows).sum() / weight.sum().clamp_min(1e-12)


def _ce_labelled(logits: Tensor, labels: Tensor, ignore_index: int) -> Tensor:
    """Pixel CE averaged over the labelled pixels (0 if there are none)."""
    loss = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    return loss / (labels != ignore_index).sum().clamp_min(1).to(loss.dtype)


def region_rebalance_loss(
    logits: Tensor,
    labels: Tensor,
    region_logits: Tensor,
    region_bias: Tensor,
    gt_region_logits: Tensor,
    gt_region_labels: Tensor,
    *,
    log_prior: Optional[Tensor],
    main_w: float,
    region_w: float,
    smooth: float,
    neg_w: float,
    ignore_index: int = 255,
    neg_w_precedence_bug: bool = False,
    align_corners: bool = False,
) -> Dict[str, Tensor]:
    """RR's five loss terms.

    Args:
        logits: z [n, C, h, w] pixel logits (low resolution).
        labels: y [n, H, W] (or [n, 1, H, W]) full-resolution labels.
        region_logits, region_bias, gt_region_logits, gt_region_labels: the
            :class:`RegionBranch` outputs ([n, C, C+1], [n, C], [K, C+1], [K]).
        log_prior: [C+1] (:func:`region_log_prior`) or None for no prior.
        main_w: weight of L1-L3; region_w: weight of L4-L5.
        smooth, neg_w, neg_w_precedence_bug: see :func:`smoothed_region_ce`.
        align_corners: of the bilinear upsampling of z.
    Returns:
        ``{'seg', 'seg_bias', 'seg_bias_mask', 'region', 'gt_region', 'total'}``
        = L1, L2, L3, L4, L5 and their sum, scalars in the compute dtype (float64 if
        any input is float64, else float32).
    """
    labels = _labels_3d(labels)
    n, num_classes = logits.shape[:2]
    if region_logits.shape != (n, num_classes, num_classes + 1) or region_bias.shape != (n, num_classes):
        raise ValueError(f"region_logits must be [{n}, {num_classes}, {num_classes + 1}] and region_bias "
                         f"[{n}, {num_classes}], got {tuple(region_logits.shape)} and {tuple(region_bias.shape)}")
    if labels.shape[0] != n:
        raise ValueError(f"labels have {labels.shape[0]} images, logits {n}")
    dtype = torch.float64 if torch.float64 in (logits.dtype, region_logits.dtype, gt_region_logits.dtype) \
        else torch.float32
    with torch.autocast(device_type=logits.device.type, enabled=False):
        z = F.interpolate(logits.to(dtype), size=labels.shape[-2:], mode="bilinear", align_corners=align_corners)
        zb = z + region_bias.to(dtype)[:, :, None, None]
        present = _present(labels, num_classes)  # [n, C]
        seg = main_w * _ce_labelled(z, labels, ignore_index)
        seg_bias = main_w * _ce_labelled(zb, labels, ignore_index)
        seg_bias_mask = main_w * _ce_labelled(zb * present.to(dtype)[:, :, None, None], labels, ignore_index)

        classes = torch.arange(num_classes, device=labels.device).expand(n, num_classes)
        soft_targets = torch.where(present, classes, torch.full_like(classes, num_classes))
        opts = dict(smooth=smooth, log_prior=log_prior, neg_w=neg_w, neg_w_precedence_bug=neg_w_precedence_bug)
        region = region_w * smoothed_region_ce(region_logits.to(dtype), soft_targets, **opts)
        gt_targets = gt_region_labels.long().clamp(0, num_classes)
        gt_region = region_w * smoothed_region_ce(gt_region_logits.to(dtype), gt_targets, **opts)
    parts = {"seg": seg, "seg_bias": seg_bias, "seg_bias_mask": seg_bias_mask, "region": region,
             "gt_region": gt_region}
    parts["total"] = seg + seg_bias + seg_bias_mask + region + gt_region
    return parts


class RegionRebalanceLoss(nn.Module):
    """:func:`region_rebalance_loss` with fixed hyper-parameters and the log prior as a buffer.

    ``class_counts``: image-level class counts (:func:`read_class_counts` /
    :func:`image_class_counts`); used only if ``prior`` is True.

    ``criterion(out, labels)`` with ``out`` holding ``'logits'`` (z, [n, C, h, w]) and the
    :data:`RR_OUTPUT_KEYS` of :class:`RegionBranch` (and optionally ``'padded_size'``: the
    labels are then padded with ``ignore_index`` to that size) returns ``(total, parts)``: the
    scalar L1+...+L5 and ``{'seg', 'seg_bias', 'seg_bias_mask', 'region', 'gt_region'}``
    detached.
    """

    def __init__(self, num_classes: int, *, class_counts: Optional[Sequence[float]] = None, main_w: float,
                 region_w: float, smooth: float, neg_w: float, prior: bool = True, ignore_index: int = 255,
                 neg_w_precedence_bug: bool = False, align_corners: bool = False):
        super().__init__()
        self.num_classes = int(num_classes)
        self.main_w, self.region_w, self.smooth, self.neg_w = main_w, region_w, smooth, neg_w
        self.ignore_index, self.neg_w_precedence_bug, self.align_corners = ignore_index, neg_w_precedence_bug, \
            align_corners
        self.prior = bool(prior)
        if self.prior:
            if class_counts is None:
                raise ValueError("prior=True needs class_counts (image-level counts of the training set)")
            if len(class_counts) != num_classes:
                raise ValueError(f"class_counts has {len(class_counts)} entries, num_classes is {num_classes}")
            self.register_buffer("log_prior", region_log_prior(class_counts), persistent=False)
        else:
            self.log_prior = None

    def forward(self, out: Mapping[str, Tensor], labels: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        missing = [k for k in ("logits",) + RR_OUTPUT_KEYS if k not in out]
        if missing:
            raise KeyError(f"RR criterion needs {missing} in the model outputs (RegionBranch called with labels)")
        labels = _labels_3d(labels)
        if "padded_size" in out:  # SegModel pads the image; the padding is unlabelled
            ph, pw = out["padded_size"]
            labels = F.pad(labels, (0, pw - labels.shape[-1], 0, ph - labels.shape[-2]), value=self.ignore_index)
        parts = region_rebalance_loss(
            out["logits"], labels, *(out[k] for k in RR_OUTPUT_KEYS),
            log_prior=self.log_prior, main_w=self.main_w, region_w=self.region_w, smooth=self.smooth,
            neg_w=self.neg_w, ignore_index=self.ignore_index, neg_w_precedence_bug=self.neg_w_precedence_bug,
            align_corners=self.align_corners,
        )
        total = parts.pop("total")
        return total, {k: v.detach() for k, v in parts.items()}


class RRSegmentationLoss(nn.Module):
    """The criterion of the ``rr`` segmentation method: RR's five terms
    (:class:`RegionRebalanceLoss`; L1 takes the place of the plain pixel CE and, like L2 and
    L3, averages over labelled pixels) + ``aux_weight`` x the aux head's CE (averaged over all
    pixels, as mmseg's auxiliary loss).

    ``criterion(out, labels, generator=None)`` -> ``(total, {'seg', 'seg_bias',
    'seg_bias_mask', 'region', 'gt_region', 'aux'} detached)``, with ``out`` a SegModel's
    train outputs (``logits``, ``padded_size``, ``aux`` and the :class:`RegionBranch` keys)
    and ``labels`` [B, H, W].
    """

    def __init__(self, num_classes: int, *, class_counts: Optional[Sequence[float]] = None, main_w: float = 1.0,
                 region_w: float = 1.0, smooth: float = 1.0, neg_w: float = 1.0, prior: bool = True,
                 neg_w_precedence_bug: bool = False, aux_weight: float = 0.4, ignore_index: int = 255):
        super().__init__()
        self.rr = RegionRebalanceLoss(num_classes, class_counts=class_counts, main_w=main_w, region_w=region_w,
                                      smooth=smooth, neg_w=neg_w, prior=prior, ignore_index=ignore_index,
                                      neg_w_precedence_bug=neg_w_precedence_bug)
        self.aux = SegmentationLoss(num_classes, paco=False, aux_weight=aux_weight, ignore_index=ignore_index)
        self.aux_weight, self.ignore_index = float(aux_weight), ignore_index

    def forward(self, out: Mapping[str, Tensor], labels: Tensor,
                generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        total, parts = self.rr(out, labels)
        if "aux" in out and self.aux_weight:
            aux = self.aux_weight * self.aux.pixel_ce(out["aux"], pad_labels(_labels_3d(labels), out["padded_size"],
                                                                              self.ignore_index))
            total, parts = total + aux, {**parts, "aux": aux.detach()}
        return total, parts
