"""Backbones, projection heads and the PaCo / GPaCo / CE models.

A registered method's model by name is one layer up: :func:`gpaco.methods.rebuild.build_model`
(``gpaco.build_model``).
"""
from .backbones import create_backbone, list_archs, load_backbone_weights
from .contrastive import (
    Classifier,
    ContrastiveOutput,
    Encoder,
    FeatureQueue,
    GPaCoModel,
    PaCoModel,
    build_classifier,
    build_gpaco,
    build_paco,
)
from .heads import GPaCoProjection, PaCoProjection
from .kd_zoo import (
    KD_ARCHS,
    MDISTILLER_CIFAR,
    MDISTILLER_IMAGENET,
    build_kd_net,
    load_original_checkpoint,
    to_classifier_state_dict,
    to_original_state_dict,
)
from .wideresnet import WRN_ARCHS, WideResNet

__all__ = [
    "create_backbone", "list_archs", "load_backbone_weights",
    "PaCoProjection", "GPaCoProjection",
    "ContrastiveOutput", "FeatureQueue", "Encoder", "Classifier", "PaCoModel", "GPaCoModel",
    "build_classifier", "build_paco", "build_gpaco",
    "KD_ARCHS", "MDISTILLER_CIFAR", "MDISTILLER_IMAGENET", "build_kd_net", "load_original_checkpoint",
    "to_classifier_state_dict", "to_original_state_dict",
    "WRN_ARCHS", "WideResNet",
]
