"""CeCo (CVPR 2023) for segmentation: a frozen, training-only center-collapse branch on the
decoder output, with a simplex-ETF classifier (``ceco``) or a random frozen linear one
(``cecol``) (docs/method.md#ceco-for-segmentation)."""
from __future__ import annotations

from gpaco.losses.ceco import CeCoSegmentationLoss
from gpaco.models.seg import build_seg_model

from .base import SegmentationMethod, flag
from .segmentation import AUX_WEIGHT, CE_AVG_NON_IGNORE, CLASS_COUNTS

CECO_WEIGHT = flag("--ceco-weight", type=float, default=None,
                   help="weight of the CeCo loss (default: ceco 0.8, cecol 1.0; the Swin-B ceco recipe: 0.2)")
CECO_SMOOTH = flag("--ceco-smooth", type=float, default=None,
                   help="target mass on the true class of the center CE (default: ceco 1.0, cecol 0.5)")
CECO_SCALE = flag("--ceco-scale", type=float, default=None,
                  help="logit scale of the center classifier (default: ceco 5.0, cecol 1.0)")
ETF_SEED = flag("--etf-seed", type=int, default=0,
                help="seed of the generator that draws the frozen classifier (ETF or random linear) once; it is "
                     "saved in the checkpoint")
DEVICE_BATCH = flag("--device-batch", type=int, default=None, metavar="N", range="[1, inf)",
                    help="per-GPU batch of the original run: the CeCo branch's BatchNorm and class centres work over "
                         "groups of exactly N images, whatever the number of processes (the rest of the network "
                         "keeps SyncBatchNorm over the global batch); it must divide --batch-size / processes. "
                         "Default: per process, which depends on the GPU count "
                         "(docs/recipes.md#same-statistics-on-any-gpu-count)")

_PREFIXES = {"backbone": "encoder.", "classifier": "decoder."}


_FLAGS = (AUX_WEIGHT, CE_AVG_NON_IGNORE, CLASS_COUNTS, CECO_WEIGHT, CECO_SMOOTH, CECO_SCALE, ETF_SEED, DEVICE_BATCH)
_MODEL_OPTIONS = ("ceco_scale", "etf_seed", "device_batch")
_LOSS_OPTIONS = {"aux_weight": "aux_weight", "ce_avg_non_ignore": "ce_avg_non_ignore", "ceco_weight": "weight",
                 "ceco_smooth": "smooth"}


class CeCo(SegmentationMethod):
    name = "ceco"
    summary = ("pixel CE + CeCo: class centers of the decoder output pulled to a fixed simplex ETF (frozen, "
               "training-only branch)")
    paper = "Zhong et al., CVPR 2023"
    flags, model_options, loss_options = _FLAGS, _MODEL_OPTIONS, _LOSS_OPTIONS
    checkpoint_prefixes = _PREFIXES
    takes_labels, needs_class_counts = True, True

    def build_model(self, arch, num_classes, *, ceco_scale=None, etf_seed: int = 0, device_batch=None, **options):
        return build_seg_model(arch, num_classes, method="ce", ceco=self.name,
                               ceco_options={"scale": ceco_scale, "etf_seed": etf_seed, "device_batch": device_batch},
                               **options)

    def validate(self, options: dict) -> None:
        n, batch = options.get("device_batch"), options.get("batch_size")
        if n is not None and batch is not None and batch % n:
            raise ValueError(f"--device-batch {n} must divide --batch-size {batch} (the global batch: "
                             f"--batch-size / --device-batch is the original's GPU count)")

    def build_criterion(self, *, num_classes, class_counts=None, **options):
        return CeCoSegmentationLoss(num_classes, class_counts=class_counts, variant=self.name, **options)


class CeCoL(CeCo):
    name = "cecol"
    summary = "CeCo's linear variant: a random frozen linear center classifier, no normalisation"
    paper = "Zhong et al., CVPR 2023 (linear variant)"
