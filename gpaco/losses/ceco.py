"""CeCo (center collapse) regulariser for semantic segmentation, and its linear variant.

The maths is written out in docs/method.md#ceco-for-segmentation. A frozen, training-only branch on the
decoder output ``o`` [n, ch, h, w] with full-resolution labels ``y`` [n, H, W]:

1. ``u = BN(conv1x1(o))`` (ch -> ``reduce_channels``, no conv bias; BN normalises with
   the batch statistics in training), conceptually bilinearly upsampled
   (``align_corners=True``) to H x W;
2. for every class c present among the valid pixels (``y != ignore_index``) of the whole
   batch, in ascending order: ``mu_c`` = mean of up(u) over those pixels;
3. ``x_c = ReLU(Linear(mu_c))`` (``reduce_channels`` -> ``hidden_channels``);
   ``f_c = x_c / ||x_c||`` (variant ``ceco``) or ``f_c = x_c`` (variant ``cecol``);
4. ``s_c = scale * img_cls(dropout(f_c))`` with ``img_cls`` a Linear(hidden -> C): the
   rows of a simplex equiangular tight frame (ETF) with zero bias for ``ceco``, a default
   (random, frozen) Linear for ``cecol``;
5. ``L = -weight * (1/K) sum_c sum_j t_cj log softmax(s_c + log(pi + 1e-12))_j`` with the
   image-level class frequencies ``pi`` and targets ``t`` = ``smooth`` on c,
   ``(1 - smooth) / (C - 1)`` on each other class.

Every parameter of the branch is frozen; the gradient reaches only ``o``.

**Virtual devices** (``device_batch`` N, ``--device-batch``): the original computes the BN
statistics of step 1 and the class means of step 2 over each GPU's own batch, and DDP
averages the per-GPU losses. With N, the batch is cut into ``G = n / N`` consecutive groups
of N images ("virtual devices"): the BN normalises each group with its own statistics
(running statistics from group 0's, as the original's rank 0's, whose buffers the
checkpoint keeps), steps 2-4 run per group, and every term of the loss is the mean over
the groups of each group's own loss. G processes of N images and one process of G x N
images with ``device_batch=N`` then train the same (tests/test_ceco_device_batch.py).

Class means without the H x W maps: up(u) = A_h u A_w^T per channel (bilinear
upsampling is separable and linear), so
``sum_{p: y_p = c} up(u)(p) = sum_q (A_h^T M_c A_w)(q) u(q)`` with ``M_c`` the class mask.
:func:`class_centers` scatters each valid label pixel's (at most) 2 x 2 interpolation
weights into low-resolution per-class weight maps and contracts them with ``u``; the
result equals :func:`class_centers_full` (the literal upsample-then-average) to rounding.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .paco import host_readable
from .pixel import SegmentationLoss
from .rr import _labels_3d, class_frequencies

__all__ = [
    "CeCoBranch", "CeCoLoss", "CeCoSegmentationLoss", "ceco_loss", "class_centers", "class_centers_full", "simplex_etf",
    "ceco_log_prior", "CECO_VARIANTS", "CECO_OUTPUT_KEYS",
]

#: per-variant settings of the original recipes (Swin-T; the Swin-B ``ceco`` recipe uses weight 0.2).
CECO_VARIANTS: Dict[str, Dict[str, object]] = {
    "ceco": dict(etf=True, scale=5.0, smooth=1.0, weight=0.8),
    "cecol": dict(etf=False, scale=1.0, smooth=0.5, weight=1.0),
}

#: keys of :meth:`CeCoBranch.forward`'s dict that :class:`CeCoLoss` reads (and, when present,
#: ``center_groups`` / ``device_groups``: the virtual device of each row and their number).
CECO_OUTPUT_KEYS = ("center_logits", "center_labels")


def simplex_etf(num_classes: int, dim: int, *, generator: Optional[torch.Generator] = None,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """Rows of a random simplex ETF: [C, dim], unit rows, pairwise cosine ``-1/(C-1)``.

    ``O`` = C orthonormal columns of a Haar-random dim x dim orthogonal matrix (QR of a
    Gaussian matrix drawn from ``generator``, signs fixed by diag(R));
    ``M = sqrt(C/(C-1)) O (I - 11^T/C)``; the result is the rows of ``M^T``, each
    normalised to unit length (they already are, up to rounding). Computed in float64.
    """
    if num_classes < 2:
        raise ValueError(f"a simplex ETF needs num_classes >= 2, got {num_classes}")
    if dim < num_classes:
        raise ValueError(f"a simplex ETF of {num_classes} classes needs dim >= num_classes, got dim={dim}")
    a = torch.randn(dim, num_classes, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))
    c = num_classes
    center = torch.eye(c, dtype=torch.float64) - torch.full((c, c), 1.0 / c, dtype=torch.float64)
    m = math.sqrt(c / (c - 1)) * q @ center  # [dim, C]
    rows = m.T
    return (rows / rows.norm(dim=1, keepdim=True)).to(dtype)


def ceco_log_prior(counts: Sequence[float]) -> Tensor:
    """``log(pi + 1e-12)`` with ``pi = counts / sum(counts)``. [C] float64"""
    return torch.log(class_frequencies(counts) + 1e-12)


# --------------------------------------------------------------------------- class centers


def _interp_matrix(out_size: int, in_size: int, align_corners: bool, dtype: torch.dtype, device) -> Tensor:
    """[out, in]: 1-D bilinear interpolation as a matrix (PyTorch's own weights)."""
    eye = torch.eye(in_size, dtype=dtype, device=device)[None, None]
    return F.interpolate(eye, size=(out_size, in_size), mode="bilinear", align_corners=align_corners)[0, 0]


def _valid_classes(labels: Tensor, num_classes: Optional[int], ignore_index: int) -> Tuple[Tensor, Tensor, Tensor]:
    valid = labels != ignore_index
    # The classes present size every output (K centers), so the mask and unique below read the
    # device once per step by design; the range check reads only CPU labels (on a GPU a bad
    # label fails the loss's scatter instead).
    values = labels[valid]
    if values.numel() and host_readable(values) and (
            values.min() < 0 or (num_classes is not None and values.max() >= num_classes)):
        bad = values[(values < 0) | (values >= (num_classes if num_classes is not None else 1 << 62))]
        raise ValueError(f"labels must be in [0, {num_classes}) or ignore_index={ignore_index}; "
                         f"found {bad.unique().tolist()[:5]}")
    classes, counts = torch.unique(values, sorted=True, return_counts=True)
    return valid, classes, counts


def class_centers(features: Tensor, labels: Tensor, *, num_classes: Optional[int] = None, ignore_index: int = 255,
                  align_corners: bool = True) -> Tuple[Tensor, Tensor]:
    """Per-class means of the bilinearly upsampled features, without upsampling.

    Args:
        features: u [n, r, h, w] (low resolution).
        labels: [n, H, W] (or [n, 1, H, W]); the size the features are upsampled to.
        num_classes: if given, labels other than ``ignore_index`` must be in [0, C).
    Returns:
        (centers [K, r], classes [K]): the sorted classes present among the valid pixels
        of the whole batch and the mean of ``up(u)`` over each one's pixels, in float32
        (float64 for float64 features). K may be 0.
    """
    labels = _labels_3d(labels)
    n, r, h, w = features.shape
    if labels.shape[0] != n:
        raise ValueError(f"labels have {labels.shape[0]} images, features {n}")
    big_h, big_w = labels.shape[-2:]
    valid, classes, counts = _valid_classes(labels, num_classes, ignore_index)
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    k = classes.numel()
    if k == 0:  # still attached to the graph, so a batch without labels backpropagates zeros
        return features.to(dtype).flatten(2).mean(-1)[:0], classes
    dev = features.device
    with torch.autocast(device_type=dev.type, enabled=False):
        a_h = _interp_matrix(big_h, h, align_corners, dtype, dev)  # [H, h]
        a_w = _interp_matrix(big_w, w, align_corners, dtype, dev)  # [W, w]
        wh, ih = a_h.topk(min(2, h), dim=1)  # the (at most two) source rows of every output row
        ww, iw = a_w.topk(min(2, w), dim=1)
        img, row, col = valid.nonzero(as_tuple=True)
        slot = torch.searchsorted(classes, labels[img, row, col])
        base = (img * k + slot) * h  # [P]
        # [P, kh, kw] target cells in the flattened [n, K, h, w] weight maps and their weights
        index = ((base[:, None] + ih[row])[:, :, None] * w + iw[col][:, None, :]).reshape(-1)
        weight = (wh[row][:, :, None] * ww[col][:, None, :]).reshape(-1)
        maps = torch.zeros(n * k * h * w, dtype=dtype, device=dev).index_add_(0, index, weight)
        maps = maps.view(n, k, h * w)
        u = features.to(dtype).flatten(2)  # [n, r, hw]
        sums = torch.einsum("nkq,nrq->kr", maps, u)
    return sums / counts.to(dtype)[:, None], classes


def class_centers_full(features: Tensor, labels: Tensor, *, num_classes: Optional[int] = None,
                       ignore_index: int = 255, align_corners: bool = True) -> Tuple[Tensor, Tensor]:
    """:func:`class_centers` computed literally: upsample to H x W, then average per class.

    Needs n x r x H x W memory; kept as the reference the shortcut is tested against.
    """
    labels = _labels_3d(labels)
    valid, classes, counts = _valid_classes(labels, num_classes, ignore_index)
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    up = F.interpolate(features.to(dtype), size=labels.shape[-2:], mode="bilinear", align_corners=align_corners)
    pix = up.permute(0, 2, 3, 1)[valid]  # [P, r]
    slot = torch.searchsorted(classes, labels[valid])
    sums = pix.new_zeros(classes.numel(), pix.shape[1]).index_add_(0, slot, pix)
    return sums / counts.to(dtype)[:, None], classes


# --------------------------------------------------------------------------- branch and loss


class CeCoBranch(nn.Module):
    """The frozen CeCo branch: decoder features + labels -> logits of the class centers.

    ============  =========================================================================
    module        layers (all ``requires_grad=False``)
    ============  =========================================================================
    ``reduce``    Conv2d(ch -> reduce_channels, 1x1, no bias) + BatchNorm2d
    ``gain``      Linear(reduce_channels -> hidden_channels) + ReLU
    ``dropout``   element-wise Dropout(``dropout``)
    ``img_cls``   Linear(hidden_channels -> C), drawn once from
                  ``torch.Generator().manual_seed(etf_seed)``: ETF rows
                  (:func:`simplex_etf`) and zero bias for ``variant='ceco'``; nn.Linear's
                  default distribution, U(+-1/sqrt(hidden_channels)), for ``'cecol'``
    ============  =========================================================================

    ``branch(features, labels)`` (training only) takes ``features`` o [n, ch, h, w] (the
    decoder output) and full-resolution ``labels`` [n, H, W] covering the same area (pad
    with ``ignore_index`` where the image was padded) and returns:

    ==================  ==========  =====================================================
    key                 shape       meaning
    ==================  ==========  =====================================================
    ``center_logits``   [K, C]      s = scale * img_cls(f), one row per present class
                                    (per virtual device: group-major)
    ``center_labels``   [K] long    the present classes, ascending (within each group)
    ``center_groups``   [K] long    the virtual device of each row (all 0 without one)
    ``device_groups``   int         G, the number of virtual devices (1 without one)
    ``centers``         [K, r]      mu: class means of up(BN(conv(o)))
    ==================  ==========  =====================================================

    BN uses batch statistics in ``train()`` mode (as the original) and updates its
    running statistics. ``device_batch`` N: BN statistics and class means per group of N
    consecutive images (module docstring, "Virtual devices"); the batch must be a multiple
    of N.
    """

    def __init__(self, channels: int, num_classes: int, *, variant: str = "ceco", reduce_channels: int = 128,
                 hidden_channels: int = 512, scale: Optional[float] = None, dropout: float = 0.1,
                 etf_seed: int = 0, ignore_index: int = 255, align_corners: bool = True,
                 device_batch: Optional[int] = None):
        super().__init__()
        if variant not in CECO_VARIANTS:
            raise ValueError(f"CeCo variant must be one of {sorted(CECO_VARIANTS)}, got {variant!r}")
        self.variant, self.num_classes = variant, int(num_classes)
        self.normalize = bool(CECO_VARIANTS[variant]["etf"])
        self.scale = float(CECO_VARIANTS[variant]["scale"] if scale is None else scale)
        self.ignore_index, self.align_corners = ignore_index, align_corners
        if device_batch is not None and (isinstance(device_batch, bool) or int(device_batch) < 1):
            raise ValueError(f"--device-batch must be a positive number of images, got {device_batch!r}")
        self.device_batch = None if device_batch is None else int(device_batch)
        self.reduce = nn.Sequential(nn.Conv2d(channels, reduce_channels, 1, bias=False),
                                    nn.BatchNorm2d(reduce_channels))
        self.gain = nn.Sequential(nn.Linear(reduce_channels, hidden_channels), nn.ReLU())
        self.dropout = nn.Dropout(dropout)
        self.img_cls = nn.Linear(hidden_channels, num_classes)
        gen = torch.Generator().manual_seed(int(etf_seed))
        with torch.no_grad():
            if CECO_VARIANTS[variant]["etf"]:
                self.img_cls.weight.copy_(simplex_etf(num_classes, hidden_channels, generator=gen))
                self.img_cls.bias.zero_()
            else:  # nn.Linear's default distribution, U(+-1/sqrt(fan_in)), drawn from etf_seed
                bound = 1.0 / math.sqrt(hidden_channels)
                self.img_cls.weight.uniform_(-bound, bound, generator=gen)
                self.img_cls.bias.uniform_(-bound, bound, generator=gen)
        self.requires_grad_(False)

    def device_groups(self, batch: int) -> int:
        """G: the virtual devices of ``device_batch`` images in a batch (1 without one)."""
        if self.device_batch is None:
            return 1
        if batch % self.device_batch:
            raise ValueError(f"--device-batch {self.device_batch} must divide the per-process batch {batch}")
        return batch // self.device_batch

    def _reduce(self, features: Tensor, groups: int) -> Tensor:
        """u = BN(conv(o)), BN statistics per group; group 0 alone updates the running ones."""
        conv, bn = self.reduce
        x = conv(features)
        if groups == 1 or not bn.training:
            return bn(x)
        first, *rest = x.chunk(groups)
        return torch.cat([bn(first), *(F.batch_norm(c, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
                                       for c in rest)])

    def forward(self, features: Tensor, labels: Tensor) -> Dict[str, Tensor]:
        groups = self.device_groups(features.shape[0])
        u = self._reduce(features, groups)
        labels = _labels_3d(labels)
        parts = [class_centers(u_g, y_g, num_classes=self.num_classes, ignore_index=self.ignore_index,
                               align_corners=self.align_corners)
                 for u_g, y_g in zip(u.chunk(groups), labels.chunk(groups))]
        centers = torch.cat([c for c, _ in parts]) if groups > 1 else parts[0][0]
        classes = torch.cat([k for _, k in parts]) if groups > 1 else parts[0][1]
        group_of_row = torch.cat([torch.full((k.numel(),), g, dtype=torch.long, device=k.device)
                                  for g, (_, k) in enumerate(parts)])  # sizes known on the host: no device read
        x = self.gain(centers.to(self.img_cls.weight.dtype))
        if self.normalize:
            x = F.normalize(x, dim=1)
        logits = self.scale * self.img_cls(self.dropout(x))
        return {"center_logits": logits, "center_labels": classes, "center_groups": group_of_row,
                "device_groups": groups, "centers": centers}


def ceco_loss(center_logits: Tensor, center_labels: Tensor, *, log_prior: Optional[Tensor], smooth: float,
              weight: float = 1.0, center_groups: Optional[Tensor] = None, device_groups: int = 1) -> Tensor:
    """Logit-adjusted, label-smoothed CE over the class centers, times ``weight``.

    Args:
        center_logits: [K, C] (already multiplied by ``scale``).
        center_labels: [K] classes in [0, C).
        log_prior: [C] (:func:`ceco_log_prior`) added to the logits, or None.
        smooth: mass on the true class; ``(1 - smooth) / (C - 1)`` on each other class.
        center_groups: [K] the virtual device of each row in [0, ``device_groups``), or None
            (one device).
    Returns:
        Scalar: ``weight`` x the mean over the K rows (0, still attached to the graph, if
        K = 0); with ``device_groups`` G > 1, the mean over the G devices of each one's mean
        over its rows (a device without rows counts 0, as a GPU whose loss is 0 in DDP's
        average); float64 for float64 logits, else float32.
    """
    if center_logits.ndim != 2 or center_labels.shape != center_logits.shape[:1]:
        raise ValueError(f"expected center_logits [K, C] and center_labels [K], got {tuple(center_logits.shape)} "
                         f"and {tuple(center_labels.shape)}")
    if device_groups > 1 and (center_groups is None or center_groups.shape != center_labels.shape):
        raise ValueError(f"{device_groups} device groups need center_groups [K], got "
                         f"{None if center_groups is None else tuple(center_groups.shape)}")
    k, num_classes = center_logits.shape
    dtype = torch.float64 if center_logits.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=center_logits.device.type, enabled=False):
        logits = center_logits.to(dtype)
        if k == 0:
            return logits.sum() * 0.0
        if log_prior is not None:
            if log_prior.shape != (num_classes,):
                raise ValueError(f"log_prior must be [{num_classes}], got {tuple(log_prior.shape)}")
            logits = logits + log_prior.to(device=logits.device, dtype=dtype)
        logp = logits.log_softmax(dim=-1)
        t = torch.full_like(logp, (1.0 - smooth) / max(num_classes - 1, 1))
        t.scatter_(1, center_labels.long()[:, None], smooth)
        rows = (t * logp).sum(-1)
        if device_groups <= 1:
            return -weight * rows.mean()
        groups = center_groups.long()
        per_group = rows.new_zeros(device_groups).index_add_(0, groups, torch.ones_like(rows))  # K_g, no device read
        return -weight * (rows / per_group[groups]).sum() / device_groups


class CeCoLoss(nn.Module):
    """:func:`ceco_loss` with fixed ``weight``/``smooth`` and the log prior (from image-level
    class counts) as a buffer. ``criterion(out)`` reads :data:`CECO_OUTPUT_KEYS` from the
    branch's output dict and returns the scalar loss."""

    def __init__(self, num_classes: int, *, class_counts: Sequence[float], weight: float, smooth: float):
        super().__init__()
        if len(class_counts) != num_classes:
            raise ValueError(f"class_counts has {len(class_counts)} entries, num_classes is {num_classes}")
        self.num_classes, self.weight, self.smooth = int(num_classes), float(weight), float(smooth)
        self.register_buffer("log_prior", ceco_log_prior(class_counts), persistent=False)

    def forward(self, out: Mapping[str, Tensor]) -> Tensor:
        missing = [k for k in CECO_OUTPUT_KEYS if k not in out]
        if missing:
            raise KeyError(f"CeCo criterion needs {missing} in the model outputs (CeCoBranch called with labels)")
        return ceco_loss(out["center_logits"], out["center_labels"], log_prior=self.log_prior, smooth=self.smooth,
                         weight=self.weight, center_groups=out.get("center_groups"),
                         device_groups=int(out.get("device_groups", 1)))


class CeCoSegmentationLoss(nn.Module):
    """The criterion of the ``ceco`` / ``cecol`` segmentation methods: pixel CE + ``aux_weight``
    x aux CE (:class:`~gpaco.losses.pixel.SegmentationLoss`, mmseg's averaging over all pixels
    unless ``ce_avg_non_ignore``) + the CeCo loss (:class:`CeCoLoss`) on the class centers of
    the model's :class:`CeCoBranch`.

    ``weight`` / ``smooth`` default to the ``variant``'s (:data:`CECO_VARIANTS`: the original
    Swin-T configurations; the Swin-B ``ceco`` one uses ``weight=0.2``). ``class_counts``: the
    image-level counts of the training set (how many images contain each class).

    ``criterion(out, labels, generator=None)`` -> ``(total, {'ce', 'aux', 'ceco'} detached)``,
    with ``out`` a SegModel's train outputs (``logits``, ``padded_size``, ``aux``,
    ``center_logits``, ``center_labels``, ``center_groups``, ``device_groups``) and
    ``labels`` [B, H, W]. With G > 1 virtual devices (``--device-batch``) every term is the
    mean over the devices of each device's own term.
    """

    def __init__(self, num_classes: int, *, class_counts: Sequence[float], variant: str = "ceco",
                 weight: Optional[float] = None, smooth: Optional[float] = None, aux_weight: float = 0.4,
                 ce_avg_non_ignore: bool = False, ignore_index: int = 255):
        super().__init__()
        if variant not in CECO_VARIANTS:
            raise ValueError(f"CeCo variant must be one of {sorted(CECO_VARIANTS)}, got {variant!r}")
        if class_counts is None:
            raise ValueError("CeCo needs class_counts: the image-level class counts of the training set")
        settings = CECO_VARIANTS[variant]
        self.variant = variant
        self.seg = SegmentationLoss(num_classes, paco=False, aux_weight=aux_weight, ignore_index=ignore_index,
                                    ce_avg_non_ignore=ce_avg_non_ignore)
        self.ceco = CeCoLoss(num_classes, class_counts=class_counts,
                             weight=float(settings["weight"] if weight is None else weight),
                             smooth=float(settings["smooth"] if smooth is None else smooth))

    def forward(self, out: Mapping[str, Tensor], labels: Tensor,
                generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        groups = int(out.get("device_groups", 1))
        if groups > 1:
            # Per virtual device, then averaged, as DDP averages the per-GPU losses (equal to
            # the whole batch's CE when it averages over all pixels of equal-size crops; not with
            # ``ce_avg_non_ignore``, whose denominators differ per device).
            pixel = {k: out[k] for k in ("logits", "aux") if k in out}
            size = labels.shape[0] // groups
            per_device = [self.seg({"padded_size": out["padded_size"],
                                    **{k: v[g * size:(g + 1) * size] for k, v in pixel.items()}},
                                   labels[g * size:(g + 1) * size]) for g in range(groups)]
            total = sum(t for t, _ in per_device) / groups
            parts = {k: sum(p[k] for _, p in per_device) / groups for k in per_device[0][1]}
        else:
            total, parts = self.seg(out, labels)
        center = self.ceco(out)
        return total + center, {**parts, "ceco": center.detach()}
