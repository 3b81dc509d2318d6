"""The method registry: every training method is one :class:`Method` row.

A method names its model builder, its criterion (an ``nn.Module`` of :mod:`gpaco.losses`),
the flags it owns and what the engine must know about it (views per sample, whether the
model takes the labels, default augmentation, checkpoint key prefixes). ``--method``
choices, model building, the criterion, checkpoint conversion and the docs table all read
this registry; adding a method is one file and one :func:`register_method` call
(docs/contributing.md).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from torch import nn

__all__ = ["Flag", "Method", "register_method", "get_method", "method_names", "all_methods", "add_method_flags",
           "method_options", "build_criterion", "TASKS"]

TASKS = ("classification", "segmentation")


@dataclass(frozen=True)
class Flag:
    """One command-line flag a method owns: ``argparse.add_argument(*names, **kwargs)``.

    Several methods may own the same flag (PaCo and GPaCo both own ``--alpha``): it is
    added once, and its definitions must agree.
    """

    names: Tuple[str, ...]
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def dest(self) -> str:
        return self.kwargs.get("dest") or self.names[0].lstrip("-").replace("-", "_")


def flag(*names: str, **kwargs: Any) -> Flag:
    return Flag(tuple(names), kwargs)


@dataclass(frozen=True)
class Method:
    """A training method.

    Attributes:
        name: the ``--method`` value.
        task: ``classification`` or ``segmentation``.
        summary: one line for ``--help`` and the docs table.
        build_model: ``(arch, num_classes, **model_options) -> nn.Module``.
        build_criterion: ``(class_counts=..., num_classes=..., **loss_options) -> nn.Module``;
            called as ``criterion(model_output, targets)`` in training.
        flags: the flags this method owns.
        model_options / loss_options: the flag ``dest`` names passed to ``build_model`` /
            ``build_criterion`` as keywords; a mapping ``{dest: keyword}`` renames them.
        views: augmented views per training sample the loader yields (2: two-view methods).
        takes_labels: the training forward is ``model(view_1, view_2 or None, labels)``
            (the contrastive models, which enqueue the labels) instead of ``model(images)``;
            segmentation: ``model(images, train_outputs=True, labels=labels)`` (CeCo and RR
            branches) instead of ``model(images, train_outputs=True)``.
        default_aug / cifar_aug: the ``--aug`` of split datasets / CIFAR when none is given.
        checkpoint_prefixes: ``role -> state-dict prefix`` of the model (roles ``backbone``,
            ``classifier``, ``projection``, ``backbone_k``, ``projection_k``, ``queue``):
            how a checkpoint of another layout is placed into this model.
        validate: optional ``(options: dict) -> None`` that raises ``ValueError`` naming a
            flag when the method's options cannot work together.
        needs_class_counts: segmentation: the criterion's ``class_counts=`` are the training
            set's image-level class counts (read from ``--class-counts`` or counted from the
            training masks at start); other segmentation criteria get ``class_counts=None``.
        paper: where the method comes from (the docs table).
        sampler: the training sampler: ``random`` (shuffled, every image once per epoch) or
            ``class_aware`` (class-balanced batches, :class:`gpaco.data.samplers.ClassAwareSampler`).
        prepare: optional ``(model, options: dict) -> str`` run once on a fresh (not resumed)
            run after the model is built, e.g. MiSLAS stage 2 loading stage 1; returns a log
            line; raises ``FileNotFoundError`` / ``ValueError`` naming its flag.
        lr_scales: optional ``(model, options: dict) -> {parameter-name prefix: LR factor}``;
            the optimizer then has one group per prefix (others at factor 1).
    """

    name: str
    task: str
    summary: str
    build_model: Callable[..., nn.Module]
    build_criterion: Callable[..., nn.Module]
    flags: Tuple[Flag, ...] = ()
    model_options: Union[Tuple[str, ...], Mapping[str, str]] = ()
    loss_options: Union[Tuple[str, ...], Mapping[str, str]] = ()
    views: int = 1
    takes_labels: bool = False
    default_aug: Optional[str] = None
    cifar_aug: Optional[str] = None
    checkpoint_prefixes: Mapping[str, str] = field(default_factory=dict)
    validate: Optional[Callable[[Dict[str, Any]], None]] = None
    paper: str = ""
    needs_class_counts: bool = False
    sampler: str = "random"
    prepare: Optional[Callable[[nn.Module, Dict[str, Any]], str]] = None
    lr_scales: Optional[Callable[[nn.Module, Dict[str, Any]], Dict[str, float]]] = None

    def __post_init__(self) -> None:
        if self.sampler not in ("random", "class_aware"):
            raise ValueError(f"method {self.name!r}: sampler must be 'random' or 'class_aware', got {self.sampler!r}")
        if self.task not in TASKS:
            raise ValueError(f"method {self.name!r}: task must be one of {TASKS}, got {self.task!r}")
        if self.views not in (1, 2):
            raise ValueError(f"method {self.name!r}: views must be 1 or 2, got {self.views}")

    @property
    def contrastive(self) -> bool:
        """The model keeps a queue of past features (its batch must divide the queue size)."""
        return "queue" in self.checkpoint_prefixes


_REGISTRY: Dict[Tuple[str, str], Method] = {}


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to the registry (``replace=True`` overrides an existing row)."""
    key = (method.task, method.name)
    if key in _REGISTRY and not replace:
        raise ValueError(f"a {method.task} method named {method.name!r} is already registered")
    _REGISTRY[key] = method
    return method


