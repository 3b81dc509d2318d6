"""Every training method of gpaco, one class each (docs/contributing.md#add-a-method).

>>> from gpaco.methods import get_method
>>> m = get_method("gpaco")
>>> model = m.build_model("resnet50", 1000, proj_dim=128, queue_size=8192)
>>> criterion = m.build_criterion(num_classes=1000, class_counts=counts, alpha=0.05, temperature=0.2)
"""
from .base import TASKS, ClassificationMethod, Flag, Method, SegmentationMethod, flag
from .registry import (
    add_method_flags, all_methods, build_criterion, describe, flag_problem, get_method, method_names, method_options,
    register_method, unregister_method,
)
from .adversarial import GKLAT, IKLAT, PGDAT, TRADESAT
from .ce import CE, BalancedCE
from .ceco import CeCo, CeCoL
from .gendd import GenDD, GenDDStage1
from .gpaco import GPaCo
from .kd import GKLKD, IKLKD, KLKD
from .mislas import MiSLAS, MiSLASStage2
from .multitask import MultiTask
from .paco import PaCo
from .rescom import ResCom
from .reslt import ResLT
from .ride_reslt import RIDEResLT
from .rr import RR
from .segmentation import SegCE, SegGPaCo

for _method in (CE, BalancedCE, PaCo, GPaCo, MultiTask, ResLT, RIDEResLT, ResCom, MiSLAS,  # classification
                MiSLASStage2, KLKD, IKLKD, GKLKD, GenDDStage1, GenDD, PGDAT, TRADESAT, IKLAT, GKLAT,
                SegCE, SegGPaCo, CeCo, CeCoL, RR):  # segmentation
    register_method(_method())

__all__ = ["TASKS", "Flag", "Method", "ClassificationMethod", "SegmentationMethod", "flag", "register_method",
           "unregister_method", "get_method", "method_names", "all_methods", "add_method_flags", "build_criterion",
           "method_options", "flag_problem", "describe"]
