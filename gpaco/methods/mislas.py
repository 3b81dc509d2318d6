"""MiSLAS (CVPR 2021): stage 1 trains with mixup; stage 2, a second run, loads stage 1,
freezes the trunk (optionally shifting its BatchNorm statistics) and fine-tunes the
classifier and a per-class logit scale with label-aware smoothing on class-balanced batches
(docs/method.md#mislas-label-aware-smoothing). ``--new-last-block`` (both stages) is the
original's Places-LT network: a pretrained trunk frozen in eval mode whose new last residual
block trains with the classifier (:mod:`gpaco.models.mislas`)."""
from __future__ import annotations

import argparse
from typing import Tuple

import numpy as np
import torch
from torch import Tensor

from gpaco.engine.step import Batch, FitContext, StepOutput
from gpaco.losses.criteria import LASCriterion, MixupCrossEntropy, MixupOutput
from gpaco.models.mislas import build_lws_classifier, build_stage1_classifier, load_stage1

from .base import ClassificationMethod, flag

_PREFIXES = {"backbone": "backbone.", "classifier": "fc."}
_NEEDS_STAGE1 = "--method mislas_stage2 needs --stage1 PATH (the best.pth of a --method mislas run)"
# Both stages own it: stage 2 must know which part of the trunk stage 1 trained.
_NEW_LAST_BLOCK = flag(
    "--new-last-block", action=argparse.BooleanOptionalAction, default=False,
    help="MiSLAS's Places-LT network: replace the trunk's last residual block by a new, randomly initialised one "
         "and train only it and the classifier, the rest of the (--pretrained) trunk frozen in eval mode; in stage 2 "
         "--shift-bn re-estimates only that block's BatchNorm statistics (give it to both stages)")


def _check_freeze(options: dict) -> None:
    if options.get("new_last_block") and options.get("freeze", "none") != "none":
        raise ValueError(f"--new-last-block already freezes all of the trunk except its new last block; drop "
                         f"--freeze {options['freeze']}")


def mix_batch(images: Tensor, labels: Tensor, alpha: float) -> Tuple[Tensor, Tensor, float]:
    """MiSLAS's mixup: ``lam ~ Beta(alpha, alpha)`` once per batch (NumPy's global generator, as
    the original draws it; ``alpha`` 0: no mixing) and a random partner ``perm`` (torch's
    global generator). Returns (``lam * x + (1 - lam) * x[perm]``, ``labels[perm]``, lam)."""
    lam = float(np.random.beta(alpha, alpha)) if alpha > 0 else 1.0
    perm = torch.randperm(images.shape[0], device=images.device)
    return lam * images + (1.0 - lam) * images[perm], labels[perm], lam


class MiSLAS(ClassificationMethod):
    name = "mislas"
    summary = "MiSLAS stage 1: mixup (Beta(a, a) per batch, random partner) + CE; stage 2 is mislas_stage2"
    paper = "Zhong et al., CVPR 2021"
    flags = (flag("--mixup-alpha", type=float, default=0.2, range="[0, inf)",
                  help="MiSLAS stage-1 mixup: lambda ~ Beta(a, a) once per batch (CIFAR 1.0, large datasets 0.2); "
                       "0: no mixing"),
             _NEW_LAST_BLOCK)
    model_options = ("new_last_block",)
    default_aug, cifar_aug = "regular", "cifar_crop_flip"
    checkpoint_prefixes = _PREFIXES
    drop_last = False  # the original's loader keeps the last, partial batch of every epoch

    def build_model(self, arch, num_classes, **options):
        return build_stage1_classifier(arch, num_classes, **options)

    def validate(self, options: dict) -> None:
        _check_freeze(options)

    def prepare(self, model, options: dict):
        if options.get("new_last_block") and not options.get("pretrained"):
            return ("warning: --new-last-block without --pretrained: the frozen trunk keeps its random weights "
                    "(MiSLAS's Places-LT trunk is ImageNet-pretrained)")
        return None

    def build_criterion(self, **options):
        return MixupCrossEntropy(**options)

    def training_step(self, ctx: FitContext, batch: Batch) -> StepOutput:
        labels = batch.targets.long()
        mixed, partners, lam = mix_batch(batch.images, labels, ctx.options["mixup_alpha"])
        with ctx.autocast():
            logits = ctx.model(mixed)
        loss = ctx.criterion(MixupOutput(logits, labels, partners, lam), labels)
        return StepOutput(loss, logits=logits)


class MiSLASStage2(ClassificationMethod):
    name = "mislas_stage2"
    summary = ("MiSLAS stage 2: frozen stage-1 trunk (+ BN shift), classifier + LWS, label-aware smoothing, "
               "class-balanced batches")
    paper = "Zhong et al., CVPR 2021"
    flags = (
        flag("--stage1", default=None, metavar="PATH", help="the stage-1 checkpoint (best.pth of --method mislas)"),
        flag("--shift-bn", action=argparse.BooleanOptionalAction, default=False,
             help="re-estimate the frozen trunk's BatchNorm statistics on the balanced batches (with "
                  "--new-last-block: that block's only)"),
        _NEW_LAST_BLOCK,
        flag("--lr-factor", type=float, default=0.05, range="(0, inf)",
             help="LR factor of the classifier fc (the LWS scale runs at the plain LR)"),
        flag("--las-head", type=float, default=0.3, help="label-aware smoothing of the most frequent class"),
        flag("--las-tail", type=float, default=0.0, help="label-aware smoothing of the rarest class"),
        flag("--las-shape", default="concave", choices=("concave", "linear", "convex", "exp"),
             help="how the smoothing falls from head to tail"),
        flag("--las-power", type=float, default=None, help="exponent of --las-shape exp"),
    )
    model_options = ("shift_bn", "new_last_block")
    loss_options = {"las_head": "head", "las_tail": "tail", "las_shape": "shape", "las_power": "power"}
    default_aug, cifar_aug = "regular", "cifar_crop_flip"
    checkpoint_prefixes = {**_PREFIXES, "head": "lws."}
    sampler = "class_aware"

    def build_model(self, arch, num_classes, **options):
        return build_lws_classifier(arch, num_classes, **options)

    def build_criterion(self, **options):
        return LASCriterion(**options)

    def validate(self, options: dict) -> None:
        if not options.get("stage1") and not options.get("dry_run"):
            raise ValueError(_NEEDS_STAGE1)
        if options.get("las_shape") == "exp" and options.get("las_power") is None:
            raise ValueError("--las-shape exp needs --las-power")
        _check_freeze(options)

    def prepare(self, model, options: dict) -> str:
        path = options.get("stage1")
        if not path:
            raise ValueError(_NEEDS_STAGE1)
        try:
            return load_stage1(model, path)
        except FileNotFoundError:
            raise FileNotFoundError(f"--stage1 {path}: no such file") from None
        except ValueError as e:
            raise ValueError(f"--stage1: {e}") from None

    def lr_scales(self, model, options: dict):
        return {"fc.": options["lr_factor"]}
