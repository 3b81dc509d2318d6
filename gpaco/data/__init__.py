"""Data: split-file datasets, CIFAR-LT, augmentation strategies by name, the MNIST-LT demo."""
from .cifar_lt import CIFARLT, lt_class_counts
from .demo import build_mnist_lt
from .splits import DataError, SplitDataset, class_counts, infer_num_classes, read_split
from .transforms import (
    NORMALIZATION,
    SINGLE_VIEW_STRATEGIES,
    TWO_VIEW_STRATEGIES,
    build_eval_transform,
    build_train_transform,
)

__all__ = [
    "DataError", "read_split", "infer_num_classes", "class_counts", "SplitDataset",
    "CIFARLT", "lt_class_counts", "build_mnist_lt",
    "build_train_transform", "build_eval_transform", "NORMALIZATION",
    "TWO_VIEW_STRATEGIES", "SINGLE_VIEW_STRATEGIES",
]
