"""Per-view BatchNorm: several views in one encoder pass, each normalised on its own.

GPaCo (docs/method.md#gpaco-model) runs its two views through the encoder as two batches, so every
BatchNorm sees per-view statistics. :func:`per_view_batchnorm` gives the same arithmetic
with ONE pass over ``cat(views)``: inside it, every training-mode BatchNorm normalises
each of the ``views`` equal chunks of its batch separately and updates its running
statistics once per chunk, in order (view 1, then view 2), exactly as the two passes do.
The convolutions then run once at twice the batch, which is what makes one GPaCo step
cost about one CE step at twice the batch.

On CPU in float32 the chunks are normalised straight into one output (and their input
gradients into one gradient) through aten's ``native_batch_norm.out`` and
``native_batch_norm_backward.out``; elsewhere (CUDA, bf16/fp16, float64) each chunk goes
through ``F.batch_norm`` and the outputs are concatenated. The ``cat`` of freshly
allocated activations cost ~4% of a ResNet-50 step on CPU (bench/train_step.py).
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


class _PerViewBatchNormFn(torch.autograd.Function):
    """Training-mode batch norm of each of ``views`` equal batch chunks, written straight into
    one output tensor (aten's ``native_batch_norm.out``; the input gradient likewise), so
    neither pass needs a ``cat``. Running buffers are updated in place once per chunk, in order."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momenta, eps, views):
        y = torch.empty_like(x)
        stats = x.new_empty((2, views, x.shape[1]))
        for i, (xi, yi) in enumerate(zip(x.chunk(views), y.chunk(views))):
            torch.ops.aten.native_batch_norm.out(xi, weight, bias, running_mean, running_var, True, momenta[i], eps,
                                                 out=yi, save_mean=stats[0, i], save_invstd=stats[1, i])
        ctx.save_for_backward(x, weight, stats)
        ctx.eps, ctx.views = eps, views
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, stats = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        # Each chunk's input gradient goes straight into its slice of grad_x (no cat).
        grad_x = torch.empty_like(x)
        gw, gb = x.new_empty(x.shape[1]), x.new_empty(x.shape[1])
        grad_w = torch.zeros_like(gw) if mask[1] else None
        grad_b = torch.zeros_like(gb) if mask[2] else None
        for i, (gyi, xi, gxi) in enumerate(zip(grad_y.chunk(ctx.views), x.chunk(ctx.views), grad_x.chunk(ctx.views))):
            torch.ops.aten.native_batch_norm_backward.out(gyi, xi, weight, None, None, stats[0, i], stats[1, i], True,
                                                          ctx.eps, [True, mask[1], mask[2]], out0=gxi, out1=gw,
                                                          out2=gb)
            if mask[1]:
                grad_w += gw
            if mask[2]:
                grad_b += gb
        grad_x = grad_x if mask[0] else None
        return grad_x, grad_w, grad_b, None, None, None, None, None


def _split_forward(bn: _BatchNorm, views: int):
    def forward(x: Tensor) -> Tensor:
        if not bn.training:
            return type(bn).forward(bn, x)
        if x.shape[0] % views:
            raise ValueError(f"{type(bn).__name__}: batch {x.shape[0]} does not split into {views} equal views")
        momenta = []
        for _ in range(views):
            momentum = 0.0 if bn.momentum is None else bn.momentum
            if bn.track_running_stats:
                bn.num_batches_tracked.add_(1)
                if bn.momentum is None:  # cumulative moving average, as _BatchNorm.forward
                    momentum = 1.0 / float(bn.num_batches_tracked)
            momenta.append(momentum)
        if x.device.type == "cpu" and x.dtype == torch.float32:
            return _PerViewBatchNormFn.apply(x, bn.weight, bn.bias, bn.running_mean, bn.running_var, momenta,
                                             bn.eps, views)
        return torch.cat([F.batch_norm(chunk, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, m, bn.eps)
                          for chunk, m in zip(x.chunk(views), momenta)])
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
