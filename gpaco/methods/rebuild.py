"""A method's model: built by name, recorded in a checkpoint, and rebuilt for any checkpoint.

* :func:`build_model` builds a registered method's model (``gpaco.build_model``).
* :func:`model_config` is what checkpoints record as ``ckpt["model_config"]``: the method,
  task, arch, class count and the resolved build options, so that :func:`build_from_config`
  rebuilds exactly the trained model with no knowledge of the method.
* :func:`build_model_from_checkpoint` builds the model a file needs and loads it: from its
  ``model_config`` when it has one; otherwise (checkpoints written before the field existed,
  the original code's layouts) from what its metadata, training flags and tensors imply,
  every method fact coming from the method's registry row.
* :func:`convert_file` writes a checkpoint of any layout in ours (``tools/convert_checkpoint.py``).

The layouts and the state-dict mapping are :mod:`gpaco.models.convert`, which knows no method.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from torch import nn

from gpaco.checkpoint import CheckpointError
from gpaco.models.convert import (
    MODEL_CONFIG_KEYS, LoadedCheckpoint, LoadReport, arch_for_layout, assign_roles, file_roles, infer_model_kwargs,
    is_model_config, load_into_model, read_checkpoint, save_converted,
)
from gpaco.models.vit import is_vit

from .registry import TASKS, all_methods, get_method, method_options

__all__ = ["build_model", "model_config", "build_from_config", "checkpoint_prefixes", "method_for_roles",
           "checkpoint_model_config", "build_model_from_checkpoint", "convert_file", "MODEL_CONFIG_KEYS"]


def build_model(method: str, arch: Any, num_classes: int, *, task: str = "classification", **options: Any
                ) -> nn.Module:
    """The model of a registered method: ``build_model("gpaco", "resnet50", 1000, proj_dim=128,
    queue_size=8192)``. ``options`` go to the method's builder (``pretrained``,
    ``drop_path_rate``, ``proj_dim``, ``queue_size``...)."""
    return get_method(method, task).build_model(arch, num_classes, **options)


# --------------------------------------------------------------------------- recorded configs


def model_config(method: str, task: str, arch: str, num_classes: int, options: Mapping[str, Any]) -> dict:
    """``{"method", "task", "arch", "num_classes", "options"}`` for ``ckpt["model_config"]``.

    ``options`` are the keywords the model was built with. ``pretrained`` is left out (the
    checkpoint holds the weights; the file it named may be gone); every other value must be
    plain data (numbers, strings, booleans, None, lists, dicts with string keys), so that the
    checkpoint stays loadable with ``torch.load(weights_only=True)``: anything else is a
    ``TypeError`` naming the option. Tuples become lists.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    get_method(method, task)  # an unknown method could never be rebuilt: refuse it now
    if not isinstance(arch, str):
        raise TypeError(f"arch must be a registered or timm name to be recorded, got a {type(arch).__name__}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"num_classes must be an int, got {num_classes!r}")
    plain = {str(k): _plain(v, k) for k, v in options.items() if k != "pretrained"}
    return {"method": method, "task": task, "arch": arch, "num_classes": num_classes, "options": plain}


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain data (a copy), or TypeError naming the option ``where``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"model option {where}={value!r} ({type(value).__name__}) cannot be recorded in a checkpoint: "
                    f"plain numbers, strings, lists and dicts only")


def build_from_config(cfg: Mapping[str, Any], /, **overrides: Any) -> nn.Module:
    """The model ``cfg`` (a :func:`model_config`) records, with random weights; ``overrides``
    replace recorded options (evaluation-time options such as ResLT's ``eval_gamma``)."""
    if not is_model_config(cfg):
        raise ValueError(f"not a model config (needs {', '.join(MODEL_CONFIG_KEYS)}; options a dict): {cfg}")
    options = {**copy.deepcopy(dict(cfg["options"])), **overrides}  # the builder may keep or alter what it gets
    return get_method(cfg["method"], cfg["task"]).build_model(cfg["arch"], int(cfg["num_classes"]), **options)


