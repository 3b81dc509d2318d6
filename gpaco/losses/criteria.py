"""The training objectives as ``nn.Module`` criteria: ``criterion(model_output, targets) -> loss``.

A method of the registry (:mod:`gpaco.methods`) pairs one of these with its model. Each
criterion holds its hyperparameters and the log class prior (a non-persistent buffer, so
it follows ``.to(device)``); the maths is in the functional losses of this package
(docs/method.md).

==========================  =====================================  =====================
criterion                   model output                           used by
==========================  =====================================  =====================
:class:`CrossEntropyLoss`   logits [B, C]                          ce, balanced_ce
:class:`PaCoLoss`           ContrastiveOutput (features, labels,   paco, gpaco
                            logits, num_anchors)
:class:`MultiTaskLoss`      ContrastiveOutput                      multitask
:class:`ResLTCriterion`     ResLTOutput (branch_logits [K, B, C])  reslt
:class:`MixupCrossEntropy`  MixupOutput (logits, labels_a,         mislas (stage 1)
                            labels_b, lam) or logits [B, C]
:class:`LASCriterion`       logits [B, C]                          mislas_stage2
:class:`ResComCriterion`    ResComOutput (features, logits,        rescom
                            labels [y, y], keys)
==========================  =====================================  =====================
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn

from .ce import cross_entropy
from .paco import host_readable, log_prior_from_counts, paco_loss
from .mislas import LabelAwareSmoothingLoss
from .reslt import ResLTLoss
from .rescom import ResComLoss
from .supcon import multitask_loss

__all__ = ["CrossEntropyLoss", "PaCoLoss", "MultiTaskLoss", "ResLTCriterion", "MixupCrossEntropy", "LASCriterion",
           "ResComCriterion",
           "log_prior_buffer", "default_branch_sizes"]


def log_prior_buffer(module: nn.Module, class_counts: Optional[Sequence[int]], use_prior: bool, who: str,
                     num_classes: Optional[int] = None) -> None:
    """Register ``module.log_prior`` (log of the training class frequencies, or None)."""
    if use_prior and class_counts is None:
        raise ValueError(f"{who} with the class prior needs the training class counts")
    if use_prior and num_classes is not None and len(class_counts) != num_classes:
        raise ValueError(f"{who}: {len(class_counts)} class counts for {num_classes} classes")
    module.register_buffer("log_prior", log_prior_from_counts(class_counts) if use_prior else None,
                           persistent=False)


class CrossEntropyLoss(nn.Module):
    """CE on classifier logits; with ``prior=True`` the balanced softmax / logit-adjusted CE
    (docs/method.md#balanced-cross-entropy). Soft [B, C] targets (mixup) are accepted."""

    def __init__(self, *, num_classes: Optional[int] = None, class_counts: Optional[Sequence[int]] = None,
                 prior: bool = False, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        log_prior_buffer(self, class_counts, prior, "balanced cross-entropy", num_classes)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return cross_entropy(logits, targets, log_prior=self.log_prior, label_smoothing=self.label_smoothing)


class PaCoLoss(nn.Module):
    """PaCo / GPaCo loss on a contrastive model's training output
    (docs/method.md#paco-loss, docs/method.md#gpaco-loss)."""

    def __init__(self, *, num_classes: Optional[int] = None, class_counts: Optional[Sequence[int]] = None,
                 prior: bool = True, alpha: float = 0.05, beta: float = 1.0, gamma: float = 1.0,
                 temperature: float = 0.2, smoothing: float = 0.0) -> None:
        super().__init__()
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.temperature, self.smoothing = temperature, smoothing
        log_prior_buffer(self, class_counts, prior, "the PaCo loss", num_classes)

    def forward(self, output, targets: Optional[Tensor] = None) -> Tensor:
        """``targets`` [B] (optional): the labels the model was given; the loss reads the
        labels in ``output`` (the queue's come with them) and refuses targets that differ."""
        check_targets(output, targets, "PaCoLoss")
        return paco_loss(output.features, output.labels, output.logits, output.num_anchors, alpha=self.alpha,
                         temperature=self.temperature, beta=self.beta, gamma=self.gamma,
                         log_prior=self.log_prior, smoothing=self.smoothing)


class MultiTaskLoss(nn.Module):
    """The multi-task baseline: CE on the logits + alpha x SupCon on the features
    (docs/method.md#multi-task-baseline)."""

    def __init__(self, *, num_classes: Optional[int] = None, class_counts: Optional[Sequence[int]] = None,
                 prior: bool = True, alpha: float = 0.05, temperature: float = 0.2,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.alpha, self.temperature, self.label_smoothing = alpha, temperature, label_smoothing
        log_prior_buffer(self, class_counts, prior, "the multi-task loss", num_classes)

    def forward(self, output, targets: Optional[Tensor] = None) -> Tensor:
        check_targets(output, targets, "MultiTaskLoss")
        return multitask_loss(output.features, output.labels, output.logits, output.num_anchors, alpha=self.alpha,
                              temperature=self.temperature, log_prior=self.log_prior,
                              label_smoothing=self.label_smoothing)


def default_branch_sizes(num_classes: int) -> tuple:
    """ResLT's M and T branch sizes as the ImageNet-LT script's fractions of the classes
    (825 and 220 of 1000), at least one class each."""
    return max(1, round(0.825 * num_classes)), max(1, round(0.22 * num_classes))


class ResLTCriterion(nn.Module):
    """ResLT loss on a ResLT model's training output (docs/method.md#reslt-loss).

    Branch ``k`` holds the ``branch_sizes[k-1]`` rarest classes of ``class_counts``
    (:func:`gpaco.losses.reslt.reslt_branch_masks`); None = :func:`default_branch_sizes`.
    """

    def __init__(self, *, num_classes: Optional[int] = None, class_counts: Optional[Sequence[int]] = None,
                 beta: float = 0.99, branch_sizes: Optional[Sequence[int]] = None, fused_eps: float = 0.0) -> None:
        super().__init__()
        if class_counts is None:
            raise ValueError("the ResLT loss needs the training class counts (its branches hold the rarest classes)")
        if num_classes is not None and len(class_counts) != num_classes:
            raise ValueError(f"the ResLT loss: {len(class_counts)} class counts for {num_classes} classes")
        sizes = tuple(branch_sizes) if branch_sizes is not None else default_branch_sizes(len(class_counts))
        self.loss = ResLTLoss(class_counts, sizes, beta=beta, fused_eps=fused_eps)

    @property
    def branch_masks(self) -> Tensor:
        return self.loss.branch_masks

    def forward(self, output, targets: Tensor) -> Tensor:
        return self.loss(output.branch_logits, targets)


class ResComCriterion(nn.Module):
    """ResCom loss on a ResCom model's training output (docs/method.md#rescom-loss): balanced
    softmax on both views + the mined contrast against the queue snapshot the output carries."""

    def __init__(self, *, num_classes: Optional[int] = None, class_counts: Optional[Sequence[int]] = None,
                 temperature: float = 0.1, num_positives: int = 1, num_negatives: int = 1, con_weight: float = 1.0,
                 effective_num_beta: float = 0.0, balanced_contrast: float = 0.0,
                 queue_per_class: Optional[int] = None) -> None:
        super().__init__()
        if class_counts is None:
            raise ValueError("the ResCom loss needs the training class counts (balanced softmax)")
        if num_classes is not None and len(class_counts) != num_classes:
            raise ValueError(f"the ResCom loss: {len(class_counts)} class counts for {num_classes} classes")
        if queue_per_class is not None and num_negatives > (len(class_counts) - 1) * queue_per_class:
            raise ValueError(f"--rescom-negatives {num_negatives} exceeds the other classes' queue slots "
                             f"({len(class_counts) - 1} x {queue_per_class})")
        self.loss = ResComLoss(class_counts, temperature=temperature, num_positives=num_positives,
                               num_negatives=num_negatives, con_weight=con_weight,
                               effective_num_beta=effective_num_beta, balanced_contrast=balanced_contrast)

    def forward(self, output, targets: Tensor) -> Tensor:
        return self.loss(output.features, output.logits, output.labels, output.keys)


class MixupOutput(NamedTuple):
    """MiSLAS stage 1's training output: logits of the mixed batch ``lam * x + (1 - lam) * x[perm]``."""

    logits: Tensor  # [B, C] of the mixed images
    labels_a: Tensor  # [B] the batch's labels
    labels_b: Tensor  # [B] the partners' labels (labels[perm])
    lam: float


class MixupCrossEntropy(nn.Module):
    """MiSLAS stage 1: ``lam * CE(logits, labels_a) + (1 - lam) * CE(logits, labels_b)`` on a
    :class:`MixupOutput` (plain CE on a logits tensor)."""

    def __init__(self, *, num_classes: Optional[int] = None, class_counts: Optional[Sequence[int]] = None) -> None:
        super().__init__()

    def forward(self, output, targets: Tensor) -> Tensor:
        if isinstance(output, Tensor):
            return cross_entropy(output, targets)
        return (output.lam * cross_entropy(output.logits, output.labels_a)
                + (1.0 - output.lam) * cross_entropy(output.logits, output.labels_b))


class LASCriterion(LabelAwareSmoothingLoss):
    """MiSLAS stage 2: label-aware smoothing from the training counts
    (docs/method.md#mislas-label-aware-smoothing); ``criterion(logits, targets)``."""

    def __init__(self, *, num_classes: Optional[int] = None, class_counts: Optional[Sequence[int]] = None,
                 head: float = 0.3, tail: float = 0.0, shape: str = "concave", power: Optional[float] = None) -> None:
        if class_counts is None or (num_classes is not None and len(class_counts) != num_classes):
            raise ValueError(f"label-aware smoothing needs the {num_classes or ''} training class counts")
        super().__init__(class_counts, head=head, tail=tail, shape=shape, power=power)


def output_labels(output, batch: int) -> Tensor:
    """The first view's labels [batch] of a contrastive training output (``output.labels``
    is cat(views' labels, queue labels), or grouped [G, M] with each group's first
    ``batch / G`` entries from the first view), as :func:`output_logits` for the logits."""
    labels = output.labels
    if labels.ndim == 2:
        return labels[:, :batch // labels.shape[0]].reshape(batch)
    return labels[:batch]


def check_targets(output, targets: Optional[Tensor], loss: str) -> None:
    """A contrastive loss takes its labels from the model's output; ``targets`` passed to it
    must be those labels. The shape is always checked; the values where reading them back
    stalls nothing (CPU, eager), so a GPU step has no host sync."""
    if targets is None:
        return
    groups = output.labels.shape[0] if output.labels.ndim == 2 else 1
    if targets.ndim != 1 or targets.shape[0] * 2 > output.labels.numel() or targets.shape[0] % groups:
        raise ValueError(f"{loss}: targets have shape {tuple(targets.shape)}, expected [B], the labels given to "
                         f"the model")
    if host_readable(targets) and not torch.equal(output_labels(output, targets.shape[0]), targets.long()):
        raise ValueError(f"{loss}: targets differ from the labels the model was given (output.labels); the loss "
                         f"uses the model's labels, so pass the same labels to both")


def output_logits(output, batch: int) -> Tensor:
    """The first view's classifier logits [batch, C] of a model's training output (a tensor,
    or the contrastive tuple, whose logits may be grouped [G, n_g, C] with each group's first
    ``batch / G`` rows from the first view)."""
    logits = output if isinstance(output, torch.Tensor) else output.logits
    if logits.ndim == 3:
        return logits[:, :batch // logits.shape[0]].reshape(batch, logits.shape[-1])
    return logits[:batch]
