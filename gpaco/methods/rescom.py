"""ResCom (rebalanced Siamese contrastive mining): one encoder on two views, balanced softmax on
both, a class-balanced key queue with hard positive / negative mining, effective-number class
weights on the contrast (docs/method.md#rescom-loss). ``--device-batch``: BatchNorm and the
in-batch contrast per virtual device (:mod:`gpaco.models.rescom`)."""
from __future__ import annotations

from gpaco.losses.criteria import ResComCriterion
from gpaco.models.rescom import build_rescom

from .flags import PROJ_DIM, TEMPERATURE
from .base import ClassificationMethod, flag

RESCOM_FLAGS = (
    PROJ_DIM, TEMPERATURE,
    flag("--rescom-queue-per-class", type=int, default=10, metavar="K", range="[1, inf)",
         help="keys kept per class in the class-balanced queue (the original's queue_size_per_cls)"),
    flag("--rescom-positives", type=int, default=1, metavar="P",
         help="hard positives: the P least similar same-class keys of the queue (<= K)"),
    flag("--rescom-negatives", type=int, default=400, metavar="N", range="[0, inf)",
         help="hard negatives: the N most similar other-class keys of the queue (<= (classes - 1) x K)"),
    flag("--rescom-con-weight", type=float, default=1.0, help="weight of the contrastive term"),
    flag("--rescom-beta", type=float, default=0.0, range="[0, 1)",
         help="effective-number beta of the contrastive class weights (CIFAR-100-LT 0.999999); 0: no weights"),
    flag("--rescom-balanced-contrast", type=float, default=0.0,
         help="n of a balanced softmax on the contrast columns, n log(prior of the column's class) added to "
              "s / T (the original's balsfx_n, which crashed for any value but 0); 0: off"),
)

_NO_BN_ONLY = ("--bn-device-batch is not for --method rescom: its original ran DDP, each GPU normalising and "
               "contrasting its own samples' two views; use --device-batch")


class ResCom(ClassificationMethod):
    name = "rescom"
    summary = "ResCom: balanced softmax on two views + mined contrast against a class-balanced queue"
    paper = "Zhong et al., arXiv 2203.11506"
    flags = RESCOM_FLAGS
    model_options = {"proj_dim": "proj_dim", "rescom_queue_per_class": "queue_per_class"}
    loss_options = {"temperature": "temperature", "rescom_positives": "num_positives",
                    "rescom_negatives": "num_negatives", "rescom_con_weight": "con_weight",
                    "rescom_beta": "effective_num_beta", "rescom_balanced_contrast": "balanced_contrast",
                    "rescom_queue_per_class": "queue_per_class"}
    views, takes_labels = 2, True
    default_aug, cifar_aug = "randclsgray_randclsgray", "cifar_regular_cifar_regular"
    checkpoint_prefixes = {"backbone": "backbone.", "projection": "projection.", "classifier": "fc."}

    def build_model(self, arch, num_classes, *, bn_device_batch=None, **options):
        if bn_device_batch is not None:
            raise ValueError(_NO_BN_ONLY)
        return build_rescom(arch, num_classes, **options)

    build_model.takes_bn_device_batch = True  # refused above, not applied by the base class

    def build_criterion(self, **options):
        return ResComCriterion(**options)

    def validate(self, options: dict) -> None:
        k, p = options["rescom_queue_per_class"], options["rescom_positives"]
        if not 0 <= p <= k:
            raise ValueError(f"--rescom-positives must be in 0..{k} (--rescom-queue-per-class), got {p}")
        if options.get("bn_device_batch") is not None:
            raise ValueError(_NO_BN_ONLY)
