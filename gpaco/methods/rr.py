"""Region Rebalance (RR) for segmentation: a region classifier with an "absent" class and a
log-frequency prior; its soft-region bias is added to the pixel logits in training and at
inference (docs/method.md#region-rebalance-for-segmentation)."""
from __future__ import annotations

import argparse

from gpaco.losses.rr import RRSegmentationLoss
from gpaco.models.seg import build_seg_model

from .base import SegmentationMethod, flag
from .segmentation import AUX_WEIGHT, CLASS_COUNTS

RR_FLAGS = (
    flag("--rr-main-w", type=float, default=1.0, help="weight of the three pixel CEs (L1-L3)"),
    flag("--rr-region-w", type=float, default=1.0, help="weight of the two region CEs (L4, L5)"),
    flag("--rr-smooth", type=float, default=1.0,
         help="target mass on the true region class (1: no smoothing; the rest is spread over the other C)"),
    flag("--rr-neg-w", type=float, default=1.0, help="weight of the 'absent' rows of the region CEs"),
    flag("--rr-prior", action=argparse.BooleanOptionalAction, default=True,
         help="add the log image-level class frequency (and log 1 for 'absent') to the region logits"),
    flag("--rr-neg-w-precedence-bug", action=argparse.BooleanOptionalAction, default=False,
         help="reproduce the original code's row weights (every row 1 when --rr-neg-w != 0, absent rows 0 "
              "when it is 0) instead of the paper's (absent rows --rr-neg-w)"),
)


class RR(SegmentationMethod):
    name = "rr"
    summary = ("Region Rebalance: region classifier with an 'absent' class and a log prior; its per-image class "
               "bias is added to the pixel logits (also at test time)")
    paper = "Cui et al., arXiv 2204.01969"
    flags = (AUX_WEIGHT, CLASS_COUNTS) + RR_FLAGS
    loss_options = {"aux_weight": "aux_weight", "rr_main_w": "main_w", "rr_region_w": "region_w",
                    "rr_smooth": "smooth", "rr_neg_w": "neg_w", "rr_prior": "prior",
                    "rr_neg_w_precedence_bug": "neg_w_precedence_bug"}
    checkpoint_prefixes = {"backbone": "encoder.", "classifier": "decoder."}
    takes_labels, needs_class_counts = True, True

    def build_model(self, arch, num_classes, **options):
        return build_seg_model(arch, num_classes, method="ce", region=True, **options)

    def build_criterion(self, *, num_classes, class_counts=None, **options):
        return RRSegmentationLoss(num_classes, class_counts=class_counts, **options)
