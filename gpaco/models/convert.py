"""Checkpoints from anywhere: detect a file's key layout and map it onto our models.

Layouts (after stripping any ``module.`` prefixes, docs/method.md#checkpoint-layouts):

=================  =================================================================
layout             keys
=================  =================================================================
``gpaco``          ours (tools/train.py): ``backbone.*`` | ``encoder.backbone.*`` |
                   ``encoder_q.backbone.*``, ``*.projection.*``, ``fc.*``, ``queue.*``
``paco_original``  the original PaCo ResNets: ``encoder_q.*`` (a torchvision ResNet whose
                   ``fc`` is the projection MLP ``fc.0`` Linear, ``fc.1`` BN1d, ``fc.3``
                   Linear), ``encoder_k.*``, ``linear.*`` (the classifier), the unused
                   ``linear_k.*``, ``queue``, ``queue_l``, ``queue_ptr``
``gpaco_original`` the original GPaCo ResNets: the same with ``fc.0/2/4`` Linears and no
                   key encoder
``mae_gpaco``      GPaCo MAE ViTs ``{'model': ...}``: timm ViT keys, ``head.*`` (the
                   classifier), ``mlp.*`` (projection), ``queue*``
``mae``            MAE-style ViT without projection/queue: ViT keys + ``head.*``
``classifier``     a plain torchvision/timm classifier: backbone keys + ``fc.*``
``gendd_original`` the GenDD authors' ``DiffModel`` (stage 1 or 2): ``model.*`` (the student,
                   its head ``model.{fc,linear,classifier,classifier.0}.*``), ``diffloss.*``,
                   ``cls_projector.*``, ``proj.*``, the teacher classifier ``classifier.*`` (also
                   ``cls_centers``), the constant ``chunk_idx``
=================  =================================================================

Every source key is given a *role* (``backbone``, ``projection``, ``backbone_k``,
``projection_k``, ``classifier``, ``queue``); the roles are then placed under the target
model's prefixes (``{role: state-dict prefix}``, which the caller passes: a method's registry
row holds them). Whatever has no place, does not exist in the model or is missing from the
file is listed in a :class:`LoadReport`, never silently ignored. Evaluation needs only the
classification path (backbone + ``fc``): a missing or misshapen key there is an error; the
rest (projection, key encoder, queue) is reported.

This module knows layouts and state dicts only, no method: which model to build for a file
(its recorded ``model_config``, or what its tensors imply) is :mod:`gpaco.methods.rebuild`.
"""
from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from torch import Tensor, nn

from gpaco.checkpoint import (
    CheckpointError, check_loadable_tensors, load_checkpoint, load_checkpoint_trusting_pickle,
    read_safetensors_metadata, unwrap_state_dict,
)

__all__ = [
    "LAYOUTS", "ROLES", "LoadedCheckpoint", "LoadReport", "CheckpointMismatchError", "read_checkpoint", "unwrap",
    "detect_layout", "assign_roles", "file_roles", "place_roles", "infer_model_kwargs", "load_into_model",
    "classification_prefixes", "arch_for_layout", "save_converted", "is_model_config", "MODEL_CONFIG_KEYS",
    "MAE_ARCH_NAMES",
]

LAYOUTS = ("gpaco", "paco_original", "gpaco_original", "mae_gpaco", "mae", "classifier", "gendd_original")
ROLES = ("backbone", "projection", "backbone_k", "projection_k", "classifier", "queue", "extra")

#: The keys of a checkpoint's ``model_config`` (:func:`gpaco.methods.rebuild.model_config`).
MODEL_CONFIG_KEYS = ("method", "task", "arch", "num_classes", "options")

#: MAE's ``args.model`` names -> our registered archs.
MAE_ARCH_NAMES = {"vit_base_patch16": "mae_vit_base_patch16", "vit_large_patch16": "mae_vit_large_patch16",
                  "vit_huge_patch14": "mae_vit_huge_patch14"}

_QUEUE_NAMES = {"queue": "features", "queue_l": "labels", "queue_ptr": "ptr"}
#: The student head of the GenDD authors' files: the original classifier name of every student
#: they train (``fc.`` ResNets/WRNs/MobileNetV1, ``classifier.`` VGG, ``classifier.0.``
#: MobileNetV2, ``linear.`` ShuffleNets and the CIFAR ResNet-50), weight and bias only.
_GENDD_STUDENT_HEAD = re.compile(r"model\.(?:fc|linear|classifier(?:\.0)?)\.(weight|bias)")
#: The GenDD authors' own modules, kept under their names (ours are the same).
_GENDD_OWN = ("diffloss.", "cls_projector.", "proj.")