# --------------------------------------------------------------------------- which model a file needs


def checkpoint_prefixes(method: str, task: str = "classification") -> Dict[str, str]:
    """Where each checkpoint role lives in ``method``'s model: its row's ``checkpoint_prefixes``."""
    return dict(get_method(method, task).checkpoint_prefixes)


def method_for_layout(loaded: LoadedCheckpoint) -> Optional[str]:
    """The method a file without a recorded one was trained with: the GenDD authors' files are
    ``gendd`` (with a denoiser) or ``gendd_stage1``; any other, :func:`method_for_roles`."""
    if loaded.layout == "gendd_original":
        return "gendd" if any(k.startswith("diffloss.") for k in loaded.state) else "gendd_stage1"
    return method_for_roles(file_roles(loaded))


def method_for_roles(roles: Sequence[str], task: str = "classification") -> Optional[str]:
    """The method whose model holds every role of a file (its tensors) with the fewest roles
    of its own; among equals the first registered. None when no row holds them all.

    The original's PaCo files (with a key encoder) give ``paco``, its GPaCo files and GPaCo
    ViTs ``gpaco``, plain classifiers ``ce``: what those files were trained with.
    """
    fitting = [m for m in all_methods(task) if set(roles) <= set(m.checkpoint_prefixes)]
    return min(fitting, key=lambda m: len(m.checkpoint_prefixes)).name if fitting else None


def checkpoint_model_config(loaded: Optional[LoadedCheckpoint], *, method: Optional[str] = None,
                            arch: Optional[str] = None, num_classes: Optional[int] = None,
                            defaults: Optional[Mapping[str, Any]] = None) -> dict:
    """The :func:`model_config` of the classification model ``loaded`` needs.

    The file's own ``model_config`` when it has one and ``method``/``arch``/``num_classes``
    (when given) agree with it. Otherwise it is inferred: ``method``/``arch``/``num_classes``
    given here win; then the file's metadata (ours: its training flags; the original's
    ``arch``; MAE's ``args.model``); then what its tensors imply (:func:`method_for_roles`);
    then ``defaults`` (``method``, ``arch``, ``num_classes``, ``proj_dim``, ``queue_size``).
    Sizes of the projection and the queue are read off the tensors, the method's other model
    options off the file's training flags (its row's ``model_options``); a recorded config of
    the same arch still gives its ``backbone_kwargs`` (a ViT's grid). ``loaded=None``: the
    model of a dry run, from the arguments and ``defaults`` alone.
    """
    defaults = dict(defaults or {})
    meta = loaded.meta if loaded is not None else {}
    recorded = meta.get("model_config")  # well-formed when present (read_checkpoint checks)
    if recorded is not None and _agrees(recorded, method=method, arch=arch, num_classes=num_classes):
        if recorded.get("task") != "classification":
            raise CheckpointError(f"{loaded.path} holds a {recorded.get('task')} model: evaluate it with "
                                  f"tools/eval_seg.py")
        return dict(recorded)
    args = meta.get("args") or {}
    roles = assign_roles(loaded.state, loaded.layout)[0] if loaded is not None else {}
    method = method or meta.get("method") or args.get("method") or \
        (method_for_layout(loaded) if loaded is not None else None) or defaults.get("method", "ce")
    arch = arch or meta.get("arch") or defaults.get("arch")
    if arch is None:
        raise CheckpointError(f"{loaded.path if loaded else 'checkpoint'}: the file does not name its architecture; "
                              f"pass --arch")
    if loaded is not None:
        arch = arch_for_layout(arch, loaded)
    inferred = infer_model_kwargs(roles) if loaded is not None else {}
    num_classes = num_classes or meta.get("num_classes") or inferred.get("num_classes") or defaults.get("num_classes")
    if num_classes is None:
        raise CheckpointError("the number of classes is unknown: pass --num-classes")
    options: Dict[str, Any] = {}
    for name in ("proj_dim", "queue_size"):
        value = inferred.get(name, args.get(name, defaults.get(name)))
        if value is not None:
            options[name] = value
    if "hidden_dim" in inferred:
        options["hidden_dim"] = inferred["hidden_dim"]
    img_size = args.get("image_size") or args.get("input_size")  # ours / MAE's
    if is_vit(arch) and isinstance(img_size, int):
        options["backbone_kwargs"] = {"img_size": img_size}
    if recorded is not None and recorded["arch"] == arch:  # another method on the recorded backbone
        backbone_kwargs = recorded["options"].get("backbone_kwargs")
        if isinstance(backbone_kwargs, Mapping):
            options["backbone_kwargs"] = dict(backbone_kwargs)
    try:
        row = get_method(method)
    except ValueError as e:
        raise CheckpointError(f"{loaded.path if loaded else 'checkpoint'}: {e}") from None
    for name, value in method_options(row, args)[0].items():  # the method's model options as trained
        options.setdefault(name, value)
    if loaded is not None:  # what only the tensors say (a file without training flags)
        for name, value in row.options_from_weights(loaded.state).items():
            options.setdefault(name, value)
    try:
        return model_config(method, "classification", arch, int(num_classes), options)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{loaded.path if loaded else 'checkpoint'}: {e}") from None