def unregister_method(name: str, task: str = "classification") -> None:
    _REGISTRY.pop((task, name), None)


def get_method(name: str, task: str = "classification") -> Method:
    try:
        return _REGISTRY[(task, name.lower())]
    except KeyError:
        raise ValueError(f"unknown {task} method {name!r}; choose one of {', '.join(method_names(task))}") from None


def method_names(task: str = "classification") -> Tuple[str, ...]:
    return tuple(name for t, name in _REGISTRY if t == task)


def all_methods(task: Optional[str] = None) -> List[Method]:
    return [m for (t, _), m in _REGISTRY.items() if task is None or t == task]


def add_method_flags(parser: argparse.ArgumentParser, task: str, title: str = "method options") -> None:
    """Add every flag owned by the ``task``'s methods to ``parser`` (shared flags once)."""
    seen: Dict[str, Flag] = {}
    group = parser.add_argument_group(title, "flags owned by the methods (each flag's help names them)")
    owners: Dict[str, List[str]] = {}
    for m in all_methods(task):
        for f in m.flags:
            owners.setdefault(f.dest, []).append(m.name)
    for m in all_methods(task):
        for f in m.flags:
            if f.dest in seen:
                if dict(seen[f.dest].kwargs) != dict(f.kwargs) or seen[f.dest].names != f.names:
                    raise ValueError(f"method {m.name!r} redefines {f.names[0]} differently from another method")
                continue
            seen[f.dest] = f
            kwargs = dict(f.kwargs)
            kwargs["help"] = f"{kwargs.get('help', '')} [{', '.join(owners[f.dest])}]".strip()
            group.add_argument(*f.names, **kwargs)


def build_criterion(name: str, *, task: str = "classification", **kw: Any) -> nn.Module:
    """The criterion of a registered method: ``build_criterion("gpaco", class_counts=counts, alpha=0.05)``."""
    return get_method(name, task).build_criterion(**kw)


def method_options(method: Method, values: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(model keywords, loss keywords) of ``method`` from parsed flag ``values`` (a dict)."""
    def pick(options) -> Dict[str, Any]:
        names = options if isinstance(options, Mapping) else {k: k for k in options}
        return {kw: values[dest] for dest, kw in names.items() if dest in values}

    return pick(method.model_options), pick(method.loss_options)


def describe(methods: Sequence[Method]) -> str:
    """A markdown table of methods (docs)."""
    rows = ["| method | task | views | summary | paper |", "|---|---|---:|---|---|"]
    rows += [f"| `{m.name}` | {m.task} | {m.views} | {m.summary} | {m.paper} |" for m in methods]
    return "\n".join(rows)
