"""Distillation losses of the Decoupled-KL family: IKL, GKL, the KL-KD baseline, and the
two adversarial-training objectives built on them.

Decoupling KL. For one sample with teacher logits ``t``, student logits ``s`` and
``w_jk = p_j p_k`` (``p = softmax(t)``), KL(p || softmax(s)) has the same gradients as

* a weighted MSE over the pairwise logit gaps, ``1/4 sum_jk w_jk (dt_jk - sg(ds_jk))^2``
  with ``dx_jk = x_j - x_k`` (it is what trains the teacher side), plus
* a soft-label cross-entropy ``-sum_j sg(p_j) log softmax(s)_j`` (the student side).

In distillation the teacher is frozen, so the first half of KL never trains anything.

* **IKL** (NeurIPS 2024) lets the wMSE train the student (no stop-gradient on ``ds``).
  It weights the two halves separately: ``beta`` on the wMSE, ``alpha`` on the soft CE.
  Its weights come either from class-wise statistics (``class_prior``, see
  :class:`ClassStats`) or from ``softmax(t / t2)``. The wMSE is averaged over the batch.
* **GKL** (TPAMI 2026) also raises the weights to a power ``gamma``. It divides the
  wMSE by the sum of all pair weights instead of by the batch size.
* The soft CE of both is taken at temperature ``T`` on both sides, with **no** ``T^2``
  factor. The KL-KD baseline (:func:`kl_kd_loss`) has one.

Closed form: O(B*C) memory instead of B*C*C. Per row, with ``a = t - s``,
``Q = sum_j q_j`` and ``w_jk = q_j q_k``, the gap difference is
``dt_jk - ds_jk = a_j - a_k``. Expanding the square:

    1/4 sum_jk q_j q_k (a_j - a_k)^2
        = 1/4 [2 Q sum_j q_j a_j^2 - 2 (sum_j q_j a_j)^2]
        = 1/2 [Q sum_j q_j a_j^2 - (sum_j q_j a_j)^2]
        = 1/2 Q sum_j q_j (a_j - m)^2,   where m = sum_j q_j a_j / Q.

The last step holds because the middle line does not change when a constant is added
to every ``a_j``, so ``a`` may be shifted by ``m``. This is ``Q^2 / 2`` times the
``q``-weighted variance of ``a``. The centred form is what is computed: it avoids the
cancellation between the two large terms of the middle line when the logits share a
large offset. The identity holds for every ``q``, so autograd gives the same gradients
as the pairwise sum, also with respect to ``q`` when the weights carry gradient (GI off
with a teacher that requires grad). The whole batch's pair-weight sum is
``sum_b Q_b^2`` (GKL's normaliser). :func:`pairwise_gap_mse` is the brute-force
reference; the tests compare the two.

What comes from the released code, and what is guarded:

* With GI off the weights ``softmax(t / t2) ** gamma`` keep their gradient, as released.
  This matters only if the teacher logits require grad, which no KD recipe does.
  Only the soft-CE target is detached. Adversarial training relies on this: the natural
  logits play the teacher and train through the wMSE, since neither gap is detached.
* ``gamma = 0`` makes every weight 1 (``0 ** 0 = 1``), so the normaliser is ``B C^2``.
* No epsilon is added anywhere. The only guard is for the degenerate all-zero weights,
  which cannot occur with softmax rows: there the loss term is 0 instead of 0/0.
* :class:`ClassStats` keeps a class's previous row when the class had no sample in an
  epoch. The released code divides 0 by 0 there and then gives NaN losses. The rule is
  otherwise the released one.

Shapes: logits [B, C]; ``class_prior`` [B, C] (the class matrix's rows picked by the
labels, ``ClassStats.rows(target)``); class matrix [C, C]; target [B].
Computed in float32, or float64 for float64 inputs, also under autocast.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .paco import compute_dtype, host_readable

__all__ = [
    "gap_mse_rows", "pairwise_gap_mse", "soft_label_cross_entropy", "ikl_loss", "gkl_loss", "kl_kd_loss",
    "ikl_at_loss", "gkl_at_loss", "IKLLoss", "GKLLoss", "KLKDLoss", "IKLATLoss", "GKLATLoss",
    "class_stats_update", "class_stats_normalise", "ClassStats",
]


# --------------------------------------------------------------------------- checks

def _check_logits(student: Tensor, teacher: Tensor, who: str, names=("student", "teacher")) -> None:
    if student.ndim != 2 or teacher.shape != student.shape:
        raise ValueError(f"{who}: {names[0]} and {names[1]} logits must both be [B, C], got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")


def _check_positive(who: str, **values: float) -> None:
    for name, v in values.items():
        if not v > 0:
            raise ValueError(f"{who}: {name} must be > 0, got {v}")


def _check_gamma(who: str, gamma: float) -> None:
    if not gamma >= 0:
        raise ValueError(f"{who}: gamma must be >= 0, got {gamma}")


def _check_prior(class_prior: Tensor, student: Tensor, who: str) -> None:
    if class_prior.shape != student.shape:
        raise ValueError(f"{who}: class_prior must be [B, C] like the logits (the class matrix's rows picked by "
                         f"the labels), got {tuple(class_prior.shape)} for logits {tuple(student.shape)}")


def _class_rows(class_matrix: Tensor, target: Tensor, num_classes: int, who: str) -> Tensor:
    """``class_matrix[target]``: the [B, C] weights of a batch, taken without gradient."""
    if class_matrix.shape != (num_classes, num_classes):
        raise ValueError(f"{who}: class_matrix must be [C, C] with C = {num_classes} (the logits' classes), "
                         f"got {tuple(class_matrix.shape)}")
    if target.ndim != 1:
        raise ValueError(f"{who}: target must be [B] class indices, got shape {tuple(target.shape)}")
    if target.numel() and host_readable(target) and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f"{who}: target must be in [0, {num_classes}), got min {int(target.min())}, "
                         f"max {int(target.max())}")
    return class_matrix.detach()[target]


# --------------------------------------------------------------------------- building blocks

def gap_mse_rows(teacher: Tensor, student: Tensor, weights: Tensor) -> Tensor:
    """Per-sample ``1/4 sum_jk q_j q_k (dt_jk - ds_jk)^2``, in closed form.

    Computed as ``1/2 Q sum_j q_j (a_j - m)^2`` with ``a = t - s``, ``Q = sum_j q_j`` and
    ``m = sum_j q_j a_j / Q`` (derivation in the module docstring). Nothing is detached
    here: detach the inputs to stop their gradient.

    Args:
        teacher, student: [B, C] logits.
        weights: [B, C] per-class weights ``q >= 0``; the pair weight is ``q_j q_k``.
    Returns:
        [B], in the dtype of the inputs (float32 or float64).
    """
    a = teacher - student
    Q = weights.sum(dim=1, keepdim=True)
    # an all-zero weight row contributes 0; the clamp only turns its 0/0 into 0/tiny
    m = (weights * a).sum(dim=1, keepdim=True) / Q.clamp_min(torch.finfo(Q.dtype).tiny)
    return 0.5 * Q.squeeze(1) * (weights * (a - m).square()).sum(dim=1)


def pairwise_gap_mse(teacher: Tensor, student: Tensor, weights: Tensor) -> Tensor:
    """The brute-force [B, C, C] form of :func:`gap_mse_rows`, for tests and benchmarks only:
    it needs B * C^2 memory (1 GB per tensor at B 256, C 1000 in float32). [B]"""
    dt = teacher.unsqueeze(2) - teacher.unsqueeze(1)
    ds = student.unsqueeze(2) - student.unsqueeze(1)
    w = weights.unsqueeze(2) * weights.unsqueeze(1)
    return 0.25 * (w * (dt - ds).square()).sum(dim=(1, 2))


def soft_label_cross_entropy(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """``-mean_b sum_j sg(softmax(t_b / T))_j log softmax(s_b / T)_j`` (no ``T^2`` factor). Scalar."""
    target = F.softmax(teacher.detach() / temperature, dim=1)
    return -(target * F.log_softmax(student / temperature, dim=1)).sum(dim=1).mean()


def _dkl_family(student, teacher, *, temperature, alpha, beta, gamma, class_prior, t2, by_weight_sum, who):
    _check_logits(student, teacher, who)
    _check_positive(who, temperature=temperature, t2=t2)
    _check_gamma(who, gamma)
    if class_prior is not None:
        _check_prior(class_prior, student, who)
    dtype = compute_dtype(student, teacher)
    with torch.autocast(device_type=student.device.type, enabled=False):
        s, t = student.to(dtype), teacher.to(dtype)
        if class_prior is not None:  # class-wise statistics: constants
            q = class_prior.detach().to(device=s.device, dtype=dtype)
        else:  # the sample's own teacher prediction, gradient kept as released
            q = F.softmax(t / t2, dim=1)
        if gamma != 1.0:
            q = q.pow(gamma)
        rows = gap_mse_rows(t, s, q)
        if by_weight_sum:
            norm = q.sum(dim=1).square().sum()
            mse = rows.sum() / norm.clamp_min(torch.finfo(dtype).tiny)
        else:
            mse = rows.mean()
        return beta * mse + alpha * soft_label_cross_entropy(s, t, temperature)


# --------------------------------------------------------------------------- the losses

def ikl_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    temperature: float = 1.0,
    alpha: float = 1.0,
    beta: float = 1.0,
    class_prior: Optional[Tensor] = None,
    t2: float = 100.0,
) -> Tensor:
    """IKL: ``beta * wMSE + alpha * softCE``, the wMSE averaged over the batch. Scalar.

    Args:
        student, teacher: [B, C] logits. The student trains through both terms; the teacher
            would train through the wMSE, and its soft-CE target is detached.
        temperature: ``T`` of the soft CE (both sides); the wMSE is on raw logits.
        class_prior: [B, C] class-wise statistics rows for the batch (GI on): weights
            ``q = class_prior``, taken without gradient. None (GI off): ``q = softmax(t / t2)``.
        t2: temperature of the GI-off weights (100, the released default, makes them nearly
            uniform, so the wMSE is about half the variance over classes of ``t - s``).
    """
    return _dkl_family(student, teacher, temperature=temperature, alpha=alpha, beta=beta, gamma=1.0,
                       class_prior=class_prior, t2=t2, by_weight_sum=False, who="ikl_loss")


def gkl_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    temperature: float = 1.0,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 1.0,
    class_prior: Optional[Tensor] = None,
    t2: float = 1.0,
) -> Tensor:
    """GKL: IKL with the weights raised to ``gamma`` and the wMSE divided by the sum of all
    pair weights, ``sum_b (sum_j q_bj)^2``, instead of by B. Scalar.

    Arguments as :func:`ikl_loss`. ``q = class_prior ** gamma`` (GI on) or
    ``softmax(t / t2) ** gamma`` (GI off). ``gamma = 0`` gives all-one weights.
    """
    return _dkl_family(student, teacher, temperature=temperature, alpha=alpha, beta=beta, gamma=gamma,
                       class_prior=class_prior, t2=t2, by_weight_sum=True, who="gkl_loss")


def kl_kd_loss(student: Tensor, teacher: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Classic KD: ``T^2 * mean_b KL(softmax(t_b / T) || softmax(s_b / T))``. Scalar.

    The teacher is not detached (it is frozen in every recipe).
    """
    _check_logits(student, teacher, "kl_kd_loss")
    _check_positive("kl_kd_loss", temperature=temperature)
    dtype = compute_dtype(student, teacher)
    with torch.autocast(device_type=student.device.type, enabled=False):
        log_p_s = F.log_softmax(student.to(dtype) / temperature, dim=1)
        log_p_t = F.log_softmax(teacher.to(dtype) / temperature, dim=1)
        kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(dim=1).mean()
        return temperature ** 2 * kl