def _agrees(cfg: Mapping[str, Any], **given: Any) -> bool:
    """A recorded config serves unless the caller asked for another method, arch or class count."""
    return all(value is None or cfg.get(key) == value for key, value in given.items())


def build_model_from_checkpoint(
    loaded: Optional[LoadedCheckpoint],
    *,
    method: Optional[str] = None,
    arch: Optional[str] = None,
    num_classes: Optional[int] = None,
    defaults: Optional[Mapping[str, Any]] = None,
    flag_values: Optional[Mapping[str, Any]] = None,
) -> Tuple[nn.Module, Optional[LoadReport]]:
    """Build the classification model a checkpoint needs (:func:`checkpoint_model_config`)
    and load it. ``flag_values``: method flags set for this evaluation (by ``dest``, e.g.
    ``{"reslt_gamma": 0.3}``); those the built method takes as model options override the
    file's. ``loaded=None`` builds the model with random weights (dry runs)."""
    cfg = checkpoint_model_config(loaded, method=method, arch=arch, num_classes=num_classes, defaults=defaults)
    model = _build(cfg, method_options(get_method(cfg["method"], cfg["task"]), flag_values or {})[0])
    if loaded is None:
        return model, None
    return model, load_into_model(model, loaded, checkpoint_prefixes(cfg["method"]), method=cfg["method"],
                                  arch=cfg["arch"])


def _build(cfg: Mapping[str, Any], overrides: Optional[Mapping[str, Any]] = None) -> nn.Module:
    try:
        return build_from_config(cfg, **(overrides or {}))
    except (ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"cannot build {cfg['method']} {cfg['arch']} with {cfg['num_classes']} classes: "
                              f"{e}") from e


def convert_file(src: str, dst: str, *, trust_pickle: bool = False, method: Optional[str] = None,
                 arch: Optional[str] = None, num_classes: Optional[int] = None,
                 overwrite: bool = False) -> Tuple[LoadReport, dict]:
    """``tools/convert_checkpoint.py``: write ``src`` in our layout to ``dst`` (``.pth`` or
    ``.safetensors``, :func:`gpaco.models.convert.save_converted`), its ``model_config`` with it;
    returns the load report and the conversion record. An existing ``dst`` is refused
    (FileExistsError) unless ``overwrite``."""
    if os.path.exists(dst) and not overwrite:  # checked before the (slow) read
        raise FileExistsError(f"{dst} already exists; give another output file, or --overwrite to replace it")
    loaded = read_checkpoint(src, trust_pickle=trust_pickle)
    cfg = checkpoint_model_config(loaded, method=method, arch=arch, num_classes=num_classes)
    model = _build(cfg)
    report = load_into_model(model, loaded, checkpoint_prefixes(cfg["method"]), method=cfg["method"],
                             arch=cfg["arch"])
    return report, save_converted(loaded, model, report, dst, model_config=cfg)
