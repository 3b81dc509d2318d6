"""The multi-task baseline of the GPaCo paper: CE + alpha x SupCon on the GPaCo model
(docs/method.md#multi-task-baseline)."""
from __future__ import annotations

from gpaco.losses.criteria import MultiTaskLoss

from .flags import CONTRASTIVE, LABEL_SMOOTHING, PROJ_ACT
from .gpaco import GPaCo


class MultiTask(GPaCo):
    name = "multitask"
    summary = "CE + alpha x supervised contrastive loss (GPaCo's baseline)"
    paper = "Cui et al., TPAMI 2023 (baseline)"
    flags = CONTRASTIVE + (LABEL_SMOOTHING, PROJ_ACT)
    model_options = {"proj_dim": "proj_dim", "queue_size": "queue_size", "proj_act": "projection_act"}
    loss_options = ("prior", "alpha", "temperature", "label_smoothing")

    def build_criterion(self, **options):
        return MultiTaskLoss(**options)
