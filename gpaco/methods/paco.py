"""PaCo (ICCV 2021): momentum key encoder, queue, parametric class centers
(docs/method.md#paco-loss)."""
from __future__ import annotations

from gpaco.losses.criteria import PaCoLoss
from gpaco.models.contrastive import build_paco

from .flags import BETA, CONTRASTIVE, GAMMA, MOMENTUM_ENCODER, SMOOTHING
from .registry import Method

PACO = Method(
    name="paco", task="classification", summary="Parametric Contrastive Learning: query/key encoders, queue, "
    "class centers", build_model=build_paco, build_criterion=PaCoLoss,
    flags=CONTRASTIVE + (BETA, GAMMA, SMOOTHING, MOMENTUM_ENCODER),
    model_options={"proj_dim": "proj_dim", "queue_size": "queue_size", "momentum_encoder": "momentum"},
    loss_options=("prior", "alpha", "beta", "gamma", "temperature", "smoothing"),
    views=2, takes_labels=True, default_aug="randcls_sim", cifar_aug="cifar100",
    checkpoint_prefixes={"backbone": "encoder_q.backbone.", "projection": "encoder_q.projection.",
                         "backbone_k": "encoder_k.backbone.", "projection_k": "encoder_k.projection.",
                         "classifier": "fc.", "queue": "queue."},
    paper="Cui et al., ICCV 2021",
)
