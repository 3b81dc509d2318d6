"""RIDE-ResLT: the ResLT loss of every expert, summed (docs/method.md#ride-reslt).

Expert ``k`` has its own branch logits ``z_kb`` [B, C] and gets the plain ResLT loss
(:func:`gpaco.losses.reslt.reslt_loss_terms`: branch terms with ``+eps`` inside the log,
fused term on ``sum_b z_kb``) with the same branch membership as every other expert::

    L = sum_k [ beta * I_k + (1 - beta) * F_k ]

A *sum*, not a mean, as the original: each expert's own parameters get the gradient of one
ResLT model, the shared trunk the sum of the E experts'. No cross-expert term.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .criteria import ResLTCriterion
from .reslt import reslt_loss_terms

__all__ = ["RIDEResLTTerms", "ride_reslt_loss_terms", "RIDEResLTCriterion"]


class RIDEResLTTerms(NamedTuple):
    """The summed loss (scalar) and each expert's ResLT loss [E]."""

    loss: Tensor
    per_expert: Tensor


def ride_reslt_loss_terms(expert_logits: Tensor, target: Tensor, branch_masks: Tensor, *, beta: float,
                          eps: float = 1e-7, fused_eps: float = 0.0) -> RIDEResLTTerms:
    """The RIDE-ResLT loss.

    Args:
        expert_logits: [E, K, B, C] (or a sequence of E [K, B, C] / K-lists of [B, C]).
        target: [B] class indices.
        branch_masks: [K, C] membership, shared by the experts (:func:`~gpaco.losses.reslt.reslt_branch_masks`).
        beta, eps, fused_eps: as :func:`~gpaco.losses.reslt.reslt_loss_terms`.
    Returns:
        :class:`RIDEResLTTerms`.
    """
    if len(expert_logits) == 0:
        raise ValueError("expert_logits is empty: RIDE-ResLT needs at least one expert's branch logits")
    losses = [reslt_loss_terms(z, target, branch_masks, beta=beta, eps=eps, fused_eps=fused_eps).loss
              for z in expert_logits]
    per_expert = torch.stack(losses)
    return RIDEResLTTerms(per_expert.sum(), per_expert)


class RIDEResLTCriterion(ResLTCriterion):
    """RIDE-ResLT loss on a RIDE-ResLT model's training output (``expert_logits`` [E, K, B, C]).

    Branch ``k`` holds the ``branch_sizes[k-1]`` rarest classes of ``class_counts`` (None: the
    ImageNet-LT fractions, :func:`gpaco.losses.criteria.default_branch_sizes`).
    """

    def terms(self, output, targets: Tensor) -> RIDEResLTTerms:
        """The summed loss and each expert's, e.g. for logging."""
        loss = self.loss
        return ride_reslt_loss_terms(output.expert_logits, targets, loss.branch_masks, beta=loss.beta, eps=loss.eps,
                                     fused_eps=loss.fused_eps)

    def forward(self, output, targets: Tensor) -> Tensor:
        return self.terms(output, targets).loss
