"""ResLT (TPAMI 2022): head / medium / tail residual branches sharing one classifier
(docs/method.md#reslt-loss)."""
from __future__ import annotations

import argparse

from gpaco.losses.criteria import ResLTCriterion
from gpaco.models.reslt import HEADS, POOLS, build_reslt
from gpaco.models.view_bn import convert_view_batchnorm

from .base import ClassificationMethod, flag

RESLT_FLAGS = (
    flag("--reslt-beta", type=float, default=0.99, range="[0, 1]",
         help="weight of the per-branch term (1 - beta: the fused logits); recipes 0.72 .. 0.998"),
    flag("--reslt-branch-sizes", type=int, nargs="+", default=None, metavar="N",
         help="classes of the medium(+tail) and tail branches, the rarest by training count (ImageNet-LT "
              "825 220, iNaturalist 6600, CIFAR-10-LT 8 6, CIFAR-100-LT 65 30); default: 82.5%% and 22%% of "
              "the classes"),
    flag("--reslt-gamma", type=float, default=None,
         help="evaluate with the gamma-normalised classifier W / ||W||^gamma and no bias (ImageNet-LT R10 0.3, "
              "X50/X101 0.7, iNaturalist 0.3); default: the plain sum of the branch logits (CIFAR)"),
    flag("--reslt-head", default="auto", choices=HEADS,
         help="conv: 1x1 conv + BN + ReLU to K x F (ImageNet, iNat); bn: K BatchNorm copies (CIFAR); "
              "auto: bn for the CIFAR ResNets"),
    flag("--reslt-pool", default="after", choices=POOLS,
         help="after: head on the feature map, then pooling (the original's --after_1x1conv); before: pool "
              "the trunk, then the head"),
    flag("--reslt-original-eval-pooling", action=argparse.BooleanOptionalAction, default=False,
         help="evaluate with the pooling before the head whatever --reslt-pool trains with (the original's "
              "train/eval mismatch, docs/migrating.md)"),
    flag("--reslt-fused-eps", type=float, default=0.0,
         help="1e-7 inside the log of the fused term (the ImageNet-LT script); 0: plain cross-entropy"),
)


class ResLT(ClassificationMethod):
    name = "reslt"
    summary = "ResLT: head/medium/tail branches of one feature, one shared classifier, branch + fused CE"
    paper = "Cui et al., TPAMI 2022"
    flags = RESLT_FLAGS
    model_options = {"reslt_branch_sizes": "branch_sizes", "reslt_gamma": "eval_gamma", "reslt_head": "head",
                     "reslt_pool": "pool", "reslt_original_eval_pooling": "original_eval_pooling"}
    loss_options = {"reslt_beta": "beta", "reslt_branch_sizes": "branch_sizes", "reslt_fused_eps": "fused_eps"}
    default_aug, cifar_aug = "randcls", "cifar_regular"
    checkpoint_prefixes = {"backbone": "backbone.", "head": "head.", "classifier": "fc."}

    def build_model(self, arch, num_classes, *, device_batch=None, **options):
        model = build_reslt(arch, num_classes, **options)
        if device_batch is not None:  # --device-batch: a classifier's BatchNorm per virtual device
            convert_view_batchnorm(model, device_batch=device_batch)
        return model

    def build_criterion(self, **options):
        return ResLTCriterion(**options)

    def validate(self, options: dict) -> None:
        sizes = options.get("reslt_branch_sizes")
        if sizes is not None and (not sizes or any(s < 1 for s in sizes)):
            raise ValueError(f"--reslt-branch-sizes must be positive class counts, got {sizes}")
