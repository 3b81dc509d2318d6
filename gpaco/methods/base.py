"""A training method: its flags, and hooks the engine calls (each with a default).

A method is a subclass of :class:`ClassificationMethod` or :class:`SegmentationMethod` whose
class attributes describe it (name, flags, views, checkpoint prefixes...) and whose methods
are its behaviour. The engine (:func:`gpaco.engine.fit.fit`) owns the run; the method owns

==============================  ==============================================================
hook                            default
==============================  ==============================================================
``build_model(arch, C, **kw)``  abstract: the network (``kw``: backbone and model options)
``build_criterion(**kw)``       abstract: the loss module (``num_classes``, ``class_counts``, loss options)
``validate(options)``           options that cannot work together raise ``ValueError`` naming a flag
``prepare(model, options)``     fresh runs only, after the model is built (MiSLAS stage 2: load stage 1)
``lr_scales(model, options)``   ``{parameter-name prefix: LR factor}`` or None (one optimizer group)
``setup(ctx)``                  once per run, before DDP wraps the model (a teacher, class statistics)
``training_step(ctx, batch)``   forward + loss -> :class:`~gpaco.engine.step.StepOutput`
``after_optimizer_step(ctx)``   after each optimizer step (a weight perturbation is taken back)
``eval_forward(model, x)``      test-time logits [B, C] (``model(x)``), or ``{"logits": ..., head: ...}``: extra heads measured apart
``on_train_epoch_end(ctx)``     after every epoch, before validation (statistics all-reduced)
``state_dict()`` / ``load...``  the method's own state in ``checkpoint.pth`` (``{}``)
==============================  ==============================================================

The registry holds one instance per method; every run works on its own copy
(:meth:`Method.for_run`), so a hook may keep per-run state on ``self``.
"""
from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from torch import Tensor, nn

from gpaco.engine.step import Batch, FitContext, StepOutput
from gpaco.losses.criteria import output_logits
from gpaco.models.view_bn import set_bn_device_batch

__all__ = ["Flag", "flag", "Method", "ClassificationMethod", "SegmentationMethod", "TASKS"]

TASKS = ("classification", "segmentation")


@dataclass(frozen=True)
class Flag:
    """One command-line flag a method owns: ``argparse.add_argument(*names, **kwargs)``.

    ``range``: the values allowed, as an interval ``"[0, 1)"``, ``"(0, inf)"``; float flags
    must also be finite. Several methods may own the same flag (PaCo and GPaCo both own
    ``--alpha``): it is added once, and its definitions must agree.
    """

    names: Tuple[str, ...]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    range: Optional[str] = None

    def __post_init__(self) -> None:
        if self.range is not None:
            _parse_range(self.range)  # a typo in a row fails at import, not in a user's run

    @property
    def dest(self) -> str:
        return self.kwargs.get("dest") or self.names[0].lstrip("-").replace("-", "_")

    def problem(self, value: Any) -> Optional[str]:
        """Why ``value`` is not allowed (None: it is)."""
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return f"{self.names[0]} must be a finite number, got {value}"
        if self.range is None:
            return None
        low, high, low_open, high_open = _parse_range(self.range)
        below = value <= low if low_open else value < low
        above = value >= high if high_open else value > high
        if not (below or above):
            return None
        if math.isinf(high):
            return f"{self.names[0]} must be {'>' if low_open else '>='} {low:g}, got {value}"
        return f"{self.names[0]} must be in {self.range}, got {value}"


def _parse_range(text: str) -> Tuple[float, float, bool, bool]:
    """``"[0, 1)"`` -> (0.0, 1.0, low open?, high open?)."""
    body = text.strip()
    if len(body) < 5 or body[0] not in "[(" or body[-1] not in "])" or "," not in body:
        raise ValueError(f"flag range {text!r} is not an interval like '[0, 1)' or '(0, inf)'")
    low, high = (float(x) for x in body[1:-1].split(","))
    return low, high, body[0] == "(", body[-1] == ")"