def ikl_at_loss(
    natural: Tensor,
    adversarial: Tensor,
    class_matrix: Tensor,
    target: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
) -> Tensor:
    """IKL-AT: :func:`ikl_loss` with the natural logits as teacher and the adversarial ones as
    student, ``T = 1``, and weights ``class_matrix[target]``. Scalar.

    Both logits train through the wMSE; only the soft-CE target ``softmax(natural)`` is
    detached. ``class_matrix`` [C, C]: the previous epoch's class matrix, taken without
    gradient. ``target`` [B]: the labels.
    """
    _check_logits(adversarial, natural, "ikl_at_loss", names=("adversarial", "natural"))
    rows = _class_rows(class_matrix, target, natural.shape[1], "ikl_at_loss")
    return ikl_loss(adversarial, natural, temperature=1.0, alpha=alpha, beta=beta, class_prior=rows)


def gkl_at_loss(
    natural: Tensor,
    adversarial: Tensor,
    class_matrix: Tensor,
    target: Tensor,
    *,
    temperature: float = 1.0,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 1.0,
) -> Tensor:
    """GKL-AT: :func:`gkl_loss` with the natural logits as teacher, the adversarial ones as
    student, and weights ``class_matrix[target] ** gamma``. Scalar.

    The released scripts never pass their ``T`` here, so the recipes' temperature is 1.
    Gradients as :func:`ikl_at_loss`.
    """
    _check_logits(adversarial, natural, "gkl_at_loss", names=("adversarial", "natural"))
    rows = _class_rows(class_matrix, target, natural.shape[1], "gkl_at_loss")
    return gkl_loss(adversarial, natural, temperature=temperature, alpha=alpha, beta=beta, gamma=gamma,
                    class_prior=rows)


