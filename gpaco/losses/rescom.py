"""ResCom (Rebalanced Siamese Contrastive Mining): class-balanced queue, mining, loss.

One encoder sees two views of a batch (``N = 2B`` rows, labels ``[y, y]``). Per row
``i`` with L2-normalised projection ``f_i`` (maths in docs/method.md#rescom-loss):

* balanced-softmax CE on the classifier logits of all ``N`` rows:
  ``L_cls = mean_i CE(logits_i + log(pi + 1e-9), y_i)``;
* contrast similarities (:func:`rescom_mine`), all plain cosines ``<f_i, k>``:
  the ``N - 1`` other batch rows (positive iff same label, the row's other view
  included), then the ``P`` *least* similar keys of class ``y_i`` in the queue (all
  positive), then the ``N_neg`` *most* similar keys of the other classes (negative);
* ``L_con,i = -sum_j t_ij log softmax(s_i / T + b_i)_j / (sum_j t_ij + 1e-9)``, ``b = 0``
  unless the balanced contrast ``n`` is set: ``b_ij = n log(pi_{class of column j} + 1e-9)``;
* ``L_con = mean_i w_{y_i} L_con,i`` with effective-number weights
  ``w_c = mean_k(E_k) / E_c``, ``E_c = (1 - beta^{n_c}) / (1 - beta)``
  (:func:`effective_number_weights`; ``beta = 0`` gives ``w = 1``);
* ``L = L_cls + con_weight * L_con``.

After the loss, the *first view's* features (gathered from every process) go into the
queue (:class:`ClassBalancedQueue`): ``K`` slots per class, a ring buffer per class.

Virtual devices (``--device-batch``): features, logits and labels batched as [G, N, ...] are G
independent contrast sets (each row's batch columns are its own device's rows), all mined
against the one queue; every term is the mean over the devices of the device's term, which
DDP's gradient average over the original's G GPUs computes.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ce import cross_entropy
from .paco import compute_dtype, host_readable, log_prior_from_counts

__all__ = [
    "ClassBalancedQueue", "effective_number_weights", "rescom_mine", "rescom_contrastive_loss",
    "rescom_loss", "rescom_loss_terms", "ResComTerms", "ResComLoss",
]


class ResComTerms(NamedTuple):
    """The ResCom loss and its two parts (scalars)."""

    loss: Tensor  # cls + con_weight * con
    cls: Tensor  # balanced-softmax cross-entropy over both views
    con: Tensor  # class-weighted contrastive loss


def effective_number_weights(class_counts, beta: float) -> Tensor:
    """Per-class weights ``mean_k(E_k) / E_c`` with ``E_c = (1 - beta^{n_c}) / (1 - beta)``.

    Args:
        class_counts: [C] training images per class.
        beta: effective-number beta in [0, 1); 0 gives all ones (no re-weighting).
    Returns:
        [C] float32 (computed in float64, stored as float32 like the original's).
    """
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() == 0:
        raise ValueError(f"class_counts must be a non-empty 1-D list of counts, got shape {tuple(counts.shape)}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"effective-number beta must be in [0, 1), got {beta}")
    if beta == 0.0:
        return torch.ones(counts.numel(), dtype=torch.float32)
    if (counts <= 0).any():
        raise ValueError("effective-number weights need every class count > 0 (an empty class has weight 1/0)")
    effective = (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts)) / (1.0 - beta)
    return (effective.mean() / effective).float()


class ClassBalancedQueue(nn.Module):
    """Key queue with ``size_per_class`` slots per class and one write pointer per class.

    Buffers (saved in the state dict):
        keys: [C, K, D] unit-norm keys; class ``c`` owns ``keys[c]``. Starts as random
            unit vectors (``generator`` makes it reproducible).
        ptr: [C] long, the next slot of each class's ring buffer.
    """

    keys: Tensor
    ptr: Tensor

    def __init__(self, num_classes: int, size_per_class: int, dim: int, *,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        if num_classes < 1 or size_per_class < 1 or dim < 1:
            raise ValueError(f"num_classes, size_per_class and dim must be >= 1, got "
                             f"{num_classes}, {size_per_class}, {dim}")
        keys = torch.randn(num_classes, size_per_class, dim, generator=generator)
        self.register_buffer("keys", F.normalize(keys, dim=-1))
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long))

    @property
    def num_classes(self) -> int:
        return self.keys.shape[0]

    @property
    def size_per_class(self) -> int:
        return self.keys.shape[1]

    @torch.no_grad()
    def enqueue(self, features: Tensor, labels: Tensor) -> None:
        """Write ``features`` into their classes' ring buffers, one row after another.

        Args:
            features: [n, D] normalised keys; pass the rows of *all* processes
                (``gpaco.distributed.all_gather_nograd``) so that every rank's queue
                stays identical. ResCom enqueues the first view only.
            labels: [n] class of every row.

        Equivalent to writing the rows in order, each at its class's pointer and then
        advancing that pointer modulo ``K``: when a class has more than ``K`` rows in
        the batch, its last ``K`` rows are the ones that stay.
        """
        if features.ndim != 2 or features.shape[1] != self.keys.shape[2]:
            raise ValueError(f"features must be [n, {self.keys.shape[2]}], got shape {tuple(features.shape)}")
        if labels.shape != features.shape[:1]:
            raise ValueError(f"labels must be [n] = [{features.shape[0]}], got shape {tuple(labels.shape)}")
        n = labels.numel()
        if n == 0:
            return
        num_classes, k = self.keys.shape[:2]
        labels = labels.to(device=self.keys.device, dtype=torch.long)
        if host_readable(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"labels must be in [0, {num_classes}), got min {int(labels.min())}, "
                             f"max {int(labels.max())}")
        # rank of each row among the earlier rows of its class (stable sort keeps batch order)
        sorted_labels, order = torch.sort(labels, stable=True)
        first = torch.searchsorted(sorted_labels, sorted_labels)
        rank = torch.empty_like(labels)
        rank[order] = torch.arange(n, device=labels.device) - first
        # fixed-size tally: bincount (and boolean masks) would read the device to size their outputs
        count = torch.zeros(num_classes, dtype=torch.long, device=labels.device)
        count.index_add_(0, labels, torch.ones_like(labels))
        slot = (self.ptr[labels] + rank) % k
        # Every row writes the row that ends up in its slot: the class's last row of the same
        # rank modulo k. Duplicate writes then carry equal values, so the result is the
        # sequential one without selecting the kept rows.
        final = rank + (count[labels] - 1 - rank) // k * k
        start = torch.cumsum(count, 0) - count  # first sorted position of each class
        source = order[start[labels] + final]
        self.keys[labels, slot] = features[source].to(device=self.keys.device, dtype=self.keys.dtype)
        self.ptr.copy_((self.ptr + count) % k)

    def extra_repr(self) -> str:
        c, k, d = self.keys.shape
        return f"num_classes={c}, size_per_class={k}, dim={d}"


def _float32_log_prior(class_counts) -> Tensor:
    """``log(n_c / sum(n) + 1e-9)`` evaluated in float32 arithmetic, as the original does.

    Same formula as :func:`log_prior_from_counts` (which evaluates in float64 and rounds
    once), but it can differ from it by one float32 ulp; that ulp moves small gradient
    entries by ~1e-6 relative, visible at float64 tolerance.
    """
    log_prior_from_counts(class_counts)  # validation only
    counts = torch.as_tensor(class_counts, dtype=torch.float32)
    return torch.log(counts / counts.sum() + 1e-9)


def _queue_keys(queue: Union[Tensor, ClassBalancedQueue]) -> Tensor:
    return queue.keys if isinstance(queue, ClassBalancedQueue) else queue


def rescom_mine(
    features: Tensor,
    labels: Tensor,
    queue: Union[Tensor, ClassBalancedQueue],
    *,
    num_positives: int,
    num_negatives: int,
) -> tuple[Tensor, Tensor]:
    """Contrast similarities and 0/1 targets with hard positive / negative mining.

    Args:
        features: [N, D] L2-normalised projections of both views (N = 2B).
        labels: [N] their classes.
        queue: [C, K, D] keys (class ``c`` owns ``queue[c]``) or a :class:`ClassBalancedQueue`.
            A detached copy is used, so the queue may be updated before ``backward``.
        num_positives: P, hardest (least similar) same-class keys kept per row, <= K.
        num_negatives: N_neg, hardest (most similar) other-class keys kept, <= (C-1) K.
    Returns:
        sims: [N, N - 1 + P + N_neg] cosine similarities: the other batch rows in order
            (own column removed), the P positives (ascending), the N_neg negatives
            (descending). Gradients flow to ``features`` only.
        targets: [N, N - 1 + P + N_neg] 1 for same-label batch rows and for the P
            positives, 0 elsewhere (``features``' compute dtype).
    """
    sims, targets, _ = _mine(features, labels, queue, num_positives=num_positives, num_negatives=num_negatives)
    return sims, targets


def _mine(features: Tensor, labels: Tensor, queue: Union[Tensor, ClassBalancedQueue], *, num_positives: int,
          num_negatives: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`rescom_mine` plus the class of every column ([N, M] long)."""
    keys = _queue_keys(queue)
    if features.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {tuple(features.shape)}")
    n, dim = features.shape
    if labels.shape != (n,):
        raise ValueError(f"labels must be [N] = [{n}], got shape {tuple(labels.shape)}")
    if keys.ndim != 3 or keys.shape[2] != dim:
        raise ValueError(f"queue must be [C, K, D] with D = {dim} (the feature size), got shape {tuple(keys.shape)}")
    num_classes, k = keys.shape[:2]
    if not 0 <= num_positives <= k:
        raise ValueError(f"num_positives must be in 0..{k} (the queue's slots per class), got {num_positives}")
    if not 0 <= num_negatives <= (num_classes - 1) * k:
        raise ValueError(f"num_negatives must be in 0..{(num_classes - 1) * k} (the other classes' slots), "
                         f"got {num_negatives}")
    if n and host_readable(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}) (the queue's classes), got min "
                         f"{int(labels.min())}, max {int(labels.max())}")
    dtype = compute_dtype(features)
    with torch.autocast(device_type=features.device.type, enabled=False):
        f = features.to(dtype)
        labels = labels.to(f.device)
        snapshot = keys.detach().to(device=f.device, dtype=dtype).clone()  # [C, K, D]
        queue_sims = (f @ snapshot.reshape(num_classes * k, dim).T).view(n, num_classes, k)
        own = queue_sims[torch.arange(n, device=f.device), labels]  # [N, K]
        pos = -torch.topk(-own, num_positives, dim=-1).values  # least similar first
        own_class = F.one_hot(labels, num_classes).bool().unsqueeze(-1).expand(-1, -1, k)
        others = queue_sims.masked_fill(own_class, float("-inf")).reshape(n, num_classes * k)
        neg, neg_index = torch.topk(others, num_negatives, dim=-1)  # most similar first

        # column j of row i is batch row j + (j >= i): the own column dropped by a gather of
        # fixed shape (a boolean mask would read the device to size its result)
        cols = torch.arange(max(n - 1, 0), device=f.device).expand(n, -1)
        others_index = cols + (cols >= torch.arange(n, device=f.device)[:, None]).long()
        batch_sims = (f @ f.T).gather(1, others_index)
        batch_targets = (labels[:, None] == labels[None, :]).gather(1, others_index).to(dtype)
        sims = torch.cat([batch_sims, pos, neg], dim=1)
        targets = torch.cat([batch_targets, torch.ones_like(pos), torch.zeros_like(neg)], dim=1)
        # the class of every column: batch rows, then y_i for the positives, then each negative's queue class
        column_labels = torch.cat([labels.expand(n, n).gather(1, others_index),
                                   labels[:, None].expand(n, num_positives), neg_index // k], dim=1)
    return sims, targets, column_labels


def rescom_contrastive_loss(
    sims: Tensor,
    targets: Tensor,
    labels: Tensor,
    *,
    temperature: float,
    class_weight: Optional[Tensor] = None,
    column_bias: Optional[Tensor] = None,
) -> Tensor:
    """``mean_i w_{y_i} * (-sum_j t_ij log softmax(s_i / T + b_i)_j / (sum_j t_ij + 1e-9))``.

    Args:
        sims: [N, M] similarities, targets: [N, M] 0/1, from :func:`rescom_mine`.
        labels: [N] classes (select the weights).
        temperature: T.
        class_weight: [C] per-class weights (:func:`effective_number_weights`), or None = 1.
        column_bias: [N, M] added to ``s / T`` (the balanced contrast of :func:`rescom_loss_terms`), or None.
    Returns:
        Scalar in float32 (float64 for float64 inputs).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if sims.ndim != 2 or targets.shape != sims.shape:
        raise ValueError(f"sims and targets must both be [N, M], got {tuple(sims.shape)} and {tuple(targets.shape)}")
    if labels.shape != sims.shape[:1]:
        raise ValueError(f"labels must be [N] = [{sims.shape[0]}], got shape {tuple(labels.shape)}")
    dtype = compute_dtype(sims)
    with torch.autocast(device_type=sims.device.type, enabled=False):
        logits = sims.to(dtype) / temperature
        if column_bias is not None:
            logits = logits + column_bias.to(dtype)
        log_p = logits.log_softmax(-1)
        t = targets.to(dtype)
        per_row = -(t * log_p).sum(-1) / (t.sum(-1) + 1e-9)
        if class_weight is not None:
            per_row = class_weight.to(device=per_row.device, dtype=dtype)[labels.to(per_row.device)] * per_row
        return per_row.mean()


def rescom_loss_terms(
    features: Tensor,
    logits: Tensor,
    labels: Tensor,
    queue: Union[Tensor, ClassBalancedQueue],
    *,
    temperature: float,
    num_positives: int,
    num_negatives: int,
    log_prior: Optional[Tensor] = None,
    class_weight: Optional[Tensor] = None,
    con_weight: float = 1.0,
    balanced_contrast: float = 0.0,
) -> ResComTerms:
    """The ResCom loss with its parts. Does not update the queue.

    Args:
        features: [N, D] L2-normalised projections of both views (N = 2B, view 1 first), or
            [G, N, D]: G virtual devices, each its own contrast set (the terms are the mean
            over the devices).
        logits: [N, C] classifier logits of the same rows ([G, N, C]).
        labels: [N] classes (``[y, y]``; [G, N]).
        queue: [C, K, D] keys or a :class:`ClassBalancedQueue` (read, never written).
        temperature: T of the contrastive softmax (original default 0.1).
        num_positives, num_negatives: mining sizes P, N_neg (see :func:`rescom_mine`).
        log_prior: [C] ``log(pi + 1e-9)`` (:func:`log_prior_from_counts`) for the
            balanced softmax; None = plain CE.
        class_weight: [C] contrastive weights (:func:`effective_number_weights`) or None.
        con_weight: weight of the contrastive term.
        balanced_contrast: ``n`` of a balanced softmax on the contrast (the original's
            ``balsfx_n``): ``n * log_prior[class of column j]`` is added to ``s_ij / T``; 0 = off.
            Needs ``log_prior``.
    Returns:
        :class:`ResComTerms` of scalars in float32 (float64 for float64 inputs).
    """
    if features.ndim == 3:
        if logits.ndim != 3 or labels.ndim != 2 or not logits.shape[0] == features.shape[0] == labels.shape[0]:
            raise ValueError(f"grouped inputs must be features [G, N, D], logits [G, N, C] and labels [G, N]; got "
                             f"{tuple(features.shape)}, {tuple(logits.shape)} and {tuple(labels.shape)}")
        per_device = [rescom_loss_terms(f, z, y, queue, temperature=temperature, num_positives=num_positives,
                                        num_negatives=num_negatives, log_prior=log_prior, class_weight=class_weight,
                                        con_weight=con_weight, balanced_contrast=balanced_contrast)
                      for f, z, y in zip(features, logits, labels)]
        return ResComTerms(*(torch.stack(parts).mean() for parts in zip(*per_device)))
    if logits.ndim != 2 or logits.shape[0] != features.shape[0]:
        raise ValueError(f"logits must be [N, C] with N = {features.shape[0]} (one row per feature), "
                         f"got shape {tuple(logits.shape)}")
    num_classes = _queue_keys(queue).shape[0]
    if logits.shape[1] != num_classes:
        raise ValueError(f"logits have {logits.shape[1]} classes, the queue {num_classes}")
    sims, targets, column_labels = _mine(features, labels, queue, num_positives=num_positives,
                                         num_negatives=num_negatives)
    column_bias = None
    if balanced_contrast:
        if log_prior is None:
            raise ValueError("balanced_contrast needs log_prior (the class prior of the contrast columns)")
        column_bias = balanced_contrast * log_prior.to(column_labels.device)[column_labels]
    loss_con = rescom_contrastive_loss(sims, targets, labels, temperature=temperature, class_weight=class_weight,
                                       column_bias=column_bias)
    loss_cls = cross_entropy(logits, labels, log_prior=log_prior)
    return ResComTerms(loss_cls + con_weight * loss_con, loss_cls, loss_con)


def rescom_loss(*args, **kwargs) -> Tensor:
    """``L_cls + con_weight * L_con``; arguments as :func:`rescom_loss_terms`. Returns a scalar."""
    return rescom_loss_terms(*args, **kwargs).loss


class ResComLoss(nn.Module):
    """ResCom criterion: balanced softmax from the class counts + weighted mined contrast.

    ``forward(features, logits, labels, queue)`` returns the scalar loss; the caller then
    enqueues the first view (``queue.enqueue(all_gather(features[:B]), all_gather(labels[:B]))``).

    Args:
        class_counts: [C] training images per class (prior and effective-number weights).
        temperature: T (original default 0.1).
        num_positives, num_negatives: mining sizes P, N_neg.
        con_weight: weight of the contrastive term (original default 1).
        effective_num_beta: beta of the class weights; 0 (original default) = no weights.
        balanced_contrast: balanced softmax on the contrast columns (the original's ``balsfx_n``,
            which crashed there for any value but 0; see :func:`rescom_loss_terms`).
    """

    log_prior: Tensor
    class_weight: Tensor

    def __init__(self, class_counts, *, temperature: float, num_positives: int, num_negatives: int,
                 con_weight: float = 1.0, effective_num_beta: float = 0.0, balanced_contrast: float = 0.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.num_positives, self.num_negatives = int(num_positives), int(num_negatives)
        self.con_weight = float(con_weight)
        self.effective_num_beta = float(effective_num_beta)
        self.balanced_contrast = float(balanced_contrast)
        self.register_buffer("log_prior", _float32_log_prior(class_counts), persistent=False)
        self.register_buffer("class_weight", effective_number_weights(class_counts, effective_num_beta),
                             persistent=False)

    def terms(self, features: Tensor, logits: Tensor, labels: Tensor,
              queue: Union[Tensor, ClassBalancedQueue]) -> ResComTerms:
        """The loss and its cls / con parts, e.g. for logging."""
        return rescom_loss_terms(
            features, logits, labels, queue, temperature=self.temperature, num_positives=self.num_positives,
            num_negatives=self.num_negatives, log_prior=self.log_prior, class_weight=self.class_weight,
            con_weight=self.con_weight, balanced_contrast=self.balanced_contrast,
        )

    def forward(self, features: Tensor, logits: Tensor, labels: Tensor,
                queue: Union[Tensor, ClassBalancedQueue]) -> Tensor:
        """features [N, D], logits [N, C], labels [N] (or [G, N, ...] each: G virtual devices),
        queue [C, K, D] -> scalar loss."""
        return self.terms(features, logits, labels, queue).loss

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, num_positives={self.num_positives}, "
                f"num_negatives={self.num_negatives}, con_weight={self.con_weight}, "
                f"effective_num_beta={self.effective_num_beta}, balanced_contrast={self.balanced_contrast}")
