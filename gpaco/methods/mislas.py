"""MiSLAS (CVPR 2021): stage 1 trains with mixup; stage 2, a second run, loads stage 1,
freezes the trunk (optionally shifting its BatchNorm statistics) and fine-tunes the
classifier and a per-class logit scale with label-aware smoothing on class-balanced batches
(docs/method.md#mislas-label-aware-smoothing)."""
from __future__ import annotations

import argparse

from gpaco.losses.criteria import LASCriterion, MixupCrossEntropy
from gpaco.models.mislas import build_lws_classifier, build_mixup_classifier, load_stage1

from .registry import Method, flag

_PREFIXES = {"backbone": "backbone.", "classifier": "fc."}

MISLAS = Method(
    name="mislas", task="classification",
    summary="MiSLAS stage 1: mixup (Beta(a, a) per batch, random partner) + CE; stage 2 is mislas_stage2",
    build_model=build_mixup_classifier, build_criterion=MixupCrossEntropy,
    flags=(flag("--mixup-alpha", type=float, default=0.2,
                help="MiSLAS stage-1 mixup: lambda ~ Beta(a, a) once per batch (CIFAR 1.0, large datasets 0.2); "
                     "0: no mixing"),),
    model_options=("mixup_alpha",), views=1, takes_labels=True, default_aug="regular", cifar_aug="cifar_crop_flip",
    checkpoint_prefixes=_PREFIXES, paper="Zhong et al., CVPR 2021",
)


def _prepare(model, options: dict) -> str:
    path = options.get("stage1")
    if not path:
        raise ValueError("--method mislas_stage2 needs --stage1 PATH (the best.pth of a --method mislas run)")
    try:
        return load_stage1(model, path)
    except FileNotFoundError:
        raise FileNotFoundError(f"--stage1 {path}: no such file") from None
    except ValueError as e:
        raise ValueError(f"--stage1: {e}") from None


def _validate(options: dict) -> None:
    if not options.get("stage1") and not options.get("dry_run"):
        raise ValueError("--method mislas_stage2 needs --stage1 PATH (the best.pth of a --method mislas run)")
    if options.get("las_shape") == "exp" and options.get("las_power") is None:
        raise ValueError("--las-shape exp needs --las-power")
    if options.get("lr_factor", 1.0) <= 0:
        raise ValueError(f"--lr-factor must be > 0, got {options['lr_factor']}")


MISLAS_STAGE2 = Method(
    name="mislas_stage2", task="classification",
    summary="MiSLAS stage 2: frozen stage-1 trunk (+ BN shift), classifier + LWS, label-aware smoothing, "
            "class-balanced batches",
    build_model=build_lws_classifier, build_criterion=LASCriterion,
    flags=(
        flag("--stage1", default=None, metavar="PATH", help="the stage-1 checkpoint (best.pth of --method mislas)"),
        flag("--shift-bn", action=argparse.BooleanOptionalAction, default=False,
             help="re-estimate the frozen trunk's BatchNorm statistics on the balanced batches"),
        flag("--lr-factor", type=float, default=0.05,
             help="LR factor of the classifier fc (the LWS scale runs at the plain LR)"),
        flag("--las-head", type=float, default=0.3, help="label-aware smoothing of the most frequent class"),
        flag("--las-tail", type=float, default=0.0, help="label-aware smoothing of the rarest class"),
        flag("--las-shape", default="concave", choices=("concave", "linear", "convex", "exp"),
             help="how the smoothing falls from head to tail"),
        flag("--las-power", type=float, default=None, help="exponent of --las-shape exp"),
    ),
    model_options=("shift_bn",),
    loss_options={"las_head": "head", "las_tail": "tail", "las_shape": "shape", "las_power": "power"},
    views=1, takes_labels=False, default_aug="regular", cifar_aug="cifar_crop_flip",
    checkpoint_prefixes={**_PREFIXES, "head": "lws."}, validate=_validate, paper="Zhong et al., CVPR 2021",
    sampler="class_aware", prepare=_prepare, lr_scales=lambda model, options: {"fc.": options["lr_factor"]},
)
