"""PaCo (ICCV 2021): momentum key encoder, queue, parametric class centers
(docs/method.md#paco-loss)."""
from __future__ import annotations

from gpaco.losses.criteria import PaCoLoss
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

    def build_model(self, arch, num_classes, **options):
        return build_paco(arch, num_classes, **options)

    def build_criterion(self, **options):
        return PaCoLoss(**options)
