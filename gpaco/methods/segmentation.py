"""Segmentation methods: pixel CE and pixel GPaCo on a SegModel
(docs/method.md#pixel-gpaco-for-segmentation)."""
from __future__ import annotations

import argparse

from gpaco.losses.pixel import SegmentationLoss
from gpaco.models.seg import build_seg_model

from .base import SegmentationMethod, flag

AUX_WEIGHT = flag("--aux-weight", type=float, default=0.4, help="weight of the auxiliary FCN head's CE")
CE_AVG_NON_IGNORE = flag("--ce-avg-non-ignore", action=argparse.BooleanOptionalAction, default=False,
                         help="average the CE over labelled pixels only (default: over all pixels, as mmseg 0.x)")
ALPHA = flag("--alpha", type=float, default=0.01, help="weight of the pixel sample positives")
TEMPERATURE = flag("--temperature", type=float, default=0.07, range="(0, inf)", help="pixel contrastive temperature")
NUM_PIXELS = flag("--num-pixels", type=int, default=8192, help="pixels sampled per image for GPaCo (-1: all)")
PACO_WEIGHT = flag("--paco-weight", type=float, default=1.0, help="weight of the pixel GPaCo loss")
LOVASZ_WEIGHT = flag("--lovasz-weight", type=float, default=0.0,
                     help="weight of a Lovasz-softmax loss on the upsampled logits (the original's ADE20K paco11 "
                          "ablation: 1); 0: off")
CLASS_COUNTS = flag("--class-counts", default=None, metavar="FILE",
                    help="image-level class counts, one integer per line (line c: training images containing class "
                         "c; tools/class_counts_seg.py writes it); default: counted from the training masks at start")
EMBED_DIM = flag("--embed-dim", type=int, default=128, help="pixel embedding size of the GPaCo branch")

_PREFIXES = {"backbone": "encoder.", "classifier": "decoder."}


class SegCE(SegmentationMethod):
    name = "ce"
    summary = "pixel cross-entropy (+ 0.4 x auxiliary FCN head CE)"
    paper = "baseline"
    flags = (AUX_WEIGHT, CE_AVG_NON_IGNORE)
    loss_options = ("aux_weight", "ce_avg_non_ignore")
    checkpoint_prefixes = _PREFIXES
    paco = False  # the pixel GPaCo branch and loss

    def build_model(self, arch, num_classes, *, embed_dim: int = 128, **options):
        return build_seg_model(arch, num_classes, method="gpaco" if self.paco else "ce", embed_dim=embed_dim,
                               **options)

    def build_criterion(self, *, num_classes, class_counts=None, **options):
        return SegmentationLoss(num_classes, paco=self.paco, **options)


class SegGPaCo(SegCE):
    name = "gpaco"
    summary = "pixel CE + pixel GPaCo on sampled pixels of the 1/4-resolution embeddings"
    paper = "Cui et al., TPAMI 2023"
    flags = (AUX_WEIGHT, CE_AVG_NON_IGNORE, ALPHA, TEMPERATURE, NUM_PIXELS, PACO_WEIGHT, LOVASZ_WEIGHT, EMBED_DIM)
    model_options = ("embed_dim",)
    loss_options = ("aux_weight", "ce_avg_non_ignore", "alpha", "temperature", "num_pixels", "paco_weight",
                    "lovasz_weight")
    paco = True

    def validate(self, options: dict) -> None:
        if options.get("num_pixels") == 0:
            raise ValueError("--num-pixels must be > 0 (or -1 for all pixels)")
