"""PaCo (ICCV 2021): momentum key encoder, queue, parametric class centers
(docs/method.md#paco-loss)."""
from __future__ import annotations

from gpaco.losses.criteria import PaCoLoss
from gpaco.models.contrastive import build_paco

from .flags import BETA, CONTRASTIVE, GAMMA, MOMENTUM_ENCODER, SMOOTHING
from .registry import Method


def _build_model(arch, num_classes, *, momentum_encoder=None, **kw):
    if momentum_encoder is not None:
        kw["momentum"] = momentum_encoder
    return build_paco(arch, num_classes, **kw)


PACO = Method(
    name="paco", task="classification", summary="Parametric Contrastive Learning: query/key encoders, queue, "
    "class centers", build_model=_build_model, build_criterion=PaCoLoss,
    flags=CONTRASTIVE + (BETA, GAMMA, SMOOTHING, MOMENTUM_ENCODER),
    model_options=("proj_dim", "queue_size", "momentum_encoder"),
    loss_options=("prior", "alpha", "beta", "gamma", "temperature", "smoothing"),
    views=2, takes_labels=True, default_aug="randcls_sim", cifar_aug="cifar100",
    checkpoint_prefixes={"backbone": "encoder_q.backbone.", "projection": "encoder_q.projection.",
                         "backbone_k": "encoder_k.backbone.", "projection_k": "encoder_k.projection.",
                         "classifier": "fc.", "queue": "queue."},
    paper="Cui et al., ICCV 2021",
)
