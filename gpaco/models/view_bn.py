"""Per-chunk BatchNorm: several views and virtual devices in one encoder pass.

Two things make one BatchNorm call stand for several in the original code:

* **views**: GPaCo (docs/method.md#gpaco-model) runs its two views through the encoder as
  two batches, so every BatchNorm sees per-view statistics;
* **groups** (``--device-batch``): the original ran on several GPUs, each normalising its
  own per-GPU batch; a run on fewer GPUs splits each process's batch into ``groups``
  virtual devices of that size (docs/recipes.md#same-statistics-on-any-gpu-count);
* **BatchNorm-only groups** (``--bn-device-batch``): the original ran DataParallel, whose
  replicas normalise their own slice of the batch while everything after the forward (the
  loss, mixup drawn before it) sees the whole batch; :func:`set_bn_device_batch` sets the
  group size on every BatchNorm of a built model and nothing else changes.

The models convert their BatchNorms once at build (:func:`convert_view_batchnorm`) into
:class:`ViewBatchNorm2d` (1d, 3d), plain BatchNorm subclasses with ``views`` and
``device_batch`` attributes, so no step patches a module and ``torch.compile`` traces the
two-view pass as one graph. In training mode each such layer cuts its batch into
``views x groups`` equal chunks (``groups = batch / (views x device_batch)``), view-major,

==========  =================================================================
batch rows  ``[view 0: group 0 .. group G-1 | view 1: group 0 .. group G-1]``
chunk i     view ``i // G``, group ``i % G``; N = batch / (views x G) rows each
==========  =================================================================

normalises each chunk with its own batch statistics and updates the running statistics
with group 0's chunks only, view 0 first: what the original's rank 0 does, and DDP
broadcasts rank 0's buffers to every process at each forward, so rank 0's are the run's
(DataParallel likewise keeps replica 0's).
With ``groups=1`` every chunk updates them (the two views of one GPaCo step, in order).

On CPU in float32 the chunks are normalised straight into one output (and their input
gradients into one gradient) through aten's ``native_batch_norm.out`` and
``native_batch_norm_backward.out``; elsewhere (CUDA, bf16/fp16, float64) each chunk goes
through ``F.batch_norm`` and the outputs are concatenated. The ``cat`` of freshly
allocated activations cost ~4% of a ResNet-50 step on CPU (bench/train_step.py).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["ViewBatchNorm1d", "ViewBatchNorm2d", "ViewBatchNorm3d", "convert_view_batchnorm", "set_bn_device_batch",
           "group_count", "batchnorm_views", "per_group_batchnorm", "supports_one_pass", "has_batchnorm"]


def supports_one_pass(module: nn.Module, views: int = 2) -> bool:
    """True when every BatchNorm under ``module`` is a per-chunk one set for ``views`` views.
    False after SyncBatchNorm conversion (its statistics span processes, and splitting them
    per view would need one collective per view) or with other BatchNorm subclasses: such
    models keep separate passes."""
    return all(isinstance(m, _ViewBatchNorm) and m.views == views
               for m in module.modules() if isinstance(m, _BatchNorm))


def has_batchnorm(module: nn.Module) -> bool:
    """True when ``module`` holds a BatchNorm (whose statistics depend on the batch)."""
    return any(isinstance(m, _BatchNorm) for m in module.modules())


class _ChunkedBatchNormFn(torch.autograd.Function):
    """Training-mode batch norm of each of ``len(momenta)`` equal batch chunks, written straight
    into one output tensor (aten's ``native_batch_norm.out``; the input gradient likewise), so
    neither pass needs a ``cat``. A chunk whose momentum is None leaves the running buffers
    alone; the others update them in place, in chunk order."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momenta, eps):
        chunks = len(momenta)
        y = torch.empty_like(x)
        stats = x.new_empty((2, chunks, x.shape[1]))
        for i, (xi, yi) in enumerate(zip(x.tensor_split(chunks), y.tensor_split(chunks))):
            update = momenta[i] is not None
            torch.ops.aten.native_batch_norm.out(xi, weight, bias, running_mean if update else None,
                                                 running_var if update else None, True,
                                                 momenta[i] if update else 0.0, eps,
                                                 out=yi, save_mean=stats[0, i], save_invstd=stats[1, i])
        ctx.save_for_backward(x, weight, stats)
        ctx.eps, ctx.chunks = eps, chunks
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
        n = ctx.chunks
        # The out= variant needs every output it is given, so both parameter gradients are
        # computed (per-channel sums, cheap) even for a frozen or non-affine BatchNorm.
        for i, (gyi, xi, gxi) in enumerate(zip(grad_y.tensor_split(n), x.tensor_split(n), grad_x.tensor_split(n))):
            torch.ops.aten.native_batch_norm_backward.out(gyi, xi, weight, None, None, stats[0, i], stats[1, i], True,
                                                          ctx.eps, [True, True, True], out0=gxi, out1=gw,
                                                          out2=gb)
            if mask[1]:
                grad_w += gw
            if mask[2]:
                grad_b += gb
        grad_x = grad_x if mask[0] else None
        return grad_x, grad_w, grad_b, None, None, None, None


def _momenta(bn: _BatchNorm, *, views: int, groups: int) -> List[Optional[float]]:
    """Per chunk: the running-statistics momentum, or None for a chunk that does not update
    them (groups 1..G-1). Counts ``num_batches_tracked`` once per updating chunk."""
    momenta: List[Optional[float]] = []
    for i in range(views * groups):
        if i % groups or not bn.track_running_stats:
            momenta.append(None)
            continue
        momentum = 0.0 if bn.momentum is None else bn.momentum
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average, as _BatchNorm.forward
            momentum = 1.0 / float(bn.num_batches_tracked)
        momenta.append(momentum)
    return momenta


def _chunked_forward(bn: _BatchNorm, x: Tensor, views: int, groups: int) -> Tensor:
    chunks = views * groups
    if x.shape[0] % chunks and views > 1:  # one view: a last, partial batch splits as evenly as it can
        raise ValueError(f"{type(bn).__name__}: batch {x.shape[0]} does not split into {views} view(s) x "
                         f"{groups} group(s) of equal size")
    momenta = _momenta(bn, views=views, groups=groups)
    if x.device.type == "cpu" and x.dtype == torch.float32 and not torch.compiler.is_compiling():
        return _ChunkedBatchNormFn.apply(x, bn.weight, bn.bias, bn.running_mean, bn.running_var, momenta, bn.eps)
    # The form torch.compile traces (and fuses the cat into); CUDA, bf16/fp16 and float64 eager too.
    return torch.cat([
        F.batch_norm(chunk, bn.running_mean if m is not None else None,
                     bn.running_var if m is not None else None, bn.weight, bn.bias, True,
                     m if m is not None else 0.0, bn.eps)
        for chunk, m in zip(x.split(_chunk_sizes(x.shape[0], chunks)), momenta)])


def group_count(batch: int, group: Optional[int]) -> int:
    """How many groups of ``group`` rows (``--device-batch`` / ``--bn-device-batch``) ``batch``
    rows make: a partial batch (an epoch's last, when kept) gives ceil(batch / N) near-equal
    groups; no group size: 1."""
    return 1 if not group else max(-(-batch // group), 1)


def _chunk_sizes(n: int, chunks: int) -> List[int]:
    """``chunks`` sizes summing to ``n``, the first ``n % chunks`` one larger (tensor_split's;
    explicit sizes because inductor's gradient of tensor_split came out wrong, torch 2.14)."""
    q, r = divmod(n, chunks)
    return [q + 1] * r + [q] * (chunks - r)


class _ViewBatchNorm:
    """Mixin of the per-chunk BatchNorm classes: ``views`` views of ``device_batch`` rows per
    virtual device (or ``groups`` groups when ``device_batch`` is None); a plain BatchNorm
    when there is one chunk or in eval mode. Set once at model build
    (:func:`convert_view_batchnorm`), so a step patches nothing and ``torch.compile`` traces
    one pass."""

    views: int = 1
    groups: int = 1
    device_batch: Optional[int] = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        groups = self.groups
        if self.device_batch is not None and self.views == 1:
            groups = group_count(x.shape[0], self.device_batch)
        elif self.device_batch is not None:
            groups = max(x.shape[0] // (self.views * self.device_batch), 1)
        if self.views * groups == 1:
            return super().forward(x)
        return _chunked_forward(self, x, self.views, groups)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, views={self.views}, device_batch={self.device_batch}"


class ViewBatchNorm1d(_ViewBatchNorm, nn.BatchNorm1d):
    """:class:`torch.nn.BatchNorm1d` with per-view / per-virtual-device statistics."""


class ViewBatchNorm2d(_ViewBatchNorm, nn.BatchNorm2d):
    """:class:`torch.nn.BatchNorm2d` with per-view / per-virtual-device statistics."""


class ViewBatchNorm3d(_ViewBatchNorm, nn.BatchNorm3d):
    """:class:`torch.nn.BatchNorm3d` with per-view / per-virtual-device statistics."""


_VIEW_CLASSES = {nn.BatchNorm1d: ViewBatchNorm1d, nn.BatchNorm2d: ViewBatchNorm2d, nn.BatchNorm3d: ViewBatchNorm3d}
_VIEW_CLASSES.update({c: c for c in list(_VIEW_CLASSES.values())})


def convert_view_batchnorm(module: nn.Module, *, views: int = 1, device_batch: Optional[int] = None,
                           groups: int = 1) -> int:
    """Turn every plain BatchNorm1d/2d/3d under ``module`` into its per-chunk subclass in place
    (same parameters, buffers and state-dict keys) with these ``views`` / ``device_batch``
    (or a fixed number of ``groups``). Subclasses such as SyncBatchNorm or timm's
    BatchNormAct2d are left as they are (:func:`supports_one_pass` then says False).
    Returns how many layers were converted."""
    if views < 1 or groups < 1:
        raise ValueError(f"views and groups must be >= 1, got {views} and {groups}")
    n = 0
    for m in module.modules():
        cls = _VIEW_CLASSES.get(type(m))
        if cls is not None:
            m.__class__ = cls
            m.views, m.groups, m.device_batch = views, groups, device_batch
            n += 1
    return n


def set_bn_device_batch(module: nn.Module, device_batch: int) -> int:
    """``--bn-device-batch``: every BatchNorm under ``module`` normalises each group of
    ``device_batch`` samples of each view separately in training mode (eval mode is unchanged).
    Plain BatchNorm1d/2d/3d are converted (one view); layers already converted keep their
    ``views`` (GPaCo's two) and take the group size. Returns how many layers it set."""
    if device_batch < 1:
        raise ValueError(f"device_batch must be >= 1, got {device_batch}")
    n = 0
    for m in module.modules():
        if isinstance(m, _ViewBatchNorm):
            m.device_batch = device_batch
            n += 1
        elif type(m) in _VIEW_CLASSES:
            n += convert_view_batchnorm(m, device_batch=device_batch)
    return n


@contextmanager
def batchnorm_views(module: nn.Module, views: int) -> Iterator[None]:
    """Within the block the per-chunk BatchNorms under ``module`` take ``views`` views (e.g. one
    for a single-view pass through a two-view encoder)."""
    bns = [m for m in module.modules() if isinstance(m, _ViewBatchNorm)]
    before = [m.views for m in bns]
    for m in bns:
        m.views = views
    try:
        yield
    finally:
        for m, v in zip(bns, before):
            m.views = v


@contextmanager
def per_group_batchnorm(module: nn.Module, *, views: int = 1, groups: int = 1) -> Iterator[None]:
    """Within the block, training-mode BatchNorm layers under ``module`` normalise each of the
    ``views x groups`` equal batch chunks (view-major) separately and update their running
    statistics from group 0 of each view (module docstring). Eval mode uses running statistics
    as always. ``views = groups = 1`` leaves the layers as they are. For models, convert once
    at build instead (:func:`convert_view_batchnorm`): this swaps classes on entry and exit.

    Raises ValueError for a SyncBatchNorm (its statistics span processes) when chunks > 1.
    """
    if views < 1 or groups < 1:
        raise ValueError(f"views and groups must be >= 1, got {views} and {groups}")
    bns = [m for m in module.modules() if isinstance(m, _BatchNorm)]
    if views * groups == 1 or not bns:
        yield
        return
    if any(isinstance(m, nn.SyncBatchNorm) for m in bns):
        raise ValueError("per-chunk BatchNorm cannot split a SyncBatchNorm, whose statistics span processes")
    saved = [(m, m.__class__, m.__dict__.get("views"), m.__dict__.get("groups"), m.__dict__.get("device_batch"))
             for m in bns]
    convert_view_batchnorm(module, views=views, groups=groups)
    try:
        yield
    finally:
        for m, cls, *attrs in saved:
            m.__class__ = cls
            for name, value in zip(("views", "groups", "device_batch"), attrs):
                if value is None:
                    m.__dict__.pop(name, None)
                else:
                    setattr(m, name, value)
