"""Cross-entropy baselines: plain CE and balanced softmax CE (docs/method.md#balanced-cross-entropy)."""
from __future__ import annotations

from gpaco.losses.criteria import CrossEntropyLoss
from gpaco.models.contrastive import build_classifier

from .flags import LABEL_SMOOTHING
from .registry import Method

_COMMON = dict(task="classification", build_model=build_classifier, flags=(LABEL_SMOOTHING,),
               loss_options=("label_smoothing",), default_aug="randcls", cifar_aug="cifar_regular",
               checkpoint_prefixes={"backbone": "backbone.", "classifier": "fc."})

CE = Method(name="ce", summary="cross-entropy on a linear classifier",
            build_criterion=lambda **kw: CrossEntropyLoss(prior=False, **kw),
            paper="baseline", **_COMMON)

BALANCED_CE = Method(name="balanced_ce", summary="balanced softmax / logit-adjusted CE (log prior added)",
                     build_criterion=lambda **kw: CrossEntropyLoss(prior=True, **kw),
                     paper="Ren et al. 2020; Menon et al. 2021", **_COMMON)
