"""RIDE-ResLT: ResLT heads on RIDE's multi-expert ResNet, the per-expert ResLT losses summed
(docs/method.md#ride-reslt)."""
from __future__ import annotations

from torch import Tensor, nn

from gpaco.losses.ride_reslt import RIDEResLTCriterion
from gpaco.models.ride_reslt import build_ride_reslt

from .base import flag
from .reslt import RESLT_FLAGS, ResLT

RIDE_FLAGS = (
    flag("--ride-experts", type=int, default=3, range="[1, inf)",
         help="experts E, each with its own later stages, ResLT head and classifier on one shared stem (the "
              "original: 3)"),
    flag("--ride-expert-planes", type=int, nargs=2, default=None, metavar=("P3", "P4"),
         help="planes of each expert's layer3 and layer4 (Bottleneck archs; the output is 4 x P4): the original's "
              "ImageNet-LT ResNeXt-50 192 384; default: the arch's own 256 512"),
    flag("--ride-eval-experts", type=int, default=None, range="[1, inf)",
         help="evaluate with the mean of the first V experts' logits; default: all experts (the original's "
              "iNaturalist eval script used 2 of 3, its training-time validation all 3)"),
)


class RIDEResLT(ResLT):
    name = "ride_reslt"
    summary = "RIDE-ResLT: shared stem, E experts each with a ResLT head and classifier, summed ResLT losses"
    paper = "Cui et al., TPAMI 2022 (ResLT README, RIDE experts)"
    flags = tuple(f for f in RESLT_FLAGS if f.dest != "reslt_head") + RIDE_FLAGS
    model_options = {"ride_experts": "num_experts", "ride_expert_planes": "expert_planes",
                     "ride_eval_experts": "eval_experts", "reslt_branch_sizes": "branch_sizes",
                     "reslt_gamma": "eval_gamma", "reslt_pool": "pool",
                     "reslt_original_eval_pooling": "original_eval_pooling"}
    default_aug, cifar_aug = "regular", "cifar_regular"
    checkpoint_prefixes = {"backbone": "backbone.", "head": "experts.", "classifier": "experts."}

    def build_model(self, arch, num_classes, **options):
        return build_ride_reslt(arch, num_classes, **options)

    def build_criterion(self, **options):
        return RIDEResLTCriterion(**options)

    def validate(self, options: dict) -> None:
        super().validate(options)
        experts, used = options.get("ride_experts"), options.get("ride_eval_experts")
        if experts is not None and used is not None and used > experts:
            raise ValueError(f"--ride-eval-experts {used} exceeds --ride-experts {experts}: evaluation averages the "
                             f"first V of the trained experts")
        planes = options.get("ride_expert_planes")
        if planes is not None and min(planes) < 1:
            raise ValueError(f"--ride-expert-planes must be two positive plane counts (layer3 layer4), got {planes}")

    def eval_forward(self, model: nn.Module, images: Tensor) -> Tensor:
        """The original's test-time path: each expert pools before its head when the model was built
        with ``original_eval_pooling``, scores with the gamma-normalised classifier without bias
        (``eval_gamma``), and the first ``eval_experts`` experts are averaged."""
        return model.eval_logits(images)