class CheckpointMismatchError(CheckpointError):
    """The file's classification path (backbone + classifier) does not fit the model."""


@dataclass
class LoadedCheckpoint:
    """A checkpoint file read without arbitrary unpickling, its state dict unwrapped."""

    path: str
    state: "OrderedDict[str, Tensor]"  # tensors only, ``module.`` prefixes stripped
    layout: str
    # method / arch / num_classes / args / class_counts / epoch / model_config, when the file says
    meta: Dict[str, Any]
    notes: List[str] = field(default_factory=list)


@dataclass
class LoadReport:
    """What mapping a checkpoint onto a model did."""

    path: str
    layout: str
    method: str
    arch: str
    loaded: int = 0
    unused: List[Tuple[str, str]] = field(default_factory=list)  # (source key, why it was not used)
    missing: List[str] = field(default_factory=list)  # model keys the file did not provide (kept at init)
    transposed: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"path": self.path, "layout": self.layout, "method": self.method, "arch": self.arch,
                "loaded_tensors": self.loaded, "unused": [f"{k} ({why})" for k, why in self.unused],
                "missing": list(self.missing), "transposed": list(self.transposed), "notes": list(self.notes)}

    def summary(self) -> str:
        lines = [f"{self.path}: layout {self.layout} -> {self.method} {self.arch}: {self.loaded} tensors loaded"]
        if self.unused:
            groups: Dict[str, List[str]] = OrderedDict()
            for k, why in self.unused:
                groups.setdefault(why, []).append(k)
            for why, keys in groups.items():
                lines.append(f"  unused ({why}): {_group_keys(keys)}")
        if self.missing:
            lines.append(f"  missing, left at their initial values (not used by evaluation): "
                         f"{_group_keys(self.missing)}")
        if self.transposed:
            lines.append(f"  transposed to fit: {', '.join(self.transposed)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _group_keys(keys: Sequence[str], limit: int = 8) -> str:
    """'encoder_k.* (320), queue_l' style summary of a key list."""
    groups: Dict[str, int] = OrderedDict()
    for k in keys:
        parts = k.split(".")
        g = k if len(parts) == 1 else parts[0] + ".*"
        groups[g] = groups.get(g, 0) + 1
    items = [g if n == 1 and not g.endswith(".*") else f"{g} ({n})" for g, n in groups.items()]
    more = f", ... (+{len(items) - limit} groups)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


# --------------------------------------------------------------------------- reading


def read_checkpoint(path: str, *, trust_pickle: bool = False) -> LoadedCheckpoint:
    """Read ``path`` (ours, the original's, MAE-style, ``.safetensors``) and detect its layout.

    Without ``trust_pickle`` nothing is unpickled beyond tensors and plain containers
    (:func:`gpaco.checkpoint.load_checkpoint`): a file holding other objects raises
    :class:`~gpaco.checkpoint.UnsafeCheckpointError` naming the conversion command.
    """
    path = os.fspath(path)
    notes: List[str] = []
    if trust_pickle:
        obj, notes = load_checkpoint_trusting_pickle(path)
    else:
        obj = load_checkpoint(path)
    meta: Dict[str, Any] = {}
    if path.endswith(".safetensors"):
        meta = _safetensors_meta(read_safetensors_metadata(path))
    state, file_meta = unwrap(obj)
    meta = {**file_meta, **meta}
    if not state:
        raise CheckpointError(f"{path} holds no tensors under 'model' / 'state_dict' (keys: {list(obj)[:10]})")
    layout = detect_layout(state)
    if layout is None:
        raise CheckpointError(
            f"{path}: unknown key layout (keys like {list(state)[:6]}); expected ours (tools/train.py), the "
            f"original's PaCo/GPaCo ResNets (module.encoder_q.*, module.linear.*), an MAE-style ViT "
            f"({{'model': ...}} with blocks.*, head.*), a torchvision classifier (conv1.*, fc.*) or the GenDD "
            f"authors' DiffModel (model.*, diffloss.*, cls_centers)")
    return LoadedCheckpoint(path, state, layout, meta, notes)


def _safetensors_meta(md: Mapping[str, str]) -> Dict[str, Any]:
    """Our .safetensors header (tools/convert_checkpoint.py): method, arch, num_classes and the
    evaluation flags, as the metadata a .pth would carry."""
    meta: Dict[str, Any] = {}
    args: Dict[str, Any] = {}
    for key in ("method", "arch"):
        if md.get(key):
            meta[key] = args[key] = md[key]
    for key in ("num_classes", "image_size", "resize_size"):
        if md.get(key, "").isdigit():
            args[key] = int(md[key])
    for key in ("norm", "interpolation", "proj_act"):
        if md.get(key):
            args[key] = md[key]
    if "num_classes" in args:
        meta["num_classes"] = args["num_classes"]
    if args:
        meta["args"] = args
    if md.get("model_config"):  # JSON: the header holds strings only
        try:
            config = json.loads(md["model_config"])
        except ValueError:
            config = None
        if is_model_config(config):  # otherwise not ours: rebuilt from the other fields
            meta["model_config"] = config
    return meta


def is_model_config(obj: Any) -> bool:
    """``obj`` has the shape of a recorded ``model_config`` (another program's field of that name does not)."""
    return (isinstance(obj, Mapping) and all(k in obj for k in MODEL_CONFIG_KEYS)
            and isinstance(obj["method"], str) and isinstance(obj["task"], str) and isinstance(obj["arch"], str)
            and isinstance(obj["num_classes"], int) and isinstance(obj["options"], Mapping))


def unwrap(obj: Mapping[str, Any]) -> Tuple["OrderedDict[str, Tensor]", Dict[str, Any]]:
    """(state dict with ``module.`` prefixes stripped, metadata) of a loaded checkpoint object.

    Metadata keys (when the file has them): ``method``, ``arch``, ``num_classes``, ``args``
    (a dict), ``class_counts``, ``epoch``, ``model_config`` (the model's recorded build
    arguments, :func:`gpaco.methods.rebuild.model_config`; it also fills ``method``, ``arch``
    and ``num_classes`` when the file has no such keys).
    """
    meta: Dict[str, Any] = {}
    state: Any = obj
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_state", "module"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and any(isinstance(v, Tensor) for v in inner.values()):
                state = inner
                break
        args = obj.get("args")
        if isinstance(args, Mapping):
            meta["args"] = dict(args)
        for key in ("method", "arch", "num_classes", "class_counts", "class_names", "epoch"):
            if obj.get(key) is not None and not isinstance(obj.get(key), Tensor):
                meta[key] = obj[key]
        if is_model_config(obj.get("model_config")):
            meta["model_config"] = dict(obj["model_config"])
            for key in ("method", "arch", "num_classes"):
                meta.setdefault(key, obj["model_config"][key])
        args = meta.get("args") or {}
        if "arch" not in meta and isinstance(args.get("arch"), str):
            meta["arch"] = args["arch"]
        if "arch" not in meta and isinstance(args.get("model"), str):  # MAE's args.model
            meta["arch"] = MAE_ARCH_NAMES.get(args["model"], args["model"])
        if "num_classes" not in meta and isinstance(args.get("nb_classes"), int):
            meta["num_classes"] = args["nb_classes"]
    if not isinstance(state, Mapping):
        return OrderedDict(), meta
    try:
        return unwrap_state_dict(state), meta
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def detect_layout(state: Mapping[str, Tensor]) -> Optional[str]:
    """One of :data:`LAYOUTS`, or None when the keys match none of them."""
    keys = list(state)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("encoder.backbone.") or has("encoder_q.backbone.") or has("backbone."):
        return "gpaco"
    if has("model.") and (has("diffloss.") or has("cls_projector.") or "cls_centers" in state or has("proj.")):
        return "gendd_original"
    if has("encoder_q.") and (has("linear.") or has("queue")):
        if has("encoder_k.") or has("linear_k.") or "encoder_q.fc.1.running_mean" in state:
            return "paco_original"
        return "gpaco_original"
    if has("blocks.") and has("patch_embed."):
        return "mae_gpaco" if (has("mlp.") or "queue" in state) else "mae"
    if has("conv1.") or has("layer1."):
        return "classifier"
    return None


# --------------------------------------------------------------------------- mapping


def _role_of(key: str, layout: str) -> Tuple[Optional[str], str]:
    """(role, key inside the role) of a source key; role None = unused, the second item says why."""
    if layout == "gpaco":
        for prefix, role in (("encoder_q.backbone.", "backbone"), ("encoder.backbone.", "backbone"),
                             ("backbone.", "backbone"), ("encoder_q.projection.", "projection"),
                             ("encoder.projection.", "projection"), ("encoder_k.backbone.", "backbone_k"),
                             ("encoder_k.projection.", "projection_k"), ("fc.", "classifier"),
                             ("queue.", "queue")):
            if key.startswith(prefix):
                return role, key[len(prefix):]
        return "extra", key  # a method's own module (ResLT's head, MiSLAS's LWS scale): kept by name
    if layout in ("paco_original", "gpaco_original"):
        for enc, suffix in (("encoder_q.", ""), ("encoder_k.", "_k")):
            if key.startswith(enc + "fc."):
                return "projection" + suffix, key[len(enc) + 3:]
            if key.startswith(enc):
                return "backbone" + suffix, key[len(enc):]
        if key.startswith("linear."):
            return "classifier", key[len("linear."):]
        if key.startswith("linear_k."):
            return None, "the original PaCo's momentum classifier linear_k, never used"
        if key in _QUEUE_NAMES:
            return "queue", _QUEUE_NAMES[key]
        return None, "not part of the original's model"
    if layout in ("mae", "mae_gpaco"):
        if key.startswith("head."):
            return "classifier", key[len("head."):]
        if key.startswith("mlp."):
            return "projection", key[len("mlp."):]
        if key in _QUEUE_NAMES:
            return "queue", _QUEUE_NAMES[key]
        if key.startswith(("decoder", "mask_token")):
            return None, "MAE pre-training decoder"
        return "backbone", key
    if layout == "classifier":
        if key.startswith("fc."):
            return "classifier", key[len("fc."):]
        return "backbone", key
    if layout == "gendd_original":
        head = _GENDD_STUDENT_HEAD.fullmatch(key)
        if head:
            return "classifier", head.group(1)  # the student's own head: our linear probe fc.*
        if key.startswith("model."):
            return "backbone", key[len("model."):]
        if key.startswith(_GENDD_OWN):
            return "extra", key
        if key in ("cls_centers", "classifier.weight"):  # the teacher classifier (the same tensor twice)
            return "extra", "cls_centers"
        if key == "classifier.bias":
            return "extra", "cls_bias"
        if key == "chunk_idx":
            return None, "the token index 0..K-1, a constant the model rebuilds"
        return None, "not part of the GenDD model"
    raise ValueError(f"unknown layout {layout!r}; one of {LAYOUTS}")


def assign_roles(state: Mapping[str, Tensor], layout: str) -> Tuple[Dict[str, Dict[str, Tensor]],
                                                                      List[Tuple[str, str]]]:
    """Split ``state`` into ``{role: {key: tensor}}``; also the unused (key, why) pairs."""
    roles: Dict[str, Dict[str, Tensor]] = {r: OrderedDict() for r in ROLES}
    unused: List[Tuple[str, str]] = []
    for k, v in state.items():
        role, sub = _role_of(k, layout)
        if role is None:
            unused.append((k, sub))
        else:
            roles[role][sub] = v
    return roles, unused


def file_roles(loaded: LoadedCheckpoint) -> Tuple[str, ...]:
    """The shared roles (:data:`ROLES` but ``extra``) the file holds tensors for, in :data:`ROLES` order:
    what a model must have a place for to take the whole file."""
    roles = assign_roles(loaded.state, loaded.layout)[0]
    return tuple(r for r in ROLES if r != "extra" and roles[r])


def place_roles(roles: Mapping[str, Mapping[str, Tensor]], prefixes: Mapping[str, str], *, model_name: str,
                source_key: Optional[Mapping[Tuple[str, str], str]] = None
                ) -> Tuple["OrderedDict[str, Tensor]", List[Tuple[str, str]]]:
    """Our state-dict names for a model whose roles live under ``prefixes``; also the (role key,
    why) pairs it has no place for (``model_name`` says which model in that message)."""
    out: "OrderedDict[str, Tensor]" = OrderedDict()
    unused: List[Tuple[str, str]] = []
    for role, tensors in roles.items():
        for sub, v in tensors.items():
            name = source_key.get((role, sub), f"{role}:{sub}") if source_key else f"{role}:{sub}"
            if role == "extra":  # our layout's keys outside the shared roles keep their names
                out[sub] = v
            elif role in prefixes:
                out[prefixes[role] + sub] = v
            else:
                unused.append((name, f"a {model_name} model has no {role.replace('_k', ' (key encoder)')}"))
    return out, unused


def classification_prefixes(prefixes: Mapping[str, str]) -> Tuple[str, ...]:
    """The state-dict prefixes inference reads, of a model whose roles live under ``prefixes``:
    (backbone, classifier[, head]); ``head`` is a method's module between them (ResLT's branch
    head, MiSLAS's LWS scale)."""
    return (prefixes["backbone"], prefixes["classifier"]) + ((prefixes["head"],) if "head" in prefixes else ())


def infer_model_kwargs(roles: Mapping[str, Mapping[str, Tensor]]) -> Dict[str, Any]:
    """``build_model`` keywords implied by the tensors: num_classes, proj_dim, hidden_dim, queue_size."""
    kw: Dict[str, Any] = {}
    cls = roles.get("classifier", {})
    if isinstance(cls.get("weight"), Tensor) and cls["weight"].ndim == 2:
        kw["num_classes"] = int(cls["weight"].shape[0])
    proj = roles.get("projection", {})
    linears = sorted((int(m.group(1)), v) for k, v in proj.items()
                     if (m := re.fullmatch(r"(\d+)\.weight", k)) and v.ndim == 2)
    if linears:
        kw["hidden_dim"] = int(linears[0][1].shape[0])
        kw["proj_dim"] = int(linears[-1][1].shape[0])
    queue = roles.get("queue", {})
    if isinstance(queue.get("features"), Tensor) and queue["features"].ndim == 2:
        size, dim = queue["features"].shape
        if "proj_dim" in kw and dim != kw["proj_dim"] and size == kw["proj_dim"]:
            size, dim = dim, size  # a [d, K] queue (MoCo's layout)
        kw.setdefault("proj_dim", int(dim))
        kw["queue_size"] = int(size)
    return kw


def load_into_model(model: nn.Module, loaded: LoadedCheckpoint, prefixes: Mapping[str, str], *, method: str,
                    arch: str) -> LoadReport:
    """Map ``loaded`` onto ``model``, whose roles live under ``prefixes`` (its method's
    ``checkpoint_prefixes``), and load it; ``method``/``arch`` name the model in the report.

    Raises :class:`CheckpointMismatchError` when a key of the classification path (backbone
    or classifier) is missing or has another shape; everything else that does not fit is
    listed in the returned :class:`LoadReport`.
    """
    roles, unused = assign_roles(loaded.state, loaded.layout)
    source_key = {}
    for k in loaded.state:
        role, sub = _role_of(k, loaded.layout)
        if role is not None:
            source_key[(role, sub)] = k
    mapped, no_place = place_roles(roles, prefixes, model_name=method, source_key=source_key)
    # our names -> the file's names, for messages
    back = {prefixes[role] + sub: k for (role, sub), k in source_key.items() if role in prefixes}
    report = LoadReport(loaded.path, loaded.layout, method, arch, unused=unused + no_place, notes=list(loaded.notes))
    own = model.state_dict()
    needed = classification_prefixes(prefixes)
    to_load: "OrderedDict[str, Tensor]" = OrderedDict()
    bad_shapes: List[str] = []
    for k, v in mapped.items():
        src = back.get(k, k)
        if k not in own:
            report.unused.append((src, f"the {method} {arch} model has no {k}"))
            continue
        if v.shape != own[k].shape:
            if v.ndim == 2 and v.t().shape == own[k].shape and k.startswith("queue."):
                v = v.t().contiguous()
                report.transposed.append(src)
            elif k.startswith(needed):
                bad_shapes.append(f"{src} -> {k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}")
                continue
            else:
                report.unused.append((src, f"shape {tuple(v.shape)} differs from the model's {tuple(own[k].shape)}"))
                continue
        to_load[k] = v
    missing = [k for k in own if k not in to_load]
    missing_needed = [k for k in missing if k.startswith(needed)]
    if bad_shapes or missing_needed:
        parts = []
        if bad_shapes:
            parts.append(f"shapes differ: {'; '.join(bad_shapes[:5])}" + (f" (+{len(bad_shapes) - 5} more)"
                                                                           if len(bad_shapes) > 5 else ""))
        if missing_needed:
            parts.append(f"missing from the file: {_group_keys(missing_needed)} (e.g. {missing_needed[:4]})")
        unused_names = [k for k, _ in report.unused]
        if unused_names:
            parts.append(f"unused file keys: {_group_keys(unused_names)}")
        raise CheckpointMismatchError(
            f"checkpoint {loaded.path} does not fit the model (--arch/--method/--num-classes?): layout "
            f"{loaded.layout} -> {method} {arch}: " + "; ".join(parts))
    report.notes += check_loadable_tensors(to_load, own, loaded.path, {k: back.get(k, k) for k in to_load})
    model.load_state_dict(to_load, strict=False)
    report.loaded = len(to_load)
    report.missing = missing
    return report


def arch_for_layout(arch: str, loaded: LoadedCheckpoint) -> str:
    """Our name for the file's architecture: the original's GPaCo CIFAR ``resnet50`` is the
    SupCon one (3x3 stem), ours ``resnet50_cifar``; any other name is ours already."""
    if loaded.layout not in ("paco_original", "gpaco_original") or arch != "resnet50":
        return arch
    conv1 = assign_roles(loaded.state, loaded.layout)[0]["backbone"].get("conv1.weight")
    if isinstance(conv1, Tensor) and conv1.ndim == 4 and conv1.shape[-1] == 3:
        return "resnet50_cifar"
    return arch


#: Evaluation flags of the source's training run that a converted file keeps (tools/eval.py reads them).
_EVAL_ARGS = ("image_size", "resize_size", "norm", "interpolation", "proj_act")


def save_converted(loaded: LoadedCheckpoint, model: nn.Module, report: LoadReport, dst: str, *,
                   model_config: Mapping[str, Any]) -> dict:
    """Write ``model`` (``loaded`` mapped onto it, ``report``) to ``dst`` in our layout; the
    conversion record (the report, the source, its layout) is returned.

    ``dst`` ending in ``.safetensors``: the mapped weights only, with ``method``/``arch``/
    ``num_classes``/``layout``, the evaluation flags and ``model_config`` (JSON) in the header
    metadata. Otherwise a weights-only ``.pth`` ``{'model', 'method', 'arch', 'num_classes',
    'model_config', 'args', 'epoch', 'conversion'}`` that tools/eval.py (and
    ``torch.load(weights_only=True)``) reads. Only the tensors the file provided are written
    (nothing is filled in from a random init); the conversion record (unused and missing
    keys) is stored under ``conversion``.
    """
    from gpaco.checkpoint import save_checkpoint

    own = model.state_dict()
    missing = set(report.missing)
    state = OrderedDict((k, own[k].detach().clone()) for k in own if k not in missing)
    n_cls = int(model.fc.out_features)
    args: Dict[str, Any] = {"method": report.method, "arch": report.arch, "num_classes": n_cls}
    q = state.get("queue.features")
    if isinstance(q, Tensor):
        args["queue_size"], args["proj_dim"] = int(q.shape[0]), int(q.shape[1])
    src_args = loaded.meta.get("args") or {}
    for k in _EVAL_ARGS:
        if isinstance(src_args.get(k), (int, str)):
            args[k] = src_args[k]
    if "image_size" not in args and isinstance(src_args.get("input_size"), int):  # MAE's name
        args["image_size"] = src_args["input_size"]
    conversion = {"source": os.path.abspath(loaded.path), "layout": loaded.layout,
                  "feat_dim": int(model.fc.in_features), **report.as_dict()}
    if dst.endswith(".safetensors"):
        md = {"method": report.method, "arch": report.arch, "num_classes": str(n_cls), "layout": loaded.layout,
              "format": "gpaco", "model_config": json.dumps(dict(model_config))}
        md.update({k: str(args[k]) for k in _EVAL_ARGS if k in args})
        save_checkpoint(state, dst, metadata=md)
    else:
        out = {"model": state, "method": report.method, "arch": report.arch, "num_classes": n_cls,
               "model_config": dict(model_config), "args": args, "conversion": conversion}
        if isinstance(loaded.meta.get("epoch"), int):
            out["epoch"] = loaded.meta["epoch"]
        save_checkpoint(out, dst)
    return conversion
