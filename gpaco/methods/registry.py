"""The method registry: one :class:`~gpaco.methods.base.Method` instance per ``--method``.

``--method`` choices, the method flags and their checks, ``--help``, model building for
evaluation, checkpoint conversion and the docs table all read this registry; adding a method
is one file with a :class:`~gpaco.methods.base.Method` subclass and one
:func:`register_method` call (docs/contributing.md).
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from torch import nn

from .base import TASKS, Flag, Method, flag

__all__ = ["Flag", "Method", "flag", "register_method", "get_method", "method_names", "all_methods",
           "add_method_flags", "method_options", "build_criterion", "flag_problem", "TASKS"]


_REGISTRY: Dict[Tuple[str, str], Method] = {}


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` (an instance) to the registry (``replace=True`` overrides an existing one)."""
    if not isinstance(method, Method):
        raise TypeError(f"register_method takes a Method instance, got {method!r}")
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


def flag_problem(method: Method, values: Mapping[str, Any]) -> Optional[str]:
    """The first problem with the flag values of ``method``'s task (a flag set by another
    method, a value out of its flag's range), then of ``method.validate``; None: all fine."""
    own = {f.dest for f in method.flags}
    for other in all_methods(method.task):
        for f in other.flags:
            if f.dest not in values:
                continue
            if f.dest not in own and values[f.dest] != f.kwargs.get("default"):
                owners = [m.name for m in all_methods(method.task) if any(g.dest == f.dest for g in m.flags)]
                return f"{f.names[0]} is an option of --method {'/'.join(owners)}, not {method.name}"
            problem = f.problem(values[f.dest])
            if problem:
                return problem
    try:
        method.validate(dict(values))
    except ValueError as e:
        return str(e)
    return None


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
