"""PaCo (ICCV 2021): momentum key encoder, queue, parametric class centers
(docs/method.md#paco-loss)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from gpaco.engine.step import Batch, FitContext, StepOutput
from gpaco.losses.criteria import PaCoLoss, output_logits
from gpaco.models.contrastive import build_paco

from .base import ClassificationMethod
from .flags import BETA, CONTRASTIVE, GAMMA, MOMENTUM_ENCODER, SMOOTHING


class PaCo(ClassificationMethod):
    name = "paco"
    summary = "Parametric Contrastive Learning: query/key encoders, queue, class centers"
    paper = "Cui et al., ICCV 2021"
    flags = CONTRASTIVE + (BETA, GAMMA, SMOOTHING, MOMENTUM_ENCODER)
    model_options = {"proj_dim": "proj_dim", "queue_size": "queue_size", "momentum_encoder": "momentum"}
    loss_options = ("prior", "alpha", "beta", "gamma", "temperature", "smoothing")
    views, takes_labels = 2, True
    default_aug, cifar_aug = "randcls_sim", "cifar100"
    checkpoint_prefixes = {"backbone": "encoder_q.backbone.", "projection": "encoder_q.projection.",
                           "backbone_k": "encoder_k.backbone.", "projection_k": "encoder_k.projection.",
                           "classifier": "fc.", "queue": "queue."}
    _shuffle: Optional[torch.Generator] = None

    def build_model(self, arch, num_classes, **options):
        return build_paco(arch, num_classes, **options)

    def build_criterion(self, **options):
        return PaCoLoss(**options)

    def key_permutation(self, ctx: FitContext, local_batch: int) -> Tensor:
        """Shuffle-BN's permutation of the global batch [world_size * local_batch] for this
        micro-batch, on the device. It is drawn from a generator seeded by (--seed, epoch,
        micro-batch): every rank draws the same one with no broadcast (a collective that
        ``torch.compile`` cannot trace), and a resumed run draws what the uninterrupted one did."""
        if self._shuffle is None or self._shuffle.device != ctx.device:
            self._shuffle = torch.Generator(device=ctx.device)
        seed = np.random.SeedSequence([int(ctx.options.get("seed", 0)) & (2**64 - 1), ctx.epoch, ctx.step])
        self._shuffle.manual_seed(int(seed.generate_state(1, np.uint64)[0]))
        return torch.randperm(ctx.world_size * local_batch, generator=self._shuffle, device=ctx.device)

    def training_step(self, ctx: FitContext, batch: Batch) -> StepOutput:
        im_q, im_k = batch.images
        perm = self.key_permutation(ctx, im_k.shape[0])
        with ctx.autocast():
            output = ctx.model(im_q, im_k, batch.targets, key_perm=perm)
        loss = ctx.criterion(output, batch.loss_targets)
        return StepOutput(loss, logits=output_logits(output, batch.targets.shape[0]))
