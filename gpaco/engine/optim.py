"""Optimizers and their parameter groups (docs/method.md#optimisers).

* ``sgd`` without ``--layer-decay`` (the ResNet recipes): ONE group over every trainable
  parameter, weight decay on all of them (BN and biases included, as the original).
* ``adamw`` (MAE ViT fine-tuning): groups by (layer, decay). Layer-wise LR decay gives
  parameter ``p`` the scale ``layer_decay ** (L + 1 - layer_id(p))`` for a ViT of depth L:

  ============================================  ========
  parameter (names relative to the ViT)         layer_id
  ============================================  ========
  ``cls_token``, ``pos_embed``, ``patch_embed.*``   0
  ``blocks.i.*``                                 i + 1
  everything else: ``fc_norm``, and outside the  L + 1 (scale 1)
  ViT the projection MLP and the centers ``fc``
  ============================================  ========

  No weight decay for 1-D parameters (biases, LayerNorm weights) and the ViT's
  ``no_weight_decay()`` set (``pos_embed``, ``cls_token``...). Each group carries
  ``lr_scale``, which :meth:`gpaco.engine.schedule.LRSchedule.apply` honours.
* ``adamw`` with ``decay_1d`` and ``no_decay_keys`` (GenDD): weight decay on every parameter,
  1-D ones included, except those whose name contains one of the keys (the original's
  ``'diffloss' in name or 'ln' in name``, which in its model matches the denoiser alone);
  ``betas`` sets AdamW's starting betas (GenDD's beta2 then follows
  :class:`gpaco.engine.schedule.Beta2Schedule`).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import torch
from torch import nn

from gpaco.engine.schedule import apply_lr
from gpaco.models.vit import find_vit

__all__ = ["vit_layer_id", "param_groups", "build_optimizer", "build_seg_optimizer", "OPTIMIZERS"]

OPTIMIZERS = ("sgd", "adamw")


def vit_layer_id(name: str, depth: int) -> int:
    """Layer index of a parameter named relative to a ViT of ``depth`` blocks (0 .. depth + 1)."""
    if name in ("cls_token", "pos_embed", "reg_token", "dist_token") or name.startswith("patch_embed."):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def param_groups(
    model: nn.Module,
    *,
    weight_decay: float,
    layer_decay: Optional[float] = None,
    no_weight_decay: Optional[Iterable[str]] = None,
    decay_1d: bool = False,
) -> List[Dict]:
    """Parameter groups with ``weight_decay`` and ``lr_scale`` (and a ``name`` for logs).

    Args:
        model: any model; layer decay needs a ViT inside it (:func:`gpaco.models.vit.find_vit`).
        weight_decay: for the decayed parameters.
        layer_decay: None = every ``lr_scale`` is 1; else the ViT rule above.
        no_weight_decay: extra full parameter names without weight decay (added to the
            ViT's ``no_weight_decay()`` names and, unless ``decay_1d``, the 1-D parameters).
        decay_1d: decay 1-D parameters too.
    Frozen parameters (``requires_grad=False``) are left out. Groups appear in the order
    their first parameter appears in ``model.named_parameters()``.
    """
    found = find_vit(model)
    if layer_decay is not None:
        if found is None:
            raise ValueError("layer-wise LR decay needs a ViT backbone (a module with `blocks` and `patch_embed`)")
        if not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    prefix, vit = found if found is not None else ("", None)
    depth = len(vit.blocks) if vit is not None else 0
    skip: Set[str] = set(no_weight_decay or ())
    if vit is not None and hasattr(vit, "no_weight_decay"):
        skip |= {prefix + n for n in vit.no_weight_decay()}

    groups: Dict[str, Dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = (p.ndim <= 1 and not decay_1d) or name in skip
        if layer_decay is not None:
            inside = name.startswith(prefix)
            layer = vit_layer_id(name[len(prefix):], depth) if inside else depth + 1
            scale = layer_decay ** (depth + 1 - layer)
            key = f"layer_{layer}_{'no_decay' if no_decay else 'decay'}"
        else:
            scale = 1.0
            key = "no_decay" if no_decay else "decay"
        if key not in groups:
            groups[key] = {"name": key, "params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                           "lr_scale": scale}
        groups[key]["params"].append(p)
    return list(groups.values())


def lr_scale_groups(model: nn.Module, lr_scales: Dict[str, float], *, weight_decay: float) -> List[Dict]:
    """One group per ``{name prefix: LR factor}`` entry (first matching prefix wins), the rest
    in a factor-1 group; weight decay on all, frozen parameters left out."""
    groups: Dict[str, Dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = next((k for k in lr_scales if name.startswith(k)), "")
        if key not in groups:
            groups[key] = {"name": key or "rest", "params": [], "weight_decay": weight_decay,
                           "lr_scale": float(lr_scales.get(key, 1.0))}
        groups[key]["params"].append(p)
    return list(groups.values())


def _sgd(params, **kw) -> torch.optim.SGD:
    """SGD with torch's fused kernel where every parameter allows it (CPU, CUDA; the same update,
    one pass over each tensor: ~2x faster than the per-tensor loop, 20 ms of a CPU ResNet-50 step)."""
    flat = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(flat) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in flat)
    return torch.optim.SGD(params, fused=fused or None, **kw)


def build_optimizer(model: nn.Module, *, name: str = "sgd", lr: float, momentum: float = 0.9, wd: float = 0.0,
                    nesterov: bool = False, layer_decay: Optional[float] = None,
                    lr_scales: Optional[Dict[str, float]] = None, decay_1d: bool = False,
                    no_decay_keys: Sequence[str] = (), betas: Tuple[float, float] = (0.9, 0.999)
                    ) -> torch.optim.Optimizer:
    """The classification optimizer: ``sgd`` | ``adamw`` at ``lr`` (already resolved from ``--blr``).

    ``sgd`` without ``layer_decay`` is exactly the ResNet recipes' single-group SGD (weight
    decay on every parameter), with Nesterov momentum when ``nesterov`` (ResLT's CIFAR
    recipes); otherwise :func:`param_groups` (``adamw``: eps 1e-8 and ``betas``, 0.9/0.999 as
    MAE fine-tuning). ``lr_scales`` (SGD; MiSLAS stage 2): per-prefix LR factors
    (:func:`lr_scale_groups`). ``decay_1d`` / ``no_decay_keys`` / ``betas`` (AdamW; GenDD):
    decay 1-D parameters too / no decay for the parameters whose name contains a key.
    """
    if nesterov and (name != "sgd" or momentum <= 0):
        raise ValueError("Nesterov momentum is for SGD with momentum > 0")
    if name != "adamw" and (decay_1d or no_decay_keys or tuple(betas) != (0.9, 0.999)):
        raise ValueError("decay_1d, no_decay_keys and betas are AdamW options")
    sgd = dict(lr=lr, momentum=momentum, nesterov=nesterov)
    if lr_scales:
        if name != "sgd" or layer_decay is not None:
            raise ValueError("per-prefix LR factors are for SGD without layer decay")
        optimizer = _sgd(lr_scale_groups(model, lr_scales, weight_decay=wd), **sgd)
        apply_lr(optimizer, lr)
        return optimizer
    if name == "sgd" and layer_decay is None:
        params = [p for p in model.parameters() if p.requires_grad]
        return _sgd(params, weight_decay=wd, **sgd)
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
    keyed = [n for n, _ in model.named_parameters() if any(k in n for k in no_decay_keys)]
    groups = param_groups(model, weight_decay=wd, layer_decay=layer_decay, no_weight_decay=keyed, decay_1d=decay_1d)
    if name == "sgd":
        optimizer: torch.optim.Optimizer = _sgd(groups, **sgd)
    else:
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=1e-8)
    apply_lr(optimizer, lr)  # each group starts at lr * lr_scale
    return optimizer


def build_seg_optimizer(model: nn.Module, *, name: str, lr: float, wd: float, momentum: float = 0.9,
                        betas: Tuple[float, float] = (0.9, 0.999), no_decay_keys: Sequence[str] = (),
                        lr_scales: Optional[Dict[str, float]] = None) -> torch.optim.Optimizer:
    """The segmentation optimizer: SGD or AdamW; parameters whose name contains one of
    ``no_decay_keys`` get no weight decay (mmcv ``paramwise_cfg.custom_keys``, ``decay_mult=0``).
    ``lr_scales`` (a method's ``{name prefix: LR factor}``): one group per prefix and decay,
    each with its ``lr_scale`` (:func:`apply_lr` honours it)."""
    if lr_scales:
        groups: Dict[Tuple[bool, str], Dict] = {}
        for n, p in model.named_parameters():
            if p.requires_grad:
                plain = any(k in n for k in no_decay_keys)
                prefix = next((k for k in lr_scales if n.startswith(k)), "")
                group = groups.setdefault((plain, prefix), {"params": [], "weight_decay": 0.0 if plain else wd,
                                                            "lr_scale": float(lr_scales.get(prefix, 1.0))})
                group["params"].append(p)
        groups = list(groups.values())
    else:
        decay, no_decay = [], []
        for n, p in model.named_parameters():
            if p.requires_grad:
                (no_decay if any(k in n for k in no_decay_keys) else decay).append(p)
        groups = [{"params": decay, "weight_decay": wd}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
    if name == "sgd":
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=wd)
    elif name == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), weight_decay=wd)
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    if lr_scales:
        apply_lr(optimizer, lr)  # each group starts at lr * lr_scale
    return optimizer
