"""Every training method of gpaco, one row each (docs/contributing.md#add-a-method).

>>> from gpaco.methods import get_method
>>> m = get_method("gpaco")
>>> model = m.build_model("resnet50", 1000, proj_dim=128, queue_size=8192)
>>> criterion = m.build_criterion(num_classes=1000, class_counts=counts, alpha=0.05, temperature=0.2)
"""
from .registry import (
    TASKS, Flag, Method, add_method_flags, all_methods, build_criterion, describe, flag, get_method, method_names, method_options,
    register_method, unregister_method,
)
from .ce import BALANCED_CE, CE
from .gpaco import GPACO
from .mislas import MISLAS, MISLAS_STAGE2
from .multitask import MULTITASK
from .paco import PACO
from .ceco import SEG_CECO, SEG_CECOL
from .rescom import RESCOM
from .reslt import RESLT
from .rr import SEG_RR
from .segmentation import SEG_CE, SEG_GPACO

for _row in (CE, BALANCED_CE, PACO, GPACO, MULTITASK, RESLT, RESCOM, MISLAS, MISLAS_STAGE2,  # classification
             SEG_CE, SEG_GPACO, SEG_CECO, SEG_CECOL, SEG_RR):  # segmentation
    register_method(_row)

__all__ = ["TASKS", "Flag", "Method", "flag", "register_method", "unregister_method", "get_method", "method_names",
           "all_methods", "add_method_flags", "build_criterion", "method_options", "describe"]
