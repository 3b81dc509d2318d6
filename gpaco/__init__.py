"""gpaco: Parametric Contrastive Learning (PaCo) and Generalized PaCo (GPaCo) for long-tailed recognition.

The public API (docs/api.md) is importable from here::

    from gpaco import GPaCoModel, PaCoLoss, ClassificationMeter

Names load on first use (PEP 562), so ``import gpaco`` stays cheap: nothing imports torch or
timm until a name that needs them is asked for.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # models: a backbone (a timm name, one of ours, or any nn.Module) plus the method's heads
    "GPaCoModel": "gpaco.models.contrastive",
    "PaCoModel": "gpaco.models.contrastive",
    "Classifier": "gpaco.models.contrastive",
    "ContrastiveOutput": "gpaco.models.contrastive",
    "ResLTModel": "gpaco.models.reslt",
    "ResComModel": "gpaco.models.rescom",
    "build_model": "gpaco.methods.rebuild",
    "create_backbone": "gpaco.models.backbones",
    "build_seg_model": "gpaco.models.seg",
    # criteria of the registered methods: criterion(model_output, targets) -> loss
    "PaCoLoss": "gpaco.losses.criteria",
    "CrossEntropyLoss": "gpaco.losses.criteria",
    "MultiTaskLoss": "gpaco.losses.criteria",
    "ResLTCriterion": "gpaco.losses.criteria",
    "ResComCriterion": "gpaco.losses.criteria",
    "MixupCrossEntropy": "gpaco.losses.criteria",
    "LASCriterion": "gpaco.losses.criteria",
    "SegmentationLoss": "gpaco.losses.pixel",
    # the functional losses
    "paco_loss": "gpaco.losses.paco",
    "multitask_loss": "gpaco.losses.supcon",
    "pixel_paco_loss": "gpaco.losses.pixel",
    "balanced_cross_entropy": "gpaco.losses.ce",
    "log_prior_from_counts": "gpaco.losses.paco",
    # the method registry: a method's model and criterion by name
    "get_method": "gpaco.methods",
    "method_names": "gpaco.methods",
    "register_method": "gpaco.methods",
    "Method": "gpaco.methods",
    # metrics
    "ClassificationMeter": "gpaco.metrics",
    "SegMeter": "gpaco.metrics",
    "shot_accuracy": "gpaco.metrics",
    "class_accuracy": "gpaco.metrics",
    "class_fairness": "gpaco.metrics",
    "expected_calibration_error": "gpaco.metrics",
    # data
    "build_mnist_lt": "gpaco.data.demo",
    "read_split": "gpaco.data.splits",
    "class_counts": "gpaco.data.splits",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gpaco' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_EXPORTS))
