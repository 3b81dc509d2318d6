"""GPaCo (TPAMI 2023): one encoder, both views with gradient, queue, class centers
(docs/method.md#gpaco-loss)."""
from __future__ import annotations

from gpaco.losses.criteria import PaCoLoss
from gpaco.models.contrastive import build_gpaco

from .base import ClassificationMethod
from .flags import BETA, CONTRASTIVE, GAMMA, PROJ_ACT, SINGLE_VIEW, SMOOTHING

GPACO_PREFIXES = {"backbone": "encoder.backbone.", "projection": "encoder.projection.", "classifier": "fc.",
                  "queue": "queue."}


class GPaCo(ClassificationMethod):
    name = "gpaco"
    summary = "Generalized PaCo: both views through one encoder, queue, class centers"
    paper = "Cui et al., TPAMI 2023"
    flags = CONTRASTIVE + (BETA, GAMMA, SMOOTHING, PROJ_ACT, SINGLE_VIEW)
    model_options = {"proj_dim": "proj_dim", "queue_size": "queue_size", "proj_act": "projection_act",
                     "single_view": "single_view"}
    loss_options = ("prior", "alpha", "beta", "gamma", "temperature", "smoothing")
    views, takes_labels = 2, True
    default_aug, cifar_aug = "randcls_randclsstack", "cifar100"
    checkpoint_prefixes = GPACO_PREFIXES

    def build_model(self, arch, num_classes, **options):
        return build_gpaco(arch, num_classes, **options)

    def build_criterion(self, **options):
        return PaCoLoss(**options)