# --------------------------------------------------------------------------- criteria

class IKLLoss(nn.Module):
    """:func:`ikl_loss` with its hyperparameters: ``criterion(student, teacher, class_prior=None)``."""

    def __init__(self, *, temperature: float = 1.0, alpha: float = 1.0, beta: float = 1.0, t2: float = 100.0) -> None:
        super().__init__()
        _check_positive("IKLLoss", temperature=temperature, t2=t2)
        self.temperature, self.alpha, self.beta, self.t2 = temperature, alpha, beta, t2

    def forward(self, student: Tensor, teacher: Tensor, class_prior: Optional[Tensor] = None) -> Tensor:
        return ikl_loss(student, teacher, temperature=self.temperature, alpha=self.alpha, beta=self.beta,
                        class_prior=class_prior, t2=self.t2)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}, beta={self.beta}, t2={self.t2}"


class GKLLoss(nn.Module):
    """:func:`gkl_loss` with its hyperparameters: ``criterion(student, teacher, class_prior=None)``."""

    def __init__(self, *, temperature: float = 1.0, alpha: float = 1.0, beta: float = 1.0, gamma: float = 1.0,
                 t2: float = 1.0) -> None:
        super().__init__()
        _check_positive("GKLLoss", temperature=temperature, t2=t2)
        _check_gamma("GKLLoss", gamma)
        self.temperature, self.alpha, self.beta, self.gamma, self.t2 = temperature, alpha, beta, gamma, t2

    def forward(self, student: Tensor, teacher: Tensor, class_prior: Optional[Tensor] = None) -> Tensor:
        return gkl_loss(student, teacher, temperature=self.temperature, alpha=self.alpha, beta=self.beta,
                        gamma=self.gamma, class_prior=class_prior, t2=self.t2)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, "
                f"t2={self.t2}")


