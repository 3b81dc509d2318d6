"""Per-view BatchNorm: several views in one encoder pass, each normalised on its own.

GPaCo (SPEC §7.7) runs its two views through the encoder as two batches, so every
BatchNorm sees per-view statistics. :func:`per_view_batchnorm` gives the same arithmetic
with ONE pass over ``cat(views)``: inside it, every training-mode BatchNorm normalises
each of the ``views`` equal chunks of its batch separately and updates its running
statistics once per chunk, in order (view 1, then view 2), exactly as the two passes do.
The convolutions then run once at twice the batch, which is what makes one GPaCo step
cost about one CE step at twice the batch.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["per_view_batchnorm", "supports_one_pass"]


def supports_one_pass(module: nn.Module) -> bool:
    """False when a SyncBatchNorm is present: its statistics span processes, and splitting
    them per view would need one collective per view; such models keep separate passes."""
    return not any(isinstance(m, nn.SyncBatchNorm) for m in module.modules())


def _split_forward(bn: _BatchNorm, views: int):
    def forward(x: Tensor) -> Tensor:
        if not bn.training:
            return type(bn).forward(bn, x)
        if x.shape[0] % views:
            raise ValueError(f"{type(bn).__name__}: batch {x.shape[0]} does not split into {views} equal views")
        outs = []
        for chunk in x.chunk(views):
            momentum = 0.0 if bn.momentum is None else bn.momentum
            if bn.track_running_stats:
                bn.num_batches_tracked.add_(1)
                if bn.momentum is None:  # cumulative moving average, as _BatchNorm.forward
                    momentum = 1.0 / float(bn.num_batches_tracked)
            outs.append(F.batch_norm(chunk, bn.running_mean, bn.running_var, bn.weight, bn.bias, True,
                                     momentum, bn.eps))
        return torch.cat(outs)
    return forward


@contextmanager
def per_view_batchnorm(module: nn.Module, views: int = 2) -> Iterator[None]:
    """Within the block, BatchNorm layers under ``module`` normalise each of ``views`` equal
    batch chunks separately (training mode only; eval mode uses running statistics as always)."""
    bns = [m for m in module.modules() if isinstance(m, _BatchNorm)]
    for bn in bns:
        bn.forward = _split_forward(bn, views)
    try:
        yield
    finally:
        for bn in bns:
            del bn.forward  # back to the class's own forward
