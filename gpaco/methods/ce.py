"""Cross-entropy baselines: plain CE and balanced softmax CE (docs/method.md#balanced-cross-entropy)."""
from __future__ import annotations

from gpaco.losses.criteria import CrossEntropyLoss
from gpaco.models.contrastive import build_classifier

from .base import ClassificationMethod
from .flags import LABEL_SMOOTHING


class CE(ClassificationMethod):
    name = "ce"
    summary = "cross-entropy on a linear classifier"
    paper = "baseline"
    flags = (LABEL_SMOOTHING,)
    loss_options = ("label_smoothing",)
    default_aug, cifar_aug = "randcls", "cifar_regular"
    checkpoint_prefixes = {"backbone": "backbone.", "classifier": "fc."}
    prior = False  # add the log class prior to the logits

    def build_model(self, arch, num_classes, **options):
        return build_classifier(arch, num_classes, **options)

    def build_criterion(self, **options):
        return CrossEntropyLoss(prior=self.prior, **options)


class BalancedCE(CE):
    name = "balanced_ce"
    summary = "balanced softmax / logit-adjusted CE (log prior added)"
    paper = "Ren et al. 2020; Menon et al. 2021"
    prior = True
