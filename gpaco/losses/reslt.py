"""ResLT (residual learning for long-tailed recognition, TPAMI 2022): the training loss.

The model splits its final feature into ``K`` parameter groups that share one
classifier: branch 0 ("H") learns every class, branch 1 ("M") only the medium and tail
classes, branch 2 ("T") only the tail classes (iNaturalist uses H and M only). The
prediction is the sum of the branch logits. The loss (maths in docs/method.md#reslt-loss):

* per branch ``b`` and sample ``i``: ``l_b(i) = -log(softmax(z_b)_{i, y_i} + eps)``,
  ``eps = 1e-7`` as in the original (this is *not* ``log_softmax``: the ``eps`` shifts
  the value by about ``eps / p``, more than float64 tolerance for unlikely classes);
* individual term ``I = sum_b sum_i m_b(y_i) l_b(i) / sum_b sum_i m_b(y_i)``, where
  ``m_b(c)`` is 1 iff class ``c`` belongs to branch ``b`` (``m_H = 1``): one mean over
  every (sample, branch) pair that trains;
* fused term ``F = mean_i CE(sum_b z_b)_i`` (plain cross-entropy; the ImageNet-LT script
  adds the same ``1e-7`` inside the log, ``fused_eps=1e-7``);
* ``loss = beta * I + (1 - beta) * F``; no detach, no schedule on ``beta``.

Branch membership comes from the training counts (:func:`reslt_branch_masks`): branch
``k`` holds the ``branch_sizes[k-1]`` rarest classes. The original slices a class order
hard-coded per data set (ImageNet-LT: 825 / 220 rarest, iNaturalist: 6600, CIFAR-10-LT:
classes 2-9 / 4-9, CIFAR-100-LT: 35-99 / 70-99); here the order is a stable sort by
``(count, index)``, so ties at the cut are resolved the same way every run.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .paco import compute_dtype, host_readable

__all__ = ["reslt_branch_masks", "reslt_loss", "reslt_loss_terms", "ResLTTerms", "ResLTLoss"]

BranchLogits = Union[Tensor, Sequence[Tensor]]


class ResLTTerms(NamedTuple):
    """The ResLT loss and its two parts (scalars)."""

    loss: Tensor  # beta * individual + (1 - beta) * fused
    individual: Tensor  # I: mean per-branch loss over the (sample, branch) pairs that train
    fused: Tensor  # F: cross-entropy of the summed logits


def reslt_branch_masks(class_counts, branch_sizes: Sequence[int]) -> Tensor:
    """Class membership of the ResLT branches from the training counts.

    Args:
        class_counts: [C] training images per class (any order; need not be sorted).
        branch_sizes: number of classes of each restricted branch, outermost first and
            non-increasing, e.g. ``(825, 220)`` for ImageNet-LT (M, T), ``(6600,)`` for
            iNaturalist (M only), ``(8, 6)`` for CIFAR-10-LT, ``(65, 30)`` for CIFAR-100-LT.
    Returns:
        [1 + len(branch_sizes), C] bool. Row 0 (the head branch) is all True; row ``k``
        marks the ``branch_sizes[k-1]`` rarest classes, where "rarer" is a stable
        ascending sort of the counts (equal counts: the lower class index comes first).
        The rows are nested: every row contains the next.
    """
    counts = torch.as_tensor(class_counts)
    if counts.ndim != 1 or counts.numel() == 0:
        raise ValueError(f"class_counts must be a non-empty 1-D list of counts, got shape {tuple(counts.shape)}")
    if counts.is_floating_point():
        if not torch.equal(counts, counts.round()):
            raise ValueError("class_counts must be whole numbers of images")
    if (counts < 0).any():
        raise ValueError("class_counts must be non-negative")
    num_classes = counts.numel()
    sizes = [int(s) for s in branch_sizes]
    for s in sizes:
        if not 1 <= s <= num_classes:
            raise ValueError(f"every branch size must be in 1..{num_classes} (the number of classes), got {sizes}")
    if any(a < b for a, b in zip(sizes, sizes[1:])):
        raise ValueError(f"branch_sizes must be non-increasing (each branch inside the previous one), got {sizes}")
    order = torch.sort(counts.to(torch.float64), stable=True).indices  # rarest first; ties by class index
    masks = torch.zeros(1 + len(sizes), num_classes, dtype=torch.bool)
    masks[0] = True
    for k, s in enumerate(sizes, start=1):
        masks[k, order[:s]] = True
    return masks


def _check_inputs(branch_logits: BranchLogits, target: Tensor, branch_masks: Tensor) -> list:
    logits = list(branch_logits)
    if not logits:
        raise ValueError("branch_logits is empty: ResLT needs at least the head branch's logits")
    shape = logits[0].shape
    if len(shape) != 2:
        raise ValueError(f"each branch's logits must be [B, C], got shape {tuple(shape)}")
    for k, z in enumerate(logits):
        if z.shape != shape:
            raise ValueError(f"all branches' logits must have one shape: branch 0 {tuple(shape)}, "
                             f"branch {k} {tuple(z.shape)}")
    b, c = shape
    if target.shape != (b,):
        raise ValueError(f"target must be [B] = [{b}] class indices, got shape {tuple(target.shape)}")
    if target.is_floating_point():
        raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
    # CPU only: on a GPU the read would stall the step; the gathers fail on a bad label instead
    if b and host_readable(target) and (target.min() < 0 or target.max() >= c):
        raise ValueError(f"target must be class indices in [0, {c}), got min {int(target.min())}, "
                         f"max {int(target.max())}")
    if branch_masks.shape != (len(logits), c):
        raise ValueError(f"branch_masks must be [K, C] = [{len(logits)}, {c}] (one row per branch), "
                         f"got shape {tuple(branch_masks.shape)}")
    return logits


def reslt_loss_terms(
    branch_logits: BranchLogits,
    target: Tensor,
    branch_masks: Tensor,
    *,
    beta: float,
    eps: float = 1e-7,
    fused_eps: float = 0.0,
) -> ResLTTerms:
    """The ResLT loss with its individual and fused parts.

    Args:
        branch_logits: K tensors [B, C] (or one [K, B, C] tensor): the logits of the
            head, medium(+tail) and tail branches, in the order of ``branch_masks``' rows.
        target: [B] class indices.
        branch_masks: [K, C] bool (or 0/1) membership, e.g. :func:`reslt_branch_masks`.
        beta: weight of the individual term (recipes: 0.72 .. 0.998).
        eps: added to the true-class probability inside the log of the branch terms.
        fused_eps: the same for the fused term; 0 = plain cross-entropy (CIFAR,
            iNaturalist), 1e-7 = the ImageNet-LT script.
    Returns:
        :class:`ResLTTerms` of scalars in float32 (float64 for float64 inputs).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if eps < 0 or fused_eps < 0:
        raise ValueError(f"eps and fused_eps must be >= 0, got {eps}, {fused_eps}")
    logits = _check_inputs(branch_logits, target, branch_masks)
    dtype = compute_dtype(*logits)
    with torch.autocast(device_type=logits[0].device.type, enabled=False):
        z = torch.stack([t.to(dtype) for t in logits])  # [K, B, C]
        idx = target.to(z.device).view(1, -1, 1).expand(z.shape[0], -1, 1)
        if eps > 0:
            p_true = z.softmax(-1).gather(-1, idx).squeeze(-1)  # [K, B]
            nll = -torch.log(p_true + eps)
        else:
            nll = -z.log_softmax(-1).gather(-1, idx).squeeze(-1)
        member = branch_masks.to(device=z.device, dtype=dtype)[:, target.to(z.device)]  # [K, B]
        individual = (nll * member).sum() / member.sum()
        fused_logits = z.sum(0)
        if fused_eps > 0:
            p_fused = fused_logits.softmax(-1).gather(-1, target.to(z.device).unsqueeze(-1)).squeeze(-1)
            fused = -torch.log(p_fused + fused_eps).mean()
        else:
            fused = F.cross_entropy(fused_logits, target.to(z.device))
        loss = beta * individual + (1.0 - beta) * fused
    return ResLTTerms(loss, individual, fused)