def flag(*names: str, range: Optional[str] = None, **kwargs: Any) -> Flag:  # noqa: A002 (the interval's name)
    return Flag(tuple(names), kwargs, range)


class Method:
    """Base of every method (see the module docstring for the hooks).

    Class attributes:
        name: the ``--method`` value. task: ``classification`` or ``segmentation``.
        summary / paper: one line each for ``--help`` and the docs table.
        flags: the flags this method owns.
        model_options / loss_options: the flag ``dest`` names passed to ``build_model`` /
            ``build_criterion`` as keywords; a mapping ``{dest: keyword}`` renames them.
        checkpoint_prefixes: ``role -> state-dict prefix`` of the model (roles ``backbone``,
            ``classifier``, ``projection``, ``backbone_k``, ``projection_k``, ``queue``, ``head``):
            how a checkpoint of another layout is placed into this model.
        sampler: ``random`` (shuffled, every image once per epoch) or ``class_aware``
            (class-balanced batches).
        views: augmented views per training sample the loader yields (2: two-view methods).
        paired_views: a one-view method that also takes a two-view ``--aug`` (adversarial
            training's batch of a plain and an AutoAugment view of every image).
        drop_last: the random sampler drops each epoch's last, partial batch (True; a queue
            needs a constant batch) or keeps it (False, as MiSLAS's original loader).
    """

    name: str = ""
    task: str = ""
    summary: str = ""
    paper: str = ""
    flags: Tuple[Flag, ...] = ()
    model_options: Union[Tuple[str, ...], Mapping[str, str]] = ()
    loss_options: Union[Tuple[str, ...], Mapping[str, str]] = ()
    checkpoint_prefixes: Mapping[str, str] = {}
    sampler: str = "random"
    views: int = 1
    paired_views: bool = False
    drop_last: bool = True

    def __init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"method {self.name!r}: task must be one of {TASKS}, got {self.task!r}")
        if self.sampler not in ("random", "class_aware"):
            raise ValueError(f"method {self.name!r}: sampler must be 'random' or 'class_aware', got {self.sampler!r}")

    def __repr__(self) -> str:
        return f"<{self.task} method {self.name!r}>"

    def for_run(self) -> "Method":
        """This method's copy for one run (hooks may keep per-run state on it)."""
        return copy.copy(self)

    # ------------------------------------------------------------------ building

    def build_model(self, arch: Union[str, nn.Module], num_classes: int, **options: Any) -> nn.Module:
        raise NotImplementedError(f"method {self.name!r} has no build_model")

    def build_criterion(self, **options: Any) -> nn.Module:
        raise NotImplementedError(f"method {self.name!r} has no build_criterion")

    def validate(self, options: Dict[str, Any]) -> None:
        """Raise ``ValueError`` naming a flag when the options cannot work together."""

    def prepare(self, model: nn.Module, options: Dict[str, Any]) -> Optional[str]:
        """Fresh runs only, after the model is built; a log line or None. Raises
        ``FileNotFoundError`` / ``ValueError`` naming its flag."""
        return None

    def options_from_weights(self, state: Mapping[str, Any]) -> Dict[str, Any]:
        """Model options (``build_model`` keywords) a checkpoint's tensors imply, for a file that
        does not record its training flags (another codebase's); ``{}`` when none."""
        return {}

    def lr_scales(self, model: nn.Module, options: Dict[str, Any]) -> Optional[Dict[str, float]]:
        """``{parameter-name prefix: LR factor}``: one optimizer group per prefix (the rest at 1)."""
        return None

    # ------------------------------------------------------------------ the run

    def setup(self, ctx: FitContext) -> None:
        """Once per run, after the model, criterion and optimizer exist, before DDP wraps the model."""

    def training_step(self, ctx: FitContext, batch: Batch) -> StepOutput:
        raise NotImplementedError

    def after_optimizer_step(self, ctx: FitContext) -> None:
        """After each optimizer step (also one that had no gradient: a skipped non-finite step)."""

    def eval_forward(self, model: nn.Module, images: Tensor) -> Tensor:
        """Test-time logits [B, C] of an image batch."""
        return model(images)

    def on_train_epoch_end(self, ctx: FitContext) -> None:
        """After every training epoch (every rank; collectives allowed), before validation."""

    def state_dict(self) -> Dict[str, Any]:
        """The method's own state saved in ``checkpoint.pth`` (not the model's)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"method {self.name!r} keeps no state, but the checkpoint holds {sorted(state)}")


def _with_bn_device_batch(build):
    """``build_model`` that also takes ``bn_device_batch`` (``--bn-device-batch``): the built
    model's BatchNorms normalise groups of that many samples, whatever the method's builder."""
    @functools.wraps(build)
    def build_model(self, arch, num_classes, *, bn_device_batch: Optional[int] = None, **options):
        model = build(self, arch, num_classes, **options)
        if bn_device_batch is not None:
            set_bn_device_batch(model, bn_device_batch)
        return model

    build_model.takes_bn_device_batch = True
    return build_model


class ClassificationMethod(Method):
    """A classification method. ``takes_labels``: the default step calls ``model(view_1, view_2 or
    None, labels)`` (the contrastive models enqueue the labels) instead of ``model(images)``;
    ``default_aug`` / ``cifar_aug``: the ``--aug`` of split datasets / CIFAR when none is given.

    Every subclass's ``build_model`` also takes ``bn_device_batch`` (``--bn-device-batch``,
    recorded with the other build options in a checkpoint's ``model_config``): it is applied to
    the built model here, so a method's builder never sees it."""

    task = "classification"
    takes_labels: bool = False
    default_aug: Optional[str] = None
    cifar_aug: Optional[str] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        build = cls.__dict__.get("build_model")
        if build is not None and not getattr(build, "takes_bn_device_batch", False):
            cls.build_model = _with_bn_device_batch(build)

    def __init__(self) -> None:
        super().__init__()
        if self.views not in (1, 2):
            raise ValueError(f"method {self.name!r}: views must be 1 or 2, got {self.views}")

    @property
    def contrastive(self) -> bool:
        """The model keeps a queue of past features (its batch must divide the queue size)."""
        return "queue" in self.checkpoint_prefixes

    def needs_labels(self, options: Mapping[str, Any]) -> bool:
        """Whether a training step with these options reads the labels: ``--dataset webdataset``
        (unlabelled images, every label -1) refuses a method that does."""
        return True

    def forward_train(self, model: nn.Module, images, targets: Tensor):
        """The training forward: two views ``model(v1, v2, labels)``, one view with labels
        ``model(v, None, labels)``, a classifier ``model(images)``."""
        if isinstance(images, list):
            return model(images[0], images[1] if len(images) == 2 else None, targets)
        if self.takes_labels:
            return model(images, None, targets)
        return model(images)

    def training_step(self, ctx: FitContext, batch: Batch) -> StepOutput:
        with ctx.autocast():
            output = self.forward_train(ctx.model, batch.images, batch.targets)
        loss = ctx.criterion(output, batch.loss_targets)
        return StepOutput(loss, logits=output_logits(output, batch.targets.shape[0]))


class SegmentationMethod(Method):
    """A segmentation method. ``takes_labels``: the training forward is ``model(images,
    train_outputs=True, labels=labels)`` (CeCo and RR branches); ``needs_class_counts``: the
    criterion's ``class_counts=`` are the training set's image-level class counts."""

    task = "segmentation"
    takes_labels: bool = False
    needs_class_counts: bool = False

    def training_step(self, ctx: FitContext, batch: Batch) -> StepOutput:
        with ctx.autocast():
            if self.takes_labels:
                outputs = ctx.model(batch.images, train_outputs=True, labels=batch.targets)
            else:
                outputs = ctx.model(batch.images, train_outputs=True)
        loss, parts = ctx.criterion(outputs, batch.targets, generator=ctx.generator)
        return StepOutput(loss, parts=parts)
