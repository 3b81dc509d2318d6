"""The training flags a study starts from: the demos' (``sh/demo.sh``, ``sh/demo_seg.sh``).

A study method is one or more stages (MiSLAS: stage 1, then stage 2 on its ``best.pth``); each
stage is one run of ``tools/train.py`` / ``tools/train_seg.py``. A method without a preset runs
with :data:`COMMON` alone and its own defaults. ``{previous}`` in a stage's flags is the run
folder of the stage before it.

These flags are made for the demos' data (32 px MNIST digits, 48 px digit scenes): on other data
``--arch``, ``--aug``, ``--norm`` and the flags after ``--`` of ``gpaco-study`` override them.
``tests/test_study.py`` checks that they still equal the demo scripts' flags.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Tuple

__all__ = ["Stage", "COMMON", "PRESETS", "DEFAULT_METHODS", "ALL_METHODS", "DEMO_DATA", "TASKS", "stages_of"]

TASKS = ("classification", "segmentation")


class Stage(NamedTuple):
    """One training run of a study method: the ``--method`` it trains, its own flags, and the
    suffix of its folder name (``""``: the method's own folder; the last stage always has it)."""
    method: str
    flags: Tuple[str, ...] = ()
    folder_suffix: str = ""


#: flags of every run of a task (the demos' ``common`` arrays without data, seed, output and resume)
COMMON: Dict[str, Tuple[str, ...]] = {
    "classification": ("--arch", "resnet8", "--image-size", "32", "--resize-size", "32", "--norm", "mnist",
                       "--epochs", "30", "--batch-size", "64", "--lr", "0.05", "--wd", "5e-4", "--warmup-epochs", "2",
                       "--workers", "0", "--print-freq", "0"),
    "segmentation": ("--dataset", "demo", "--arch", "smp:deeplabv3plus:tu-resnet10t:128", "--img-scale", "48", "48",
                     "--crop-size", "48", "48", "--ratio-range", "0.75", "1.25", "--flip-prob", "0", "--iters", "700",
                     "--batch-size", "8", "--optimizer", "adamw", "--lr", "3e-3", "--wd", "1e-4", "--power", "0.9",
                     "--min-lr", "0", "--eval-interval", "0", "--ckpt-interval", "700", "--val-split", "val",
                     "--test-split", "test", "--workers", "0", "--print-freq", "100"),
}

#: method -> its stages (the per-method flags of the demos; why each value: the comments there)
PRESETS: Dict[str, Dict[str, Tuple[Stage, ...]]] = {
    "classification": {
        "ce": (Stage("ce", ("--aug", "digits")),),
        "balanced_ce": (Stage("balanced_ce", ("--aug", "digits")),),
        "gpaco": (Stage("gpaco", ("--aug", "digits_digits", "--alpha", "0.005", "--temperature", "0.2",
                                  "--queue-size", "256")),),
        "reslt": (Stage("reslt", ("--aug", "digits", "--reslt-beta", "0.998", "--reslt-branch-sizes", "8", "6")),),
        "rescom": (Stage("rescom", ("--aug", "digits_digits", "--proj-dim", "32", "--temperature", "0.2",
                                    "--rescom-con-weight", "0.5", "--rescom-queue-per-class", "10",
                                    "--rescom-positives", "1", "--rescom-negatives", "90", "--rescom-beta",
                                    "0.999999")),),
        "mislas": (Stage("mislas", ("--aug", "digits", "--mixup-alpha", "1.0"), "_stage1"),
                   Stage("mislas_stage2", ("--aug", "digits", "--epochs", "3", "--lr", "0.05", "--schedule",
                                           "cosine_plain", "--stage1", "{previous}/best.pth", "--shift-bn",
                                           "--lr-factor", "0.2", "--las-head", "0.3", "--las-tail", "0.0"))),
    },
    "segmentation": {
        "ce": (Stage("ce"),),
        "gpaco": (Stage("gpaco", ("--alpha", "0.01", "--temperature", "0.07", "--num-pixels", "8192")),),
        "ceco": (Stage("ceco"),),
        "cecol": (Stage("cecol"),),
        "rr": (Stage("rr"),),
    },
}

DEFAULT_METHODS = {"classification": ("ce", "balanced_ce", "gpaco"), "segmentation": ("ce", "gpaco", "ceco")}
#: ``--methods all``
ALL_METHODS = {"classification": ("ce", "balanced_ce", "gpaco", "reslt", "rescom", "mislas"),
               "segmentation": ("ce", "gpaco", "ceco")}
#: where the study builds the demo data when no data is given (relative to the working directory)
DEMO_DATA = {"classification": "data/demo_mnist_lt", "segmentation": "data/demo_seg"}


def stages_of(task: str, method: str) -> Tuple[Stage, ...]:
    """The stages of ``method`` (one plain stage when it has no preset)."""
    return PRESETS[task].get(method, (Stage(method),))