class KLKDLoss(nn.Module):
    """:func:`kl_kd_loss`: ``criterion(student, teacher)``."""

    def __init__(self, *, temperature: float = 1.0) -> None:
        super().__init__()
        _check_positive("KLKDLoss", temperature=temperature)
        self.temperature = temperature

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        return kl_kd_loss(student, teacher, temperature=self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class IKLATLoss(nn.Module):
    """:func:`ikl_at_loss`: ``criterion(natural, adversarial, class_matrix, target)``."""

    def __init__(self, *, alpha: float = 1.0, beta: float = 1.0) -> None:
        super().__init__()
        self.alpha, self.beta = alpha, beta

    def forward(self, natural: Tensor, adversarial: Tensor, class_matrix: Tensor, target: Tensor) -> Tensor:
        return ikl_at_loss(natural, adversarial, class_matrix, target, alpha=self.alpha, beta=self.beta)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}"


class GKLATLoss(nn.Module):
    """:func:`gkl_at_loss`: ``criterion(natural, adversarial, class_matrix, target)``."""

    def __init__(self, *, temperature: float = 1.0, alpha: float = 1.0, beta: float = 1.0,
                 gamma: float = 1.0) -> None:
        super().__init__()
        _check_positive("GKLATLoss", temperature=temperature)
        _check_gamma("GKLATLoss", gamma)
        self.temperature, self.alpha, self.beta, self.gamma = temperature, alpha, beta, gamma

    def forward(self, natural: Tensor, adversarial: Tensor, class_matrix: Tensor, target: Tensor) -> Tensor:
        return gkl_at_loss(natural, adversarial, class_matrix, target, temperature=self.temperature,
                           alpha=self.alpha, beta=self.beta, gamma=self.gamma)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}"


