"""Evaluation metrics, one module per kind (conventions: docs/method.md#metrics).

* :mod:`.classification`: top-k, many/medium/few shot accuracy, per-class fairness and the
  DDP-summable :class:`ClassificationMeter`;
* :mod:`.calibration`: MiSLAS's 15-bin expected calibration error;
* :mod:`.robustness`: ImageNet-C mean corruption errors, the ImageNet-R class mask;
* :mod:`.segmentation`: the confusion matrix and :class:`SegMeter` (mIoU).

Every name is importable from ``gpaco.metrics`` itself, as before the split.
"""
# Also importable, outside __all__ as before the split: the AlexNet / ImageNet-R constants,
# ArrayLike, the calibration functions and GROUPS.
from gpaco.data.robustness import ALEXNET_ERRORS, IMAGENET_R_INDICES  # noqa: F401

from ._arrays import ArrayLike  # noqa: F401
from .calibration import ECE_BINS, calibration_bin_index, expected_calibration_error  # noqa: F401
from .classification import (
    FAIRNESS_KEYS,
    GROUPS,
    ClassificationMeter,
    ShotSplit,
    class_accuracy,
    class_fairness,
    shot_accuracy,
    shot_accuracy_from_class_acc,
    format_accuracy,
    shot_groups,
    topk_correct,
)
from .robustness import corruption_errors, imagenet_r_mask, mce_normalised_by
from .segmentation import SegMeter, confusion_matrix

__all__ = [
    "topk_correct", "ShotSplit", "shot_groups", "class_accuracy", "shot_accuracy",
    "shot_accuracy_from_class_acc", "format_accuracy", "class_fairness", "FAIRNESS_KEYS", "ClassificationMeter",
    "corruption_errors", "mce_normalised_by", "imagenet_r_mask",
    "confusion_matrix", "SegMeter",
]