def reslt_loss(*args, **kwargs) -> Tensor:
    """``beta * I + (1 - beta) * F``; arguments as :func:`reslt_loss_terms`. Returns a scalar."""
    return reslt_loss_terms(*args, **kwargs).loss


class ResLTLoss(nn.Module):
    """ResLT criterion with the branch membership fixed from the training counts.

    ``ResLTLoss(counts, (825, 220), beta=0.99)`` builds the ImageNet-LT head / medium /
    tail branches; ``forward(branch_logits, target)`` returns the scalar loss. Use
    :meth:`from_masks` for a membership given explicitly.

    Args:
        class_counts: [C] training images per class.
        branch_sizes: classes per restricted branch, see :func:`reslt_branch_masks`.
        beta, eps, fused_eps: see :func:`reslt_loss_terms`.
    """

    branch_masks: Tensor

    def __init__(self, class_counts, branch_sizes: Sequence[int], *, beta: float, eps: float = 1e-7,
                 fused_eps: float = 0.0) -> None:
        super().__init__()
        self._setup(reslt_branch_masks(class_counts, branch_sizes), beta=beta, eps=eps, fused_eps=fused_eps)

    def _setup(self, masks: Tensor, *, beta: float, eps: float, fused_eps: float) -> None:
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.beta, self.eps, self.fused_eps = float(beta), float(eps), float(fused_eps)
        self.register_buffer("branch_masks", masks, persistent=False)

    @classmethod
    def from_masks(cls, branch_masks: Tensor, *, beta: float, eps: float = 1e-7,
                   fused_eps: float = 0.0) -> "ResLTLoss":
        """Criterion from an explicit [K, C] membership (row 0 normally all True)."""
        masks = torch.as_tensor(branch_masks)
        if masks.ndim != 2 or masks.shape[0] == 0:
            raise ValueError(f"branch_masks must be [K, C] with K >= 1, got shape {tuple(masks.shape)}")
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._setup(masks.bool(), beta=beta, eps=eps, fused_eps=fused_eps)
        return self

    def terms(self, branch_logits: BranchLogits, target: Tensor) -> ResLTTerms:
        """The loss and its individual / fused parts, e.g. for logging."""
        return reslt_loss_terms(branch_logits, target, self.branch_masks, beta=self.beta, eps=self.eps,
                                fused_eps=self.fused_eps)

    def forward(self, branch_logits: BranchLogits, target: Tensor) -> Tensor:
        """branch_logits: K x [B, C] (or [K, B, C]); target: [B]. Returns the scalar loss."""
        return self.terms(branch_logits, target).loss

    def extra_repr(self) -> str:
        sizes = self.branch_masks.sum(1).tolist()
        return f"branch_sizes={sizes}, beta={self.beta}, eps={self.eps}, fused_eps={self.fused_eps}"
