"""The multi-task baseline of the GPaCo paper: CE + alpha x SupCon on the GPaCo model
(docs/method.md#multi-task-baseline)."""
from __future__ import annotations

from gpaco.losses.criteria import MultiTaskLoss

from .flags import CONTRASTIVE, LABEL_SMOOTHING, PROJ_ACT
from .gpaco import GPACO_PREFIXES, build_model
from .registry import Method

MULTITASK = Method(
    name="multitask", task="classification", summary="CE + alpha x supervised contrastive loss (GPaCo's baseline)",
    build_model=build_model, build_criterion=MultiTaskLoss,
    flags=CONTRASTIVE + (LABEL_SMOOTHING, PROJ_ACT),
    model_options={"proj_dim": "proj_dim", "queue_size": "queue_size", "proj_act": "projection_act"},
    loss_options=("prior", "alpha", "temperature", "label_smoothing"),
    views=2, takes_labels=True, default_aug="randcls_randclsstack", cifar_aug="cifar100",
    checkpoint_prefixes=GPACO_PREFIXES, paper="Cui et al., TPAMI 2023 (baseline)",
)