# --------------------------------------------------------------------------- class-wise statistics

def class_stats_update(accumulator: Tensor, target: Tensor, probs: Tensor) -> Tensor:
    """``accumulator += onehot(target)^T @ probs`` in place, without gradient.

    A one-hot matmul rather than ``index_add_``: it sums in a fixed order on every device,
    so the statistics repeat bit for bit. [C, C]
    """
    C = accumulator.shape[0]
    if accumulator.shape != (C, C) or probs.ndim != 2 or probs.shape[1] != C or target.shape != probs.shape[:1]:
        raise ValueError(f"class statistics: accumulator [C, C], target [B] and probs [B, C] expected, got "
                         f"{tuple(accumulator.shape)}, {tuple(target.shape)} and {tuple(probs.shape)}")
    with torch.no_grad():
        onehot = F.one_hot(target, C).to(accumulator.dtype)
        accumulator.add_(onehot.T @ probs.detach().to(accumulator.dtype))
    return accumulator


def class_stats_normalise(accumulator: Tensor, previous: Tensor, momentum: float = 1.0) -> Tensor:
    """The next epoch's class matrix: ``momentum * rownorm(accumulator) + (1 - momentum) * previous``.

    A class with no sample (a zero row) keeps its ``previous`` row; the released code
    divides 0 by 0 there, which makes that class's losses NaN for an epoch. [C, C]
    """
    with torch.no_grad():
        total = accumulator.sum(dim=1, keepdim=True)
        seen = total > 0
        fresh = accumulator / torch.where(seen, total, torch.ones_like(total))
        fresh = torch.where(seen, fresh, previous.to(fresh.dtype))
        return fresh * momentum + previous.to(fresh.dtype) * (1.0 - momentum)


class ClassStats(nn.Module):
    """The class-wise global information of IKL / GKL: a [C, C] matrix whose row ``c`` is
    the mean predicted distribution of class ``c``'s training samples over the previous
    epoch (uniform ``1/C`` before the first epoch ends).

    Per batch, :meth:`rows` gives the loss its ``class_prior`` (``matrix[target]``, [B, C])
    and :meth:`update` accumulates the batch's probabilities: ``softmax(teacher / t2)`` in
    KD, ``softmax(natural.detach() / T)`` in adversarial training. :meth:`end_epoch`
    all-reduces the accumulator over the ranks (statistics are global), row-normalises it
    and blends it in with ``momentum`` (1 in every recipe). Both buffers are persistent,
    so the statistics survive a resume; the released code restarts them at ``1/C``.

    Keep it outside a DistributedDataParallel-wrapped model (or wrap with
    ``broadcast_buffers=False``): DDP would otherwise overwrite every rank's accumulator
    with rank 0's at each forward.
    """

    def __init__(self, num_classes: int, *, momentum: float = 1.0, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"ClassStats: num_classes must be >= 1, got {num_classes}")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"ClassStats: momentum must be in (0, 1], got {momentum}")
        self.momentum = momentum
        self.register_buffer("matrix", torch.full((num_classes, num_classes), 1.0 / num_classes, dtype=dtype))
        self.register_buffer("accumulator", torch.zeros(num_classes, num_classes, dtype=dtype))

    def rows(self, target: Tensor) -> Tensor:
        """``matrix[target]``: the [B, C] ``class_prior`` of a batch (no gradient)."""
        return self.matrix[target]

    def update(self, target: Tensor, probs: Tensor) -> None:
        """Add a batch: ``target`` [B] labels, ``probs`` [B, C] predicted distributions."""
        class_stats_update(self.accumulator, target, probs)

    def end_epoch(self) -> Tensor:
        """Sum the accumulator over ranks, turn it into the next matrix, reset it. [C, C]"""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.accumulator)
        self.matrix.copy_(class_stats_normalise(self.accumulator, self.matrix, self.momentum))
        self.accumulator.zero_()
        return self.matrix

    def extra_repr(self) -> str:
        return f"num_classes={self.matrix.shape[0]}, momentum={self.momentum}"
