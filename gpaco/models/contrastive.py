"""The models that produce the PaCo / GPaCo loss inputs.

Training forward returns a :class:`ContrastiveOutput` that goes straight into
``gpaco.losses.paco_loss(out.features, out.labels, out.logits, out.num_anchors, ...)``
(or ``multitask_loss``). Eval forward returns classifier logits only.

Layout (local batch B, queue size K; docs/method.md#models):

==============  ======================  ======================  ===============
model           features                labels                  anchors
==============  ======================  ======================  ===============
PaCoModel       cat(q, k, queue) [2B+K] cat(y, y, queue_labels) B   (the q rows)
GPaCoModel      cat(q, k, queue) [2B+K] cat(y, y, queue_labels) 2B  (q and k rows)
GPaCo 1-view    cat(q, queue)    [B+K]  cat(y, queue_labels)    B
==============  ======================  ======================  ===============

q/k are L2-normalised projections; ``logits`` are the linear classifier ``fc`` on the
pooled backbone feature (its weight rows are the class centers). The queue holds the
all-gathered keys of previous steps and is always detached.

With ``device_batch=N`` (``--device-batch``; docs/recipes.md#same-statistics-on-any-gpu-count)
the local batch is G = B / N virtual devices of N samples, each as one GPU of the original:
BatchNorm normalises each group separately (:class:`~gpaco.models.view_bn.ViewBatchNorm2d`),
and the contrast set is per group. The output is then batched over groups (the same rows
as above with B replaced by N, the queue repeated in every group):

==============  ===================================  ===================  ============
model           features [G, M_g, D]                 labels [G, M_g]      anchors n_g
==============  ===================================  ===================  ============
PaCoModel       cat(q_g, k_g, queue)   M_g = 2N+K     cat(y_g, y_g, ql)    N
GPaCoModel      cat(q_g, k_g, queue)   M_g = 2N+K     cat(y_g, y_g, ql)    2N
GPaCo 1-view    cat(q_g, queue)        M_g = N+K      cat(y_g, ql)         N
==============  ===================================  ===================  ============

and ``logits`` [G, n_g, C]. Shuffle-BN permutes the whole global batch, so each virtual
device's key encoder sees a random chunk of every device's samples; the queue receives the
keys in batch order, which is the original's rank order of the virtual devices.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import all_gather_nograd, batch_shuffle, batch_unshuffle
from .backbones import create_backbone
from .heads import GPaCoProjection, PaCoProjection
from .vit import MAE_ARCHS, MAEProjection, is_vit, register_archs
from .view_bn import batchnorm_views, convert_view_batchnorm, supports_one_pass

__all__ = [
    "ContrastiveOutput", "FeatureQueue", "Encoder", "Classifier", "PaCoModel", "GPaCoModel",
    "build_classifier", "build_paco", "build_gpaco", "device_groups", "group_rows", "make_backbone",
]


class ContrastiveOutput(NamedTuple):
    """Loss inputs of one training step; with G > 1 virtual devices every tensor gains a
    leading group dimension and ``num_anchors`` counts the anchors of one group."""

    features: Tensor  # [M, D] L2-normalised; rows [:num_anchors] are the anchors ([G, M_g, D] grouped)
    labels: Tensor  # [M] long ([G, M_g])
    logits: Tensor  # [num_anchors, C] classifier logits of the anchors ([G, n_g, C])
    num_anchors: int


def device_groups(batch: int, device_batch: Optional[int]) -> int:
    """Virtual devices of ``device_batch`` samples in a local ``batch`` (1 without one)."""
    if device_batch is None:
        return 1
    if device_batch < 1 or batch % device_batch:
        raise ValueError(f"--device-batch {device_batch} must divide the per-process batch {batch}")
    return batch // device_batch


def group_rows(blocks: Sequence[Tensor], shared: Optional[Tensor], groups: int) -> Tensor:
    """Per-group rows: every block [B, ...] is cut into ``groups`` chunks of B / G rows;
    group g is ``cat(block_0[g], block_1[g], ..., shared)``. -> [G, sum(B_i) / G (+ S), ...]
    (``shared`` [S, ...], e.g. the queue, is repeated in every group)."""
    parts = [b.reshape(groups, b.shape[0] // groups, *b.shape[1:]) for b in blocks]
    if shared is not None:
        parts.append(shared.unsqueeze(0).expand(groups, *shared.shape))
    return torch.cat(parts, dim=1)


def _queue_message(size: int, global_batch: int) -> str:
    return (f"queue size K={size} is not a multiple of the global batch {global_batch} "
            f"(per-process batch x world size); choose K as a multiple of {global_batch}, "
            f"and drop the last incomplete batch (drop_last=True)")


class FeatureQueue(nn.Module):
    """Ring buffer of past (key, label) pairs shared by all processes.

    Buffers (saved in the state dict): ``features`` [K, dim], ``labels`` [K] long,
    ``ptr`` [1] long. Initialised like the original (docs/method.md#queue): ``randn`` normalised
    along dim 0 (column-wise, so the initial rows are *not* unit vectors) and random
    labels in [0, num_classes), both from torch's global RNG, so early steps see fake
    positives until the queue has been overwritten once. ``size=0`` disables the queue.
    """

    features: Tensor
    labels: Tensor
    ptr: Tensor

    def __init__(self, size: int, dim: int, num_classes: int, global_batch: Optional[int] = None) -> None:
        super().__init__()
        if size < 0:
            raise ValueError(f"queue size must be >= 0, got {size}")
        if size and global_batch is not None and size % global_batch:
            raise ValueError(_queue_message(size, global_batch))
        self.size, self.dim, self.num_classes = size, dim, num_classes
        self.register_buffer("features", F.normalize(torch.randn(size, dim), dim=0))
        self.register_buffer("labels", torch.randint(0, num_classes, (size,), dtype=torch.long))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, num_classes={self.num_classes}"

    @torch.no_grad()
    def enqueue(self, keys: Tensor, labels: Tensor) -> None:
        """Gather ``keys`` [B, dim] and ``labels`` [B] from every process and write them at ``ptr``."""
        if self.size == 0:
            return
        keys = all_gather_nograd(keys)
        labels = all_gather_nograd(labels)
        batch = keys.shape[0]
        if self.size % batch:
            raise ValueError(_queue_message(self.size, batch))
        # Written at rows ptr .. ptr + batch - 1 without reading ptr back to the host (a read
        # would stall a GPU step and break torch.compile graphs); K % batch == 0, so no wrap.
        rows = self.ptr + torch.arange(batch, device=self.ptr.device)
        self.features.index_copy_(0, rows, keys.to(self.features.dtype))
        self.labels.index_copy_(0, rows, labels.to(self.labels.dtype))
        self.ptr.add_(batch).remainder_(self.size)

    def snapshot(self) -> Tuple[Tensor, Tensor]:
        """Detached copies (features [K, dim], labels [K]) for building the contrast set;
        copies so the in-place enqueue after it cannot alter them."""
        return self.features.detach().clone(), self.labels.clone()


class Encoder(nn.Module):
    """Backbone + projection. [B,3,H,W] -> (pooled [B, F], embedding [B, D] unnormalised)."""

    def __init__(self, backbone: nn.Module, projection: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection = projection

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        pooled = self.backbone(x)
        return pooled, self.projection(pooled)


def make_backbone(arch: Union[str, nn.Module], *, feat_dim: Optional[int] = None, pretrained: Union[bool, str] = False,
                  drop_path_rate: float = 0.0, backbone_kwargs: Optional[Dict[str, Any]] = None
                  ) -> Tuple[nn.Module, int]:
    """(trunk, feature width) of every model: a timm / CIFAR / MAE name is built by
    :func:`~gpaco.models.backbones.create_backbone`; a module is used as given, its width from
    ``feat_dim`` or its ``num_features``."""
    if isinstance(arch, nn.Module):
        dim = feat_dim if feat_dim is not None else getattr(arch, "num_features", None)
        if dim is None:
            raise ValueError("pass feat_dim when giving a backbone module without `num_features`")
        return arch, int(dim)
    if arch.split(".")[0] in MAE_ARCHS:
        register_archs()
    return create_backbone(arch, pretrained=pretrained, drop_path_rate=drop_path_rate, **(backbone_kwargs or {}))


class Classifier(nn.Module):
    """Backbone + linear classifier ``fc`` for the CE / balanced-CE baselines.

    ``forward(x)``: [B,3,H,W] -> logits [B, C]. With ``device_batch`` N, training-mode
    BatchNorm normalises each group of N samples separately (``--device-batch``).
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, num_classes: int, *,
                 device_batch: Optional[int] = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.feat_dim, self.num_classes = feat_dim, num_classes
        self.device_batch = device_batch
        self.fc = nn.Linear(feat_dim, num_classes)
        if hasattr(backbone, "init_classifier"):  # a zoo network's own head init (gpaco.models.kd_cifar)
            backbone.init_classifier(self.fc)
        if device_batch is not None:
            convert_view_batchnorm(self.backbone, device_batch=device_batch)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            device_groups(x.shape[0], self.device_batch)  # says when --device-batch does not divide the batch
        return self.fc(self.backbone(x))


class PaCoModel(nn.Module):
    """PaCo (docs/method.md#paco-model): query encoder + momentum key encoder + queue + classifier ``fc``.

    Submodules: ``encoder_q`` (backbone + :class:`PaCoProjection`), ``encoder_k`` (its
    momentum copy, no gradient), ``fc`` (Linear(F, C) on the pooled feature: the class
    centers), ``queue`` (:class:`FeatureQueue`).

    ``forward(im_q, im_k, labels)`` in training -> :class:`ContrastiveOutput` with B anchors;
    ``forward(x)`` (eval mode, or ``im_k`` None) -> logits [B, C].
    """

    def __init__(
        self,
        arch: Union[str, nn.Module],
        num_classes: int,
        *,
        proj_dim: int = 128,
        hidden_dim: Optional[int] = None,
        queue_size: int = 8192,
        momentum: float = 0.999,
        pretrained: Union[bool, str] = False,
        drop_path_rate: float = 0.0,
        global_batch: Optional[int] = None,
        normalize_pooled: bool = False,
        feat_dim: Optional[int] = None,
        backbone_kwargs: Optional[Dict[str, Any]] = None,
        device_batch: Optional[int] = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        backbone, dim = make_backbone(arch, feat_dim=feat_dim, pretrained=pretrained, drop_path_rate=drop_path_rate,
                                      backbone_kwargs=backbone_kwargs)
        self.feat_dim, self.num_classes, self.proj_dim = dim, num_classes, proj_dim
        self.momentum = momentum
        self.normalize_pooled = normalize_pooled
        self.device_batch = device_batch
        self.encoder_q = Encoder(backbone, PaCoProjection(dim, hidden_dim, proj_dim))
        if device_batch is not None:
            convert_view_batchnorm(self.encoder_q, device_batch=device_batch)
        self.fc = nn.Linear(dim, num_classes)
        # The key encoder starts as an exact copy; afterwards only its parameters follow
        # the query encoder (EMA); its BN running statistics stay its own (docs/method.md#paco-model).
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.queue = FeatureQueue(queue_size, proj_dim, num_classes, global_batch)

    @property
    def backbone(self) -> nn.Module:
        """The query backbone (the one evaluated)."""
        return self.encoder_q.backbone

    @torch.no_grad()
    def momentum_update(self) -> None:
        """theta_k <- m * theta_k + (1 - m) * theta_q, parameters only: two foreach kernels over
        all parameters (the arithmetic of a per-parameter ``mul_(m).add_(q, alpha=1 - m)``)."""
        m = self.momentum
        keys = list(self.encoder_k.parameters())
        torch._foreach_mul_(keys, m)
        torch._foreach_add_(keys, [p.detach() for p in self.encoder_q.parameters()], alpha=1.0 - m)

    def classify(self, x: Tensor) -> Tensor:
        """Logits [B, C] from the query backbone (the projection is not needed)."""
        pooled = self.encoder_q.backbone(x)
        if self.normalize_pooled:
            pooled = F.normalize(pooled, dim=1)
        return self.fc(pooled)

    def forward(
        self, im_q: Tensor, im_k: Optional[Tensor] = None, labels: Optional[Tensor] = None,
        key_perm: Optional[Tensor] = None,
    ) -> Union[Tensor, ContrastiveOutput]:
        """``key_perm``: shuffle-BN's permutation of the global batch (see
        :func:`gpaco.distributed.batch_shuffle`; the PaCo method's step passes one)."""
        if not self.training or im_k is None:
            return self.classify(im_q)
        if labels is None:
            raise ValueError("training forward needs labels: model(im_q, im_k, labels)")
        labels = labels.long()
        groups = device_groups(im_q.shape[0], self.device_batch)
        pooled, z_q = self.encoder_q(im_q)
        q = F.normalize(z_q, dim=1)
        logits = self.fc(F.normalize(pooled, dim=1) if self.normalize_pooled else pooled)

        with torch.no_grad():
            self.momentum_update()  # before computing k, as MoCo does
            # Shuffle-BN: the key encoder's BN sees a batch mixed across processes (and
            # across the virtual devices of --device-batch).
            im_k_shuffled, unshuffle_idx = batch_shuffle(im_k, key_perm)
            _, z_k = self.encoder_k(im_k_shuffled)
            k = batch_unshuffle(F.normalize(z_k, dim=1), unshuffle_idx)

        queue_feats, queue_labels = self.queue.snapshot()
        if groups == 1:
            out = ContrastiveOutput(torch.cat([q, k, queue_feats], dim=0),
                                    torch.cat([labels, labels, queue_labels], dim=0), logits, q.shape[0])
        else:
            out = ContrastiveOutput(group_rows([q, k], queue_feats, groups),
                                    group_rows([labels, labels], queue_labels, groups),
                                    group_rows([logits], None, groups), q.shape[0] // groups)
        # Enqueue after building features: the batch does not meet its own keys in the queue.
        self.queue.enqueue(k, labels)
        return out


class GPaCoModel(nn.Module):
    """GPaCo (docs/method.md#gpaco-model): one encoder, both views with gradient, queue + classifier ``fc``.

    BatchNorm statistics are per view, as in the original's two forward passes; the two
    views nevertheless go through the encoder as ONE batch of 2B (its BatchNorms are
    :class:`~gpaco.models.view_bn.ViewBatchNorm2d` with two views, converted at build),
    unless the encoder holds a SyncBatchNorm or the views differ in shape (or
    ``one_pass_on_cpu`` is False on CPU). No momentum encoder, no shuffle-BN.

    Submodules: ``encoder`` (backbone + :class:`GPaCoProjection`, or :class:`MAEProjection` with
    ``projection_act="gelu"``), ``fc``, ``queue``.

    Training: ``forward(im_q, im_k, labels)`` -> :class:`ContrastiveOutput` with 2B anchors
    (features cat(q, k, queue), logits cat(fc(h_q), fc(h_k))), enqueues k. With
    ``single_view=True``: ``forward(im_q, None, labels)`` -> features cat(q, queue),
    B anchors, enqueues q. Eval mode (or no second view / no labels): logits [B, C].
    """

    def __init__(
        self,
        arch: Union[str, nn.Module],
        num_classes: int,
        *,
        proj_dim: int = 128,
        hidden_dim: Optional[int] = None,
        queue_size: int = 8192,
        pretrained: Union[bool, str] = False,
        drop_path_rate: float = 0.0,
        global_batch: Optional[int] = None,
        single_view: bool = False,
        feat_dim: Optional[int] = None,
        backbone_kwargs: Optional[Dict[str, Any]] = None,
        projection_act: str = "relu",
        device_batch: Optional[int] = None,
    ) -> None:
        super().__init__()
        backbone, dim = make_backbone(arch, feat_dim=feat_dim, pretrained=pretrained, drop_path_rate=drop_path_rate,
                                      backbone_kwargs=backbone_kwargs)
        self.feat_dim, self.num_classes, self.proj_dim = dim, num_classes, proj_dim
        self.single_view = single_view
        self.device_batch = device_batch
        if projection_act not in ("relu", "gelu"):
            raise ValueError(f"projection_act must be 'relu' or 'gelu', got {projection_act!r}")
        # relu: the ResNet recipes' MLP; gelu: the MAE ViT one (gpaco.models.vit.MAEProjection).
        # Both have the same state-dict keys.
        projection = GPaCoProjection if projection_act == "relu" else MAEProjection
        self.encoder = Encoder(backbone, projection(dim, hidden_dim, proj_dim))
        self.views = 1 if single_view else 2
        convert_view_batchnorm(self.encoder, views=self.views, device_batch=device_batch)
        self.fc = nn.Linear(dim, num_classes)
        self.queue = FeatureQueue(queue_size, proj_dim, num_classes, global_batch)

    @property
    def backbone(self) -> nn.Module:
        return self.encoder.backbone

    def one_pass(self, x: Tensor) -> bool:
        """Both views in one encoder pass? Always on accelerators (half the kernel launches).
        On CPU it depends on the batch (docs/benchmarks.md): a ResNet-50 step at 8 images per
        view and 224 px is 25% faster in one pass, at 16 per view and 112 px 6% slower (the
        per-view BatchNorm split copies); ``one_pass_on_cpu`` (default True) chooses."""
        return x.device.type != "cpu" or self.one_pass_on_cpu

    one_pass_on_cpu = True

    def classify(self, x: Tensor) -> Tensor:
        """Logits [B, C] (the projection is not needed)."""
        if self.training and self.views > 1:
            with batchnorm_views(self.encoder, 1):  # one view, e.g. a training-mode probe
                return self.fc(self.encoder.backbone(x))
        return self.fc(self.encoder.backbone(x))

    def forward(
        self, im_q: Tensor, im_k: Optional[Tensor] = None, labels: Optional[Tensor] = None
    ) -> Union[Tensor, ContrastiveOutput]:
        if not self.training or labels is None or (im_k is None and not self.single_view):
            return self.classify(im_q)
        labels = labels.long()
        groups = device_groups(im_q.shape[0], self.device_batch)
        if self.single_view:
            pooled_q, z_q = self.encoder(im_q)
            q = F.normalize(z_q, dim=1)
            return self._output([q], [pooled_q], labels, groups, enqueue=q)
        if im_q.shape == im_k.shape and self.one_pass(im_q) and supports_one_pass(self.encoder):
            # Both views in one pass, BatchNorm statistics still per view (and per virtual
            # device with --device-batch; view_bn.py).
            pooled, z = self.encoder(torch.cat([im_q, im_k], dim=0))
            q, k = F.normalize(z, dim=1).chunk(2)
            pooled_q, pooled_k = pooled.chunk(2)
            return self._output([q, k], [pooled_q, pooled_k], labels, groups, enqueue=k)
        # Separate passes (per-view BN statistics): SyncBatchNorm, or views of different sizes.
        with batchnorm_views(self.encoder, 1):
            pooled_q, z_q = self.encoder(im_q)
            pooled_k, z_k = self.encoder(im_k)
        q = F.normalize(z_q, dim=1)
        k = F.normalize(z_k, dim=1)
        return self._output([q, k], [pooled_q, pooled_k], labels, groups, enqueue=k)

    def _output(self, views: Sequence[Tensor], pooled: Sequence[Tensor], labels: Tensor, groups: int, *,
                enqueue: Tensor) -> ContrastiveOutput:
        """features cat(views, queue), every view an anchor block; ``enqueue`` goes into the
        queue afterwards (the batch does not meet its own keys in the queue)."""
        queue_feats, queue_labels = self.queue.snapshot()
        logits = [self.fc(p) for p in pooled]
        view_labels = [labels] * len(views)
        if groups == 1:
            out = ContrastiveOutput(torch.cat([*views, queue_feats], dim=0),
                                    torch.cat([*view_labels, queue_labels], dim=0),
                                    torch.cat(logits, dim=0), len(views) * labels.shape[0])
        else:
            out = ContrastiveOutput(group_rows(views, queue_feats, groups),
                                    group_rows(view_labels, queue_labels, groups),
                                    group_rows(logits, None, groups), len(views) * labels.shape[0] // groups)
        self.queue.enqueue(enqueue.detach(), labels)
        return out


# Keyword arguments that only the contrastive models take; build_classifier drops them so
# checkpoint loading can pass one uniform set (device_batch is common to all).
CONTRASTIVE_ONLY = {"proj_dim", "hidden_dim", "queue_size", "momentum", "global_batch",
                     "normalize_pooled", "single_view", "projection_act"}


def build_classifier(arch: Union[str, nn.Module], num_classes: int, **kw: Any) -> Classifier:
    """:class:`Classifier` (backbone + ``fc``); contrastive-only options are ignored."""
    kw = {k: v for k, v in kw.items() if k not in CONTRASTIVE_ONLY}
    backbone, dim = make_backbone(arch, feat_dim=kw.pop("feat_dim", None), pretrained=kw.pop("pretrained", False),
                                  drop_path_rate=kw.pop("drop_path_rate", 0.0),
                                  backbone_kwargs=kw.pop("backbone_kwargs", None))
    device_batch = kw.pop("device_batch", None)
    if kw:
        raise TypeError(f"build_classifier got unexpected arguments {sorted(kw)}")
    return Classifier(backbone, dim, num_classes, device_batch=device_batch)


def build_paco(arch: Union[str, nn.Module], num_classes: int, **kw: Any) -> PaCoModel:
    """:class:`PaCoModel`; rejects the GPaCo-only options."""
    if kw.pop("single_view", False):
        raise ValueError("single_view is a GPaCo option; PaCo always uses two views")
    if kw.pop("projection_act", "relu") != "relu":
        raise ValueError("projection_act is a GPaCo option; PaCo's projection is Linear-BN-ReLU-Linear")
    return PaCoModel(arch, num_classes, **kw)


def build_gpaco(arch: Union[str, nn.Module], num_classes: int, *, projection_act: str = "auto",
                **kw: Any) -> GPaCoModel:
    """:class:`GPaCoModel`; ``projection_act="auto"``: GELU MLP for ViTs (MAE), ReLU otherwise.
    PaCo-only options (``momentum``, ``normalize_pooled``) are ignored."""
    kw.pop("momentum", None)
    kw.pop("normalize_pooled", None)
    if projection_act == "auto":
        projection_act = "gelu" if is_vit(arch) else "relu"
    return GPaCoModel(arch, num_classes, projection_act=projection_act, **kw)

