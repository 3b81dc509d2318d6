"""The training objective of each ``--method``, on top of gpaco.losses."""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from gpaco.losses import cross_entropy, log_prior_from_counts, multitask_loss, paco_loss


class Criterion(nn.Module):
    """Maps the model's training output (and the batch labels) to a scalar loss.

    ``ce`` / ``balanced_ce`` take classifier logits [B, C]; ``paco`` / ``gpaco`` /
    ``multitask`` take the ContrastiveOutput of the contrastive models.
    """

    def __init__(self, method: str, *, class_counts: Optional[Sequence[int]] = None, alpha: float = 0.05,
                 beta: float = 1.0, gamma: float = 1.0, temperature: float = 0.2, prior: bool = True,
                 smoothing: float = 0.0, label_smoothing: float = 0.0):
        super().__init__()
        self.method = method
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.temperature, self.smoothing, self.label_smoothing = temperature, smoothing, label_smoothing
        use_prior = method == "balanced_ce" or (method in ("paco", "gpaco", "multitask") and prior)
        if use_prior and class_counts is None:
            raise ValueError(f"--method {method} with the class prior needs the training class counts")
        self.register_buffer("log_prior", log_prior_from_counts(class_counts) if use_prior else None,
                             persistent=False)

    @classmethod
    def from_args(cls, args: argparse.Namespace, class_counts: Optional[Sequence[int]]) -> "Criterion":
        return cls(args.method, class_counts=class_counts, alpha=args.alpha, beta=args.beta, gamma=args.gamma,
                   temperature=args.temperature, prior=args.prior, smoothing=args.smoothing,
                   label_smoothing=args.label_smoothing)

    def forward(self, output, targets: Tensor) -> Tensor:
        if self.method in ("ce", "balanced_ce"):
            return cross_entropy(output, targets, log_prior=self.log_prior, label_smoothing=self.label_smoothing)
        if self.method == "multitask":
            return multitask_loss(output.features, output.labels, output.logits, output.num_anchors,
                                  alpha=self.alpha, temperature=self.temperature, log_prior=self.log_prior,
                                  label_smoothing=self.label_smoothing)
        return paco_loss(output.features, output.labels, output.logits, output.num_anchors,
                         alpha=self.alpha, temperature=self.temperature, beta=self.beta, gamma=self.gamma,
                         log_prior=self.log_prior, smoothing=self.smoothing)


def train_logits(output) -> Tensor:
    """Logits of the first view, for train-time accuracy (the original reports view 1)."""
    if isinstance(output, torch.Tensor):
        return output
    return output.logits
