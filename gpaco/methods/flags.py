"""Flags shared by several methods (a method lists the ones it owns in its row)."""
from __future__ import annotations

import argparse

from .base import flag

PROJ_DIM = flag("--proj-dim", type=int, default=128, help="contrastive embedding size (the original's --moco-dim)")
QUEUE_SIZE = flag("--queue-size", "-K", type=int, default=8192, range="[0, inf)",
                  help="contrast queue size K (--moco-k); a multiple of the global batch")
ALPHA = flag("--alpha", type=float, default=0.05, help="weight of the sample positives (docs/method.md#paco-loss)")
BETA = flag("--beta", type=float, default=1.0, help="weight of the center positive")
GAMMA = flag("--gamma", type=float, default=1.0, help="weight of the sample terms in the denominator")
TEMPERATURE = flag("--temperature", type=float, default=0.2, range="(0, inf)", help="contrastive temperature (--moco-t)")
PRIOR = flag("--prior", action=argparse.BooleanOptionalAction, default=True,
             help="add the log class prior to the center logits (long-tailed recipes); --no-prior for "
                  "balanced data (full ImageNet)")
SMOOTHING = flag("--smoothing", type=float, default=0.0, range="[0, 1)",
                 help="PaCo/GPaCo only: smooths the one-hot CENTER target of the contrastive loss (GPaCo full "
                      "ImageNet: 0.1). Not timm's --smoothing: the cross-entropy's label smoothing is "
                      "--label-smoothing")
LABEL_SMOOTHING = flag("--label-smoothing", type=float, default=0.0, range="[0, 1)",
                       help="label smoothing of the cross-entropy (CE baselines; also of mixup targets), timm's "
                            "--smoothing. PaCo/GPaCo's center target has its own --smoothing")
PROJ_ACT = flag("--proj-act", default="auto", choices=("auto", "relu", "gelu"),
                help="activation of the GPaCo projection MLP; auto: gelu for ViTs (MAE), relu otherwise")
SINGLE_VIEW = flag("--single-view", action=argparse.BooleanOptionalAction, default=False,
                   help="GPaCo with one view: features cat(q, queue), B anchors, q enqueued; needs a single-view "
                        "--aug (default randclsstack)")
MOMENTUM_ENCODER = flag("--momentum-encoder", type=float, default=0.999, help="PaCo key-encoder EMA (--moco-m)")

#: Flags of every queue-based contrastive method, and their model keywords.
CONTRASTIVE = (PROJ_DIM, QUEUE_SIZE, ALPHA, TEMPERATURE, PRIOR)
CONTRASTIVE_MODEL_OPTIONS = ("proj_dim", "queue_size")
