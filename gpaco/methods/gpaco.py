"""GPaCo (TPAMI 2023): one encoder, both views with gradient, queue, class centers
(docs/method.md#gpaco-loss)."""
from __future__ import annotations

from gpaco.losses.criteria import PaCoLoss
from gpaco.models.contrastive import build_gpaco as build_model

from .flags import BETA, CONTRASTIVE, GAMMA, PROJ_ACT, SINGLE_VIEW, SMOOTHING
from .registry import Method

GPACO_PREFIXES = {"backbone": "encoder.backbone.", "projection": "encoder.projection.", "classifier": "fc.",
                  "queue": "queue."}


GPACO = Method(
    name="gpaco", task="classification", summary="Generalized PaCo: both views through one encoder, queue, "
    "class centers", build_model=build_model, build_criterion=PaCoLoss,
    flags=CONTRASTIVE + (BETA, GAMMA, SMOOTHING, PROJ_ACT, SINGLE_VIEW),
    model_options={"proj_dim": "proj_dim", "queue_size": "queue_size", "proj_act": "projection_act",
                   "single_view": "single_view"},
    loss_options=("prior", "alpha", "beta", "gamma", "temperature", "smoothing"),
    views=2, takes_labels=True, default_aug="randcls_randclsstack", cifar_aug="cifar100",
    checkpoint_prefixes=GPACO_PREFIXES, paper="Cui et al., TPAMI 2023",
)
