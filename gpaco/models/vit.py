"""MAE-style Vision Transformers for fine-tuning (docs/method.md#mae-vits).

:func:`register_archs` registers these timm architectures (``timm.create_model`` names, so
``--arch`` takes them like any timm model; :func:`gpaco.methods.rebuild.build_model` registers them
on first use, a direct :func:`gpaco.models.create_backbone` call needs ``register_archs()``
first):

=========================  ======  =====  =====  =====  =====================================
arch                       embed   depth  heads  patch  note
=========================  ======  =====  =====  =====  =====================================
``mae_vit_base_patch16``   768     12     12     16     the paper's ViT-B/16
``mae_vit_large_patch16``  1024    24     16     16     the paper's ViT-L/16
``mae_vit_huge_patch14``   1280    32     16     14     MAE's ViT-H/14 (no paper row)
``mae_vit_tiny_d2_patch8`` 64      2      4      8      a toy for CPU tests and demos (32 px)
=========================  ======  =====  =====  =====  =====================================

They are timm ``VisionTransformer`` s in MAE's fine-tuning layout: mean of the patch tokens
(the class token is excluded) followed by ``fc_norm`` (LayerNorm, eps 1e-6), no final
``norm``, QKV bias, MLP ratio 4. Built with ``num_classes=0`` (as :func:`create_backbone`
does) the forward returns the normalised pooled feature ``[B, embed]`` that both the class
centers and the projection read. ``dynamic_img_size=True``: a model trained at one size can
be evaluated at another (the position embedding is resampled on the fly; at the built
``img_size`` nothing is resampled, so the result is the plain fixed-size ViT).

Nothing is ever downloaded: MAE pre-trained weights come from a local file through
:func:`load_mae_checkpoint` (``--finetune PATH`` in tools/train.py).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpaco.checkpoint import unwrap_state_dict

__all__ = [
    "MAE_ARCHS", "register_archs", "MAEProjection", "is_vit", "find_vit", "interpolate_pos_embed", "load_mae_checkpoint",
    "FinetuneLoadResult", "init_center_head",
]

# name -> (embed_dim, depth, num_heads, patch_size, default img_size)
MAE_ARCHS: Dict[str, Tuple[int, int, int, int, int]] = {
    "mae_vit_base_patch16": (768, 12, 12, 16, 224),
    "mae_vit_large_patch16": (1024, 24, 16, 16, 224),
    "mae_vit_huge_patch14": (1280, 32, 16, 14, 224),
    "mae_vit_tiny_d2_patch8": (64, 2, 4, 8, 32),
}


def _make_factory(name: str):
    embed_dim, depth, num_heads, patch_size, img_size = MAE_ARCHS[name]

    def factory(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        from timm.models.vision_transformer import VisionTransformer

        if pretrained:
            raise RuntimeError(f"'{name}' has no hub weights; load an MAE pre-training checkpoint from a local "
                               f"file instead (tools/train.py --finetune /path/to/mae_pretrain.pth)")
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        cfg: Dict[str, Any] = dict(
            img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
            mlp_ratio=4.0, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), global_pool="avg",
            fc_norm=True, class_token=True, dynamic_img_size=True,
        )
        cfg.update(kwargs)
        return VisionTransformer(**cfg)

    factory.__name__ = name
    factory.__doc__ = f"MAE fine-tuning ViT: embed {embed_dim}, depth {depth}, {num_heads} heads, patch {patch_size}."
    return factory


def register_archs() -> None:
    """Register :data:`MAE_ARCHS` with timm (idempotent). Lazy so that importing gpaco.models
    does not import timm."""
    import timm
    from timm.models import register_model

    for name in MAE_ARCHS:
        if not timm.is_model(name):
            register_model(_make_factory(name))


class MAEProjection(nn.Sequential):
    """GPaCo's ViT projection: Linear(E, E) - GELU - Linear(E, E) - GELU - Linear(E, out).

    Default PyTorch init (the original creates it after timm's init). Same module indices
    as :class:`~gpaco.models.heads.GPaCoProjection`, so state dicts are interchangeable.
    """

    def __init__(self, in_dim: int, hidden_dim: Optional[int] = None, out_dim: int = 128) -> None:
        hidden = hidden_dim or in_dim
        super().__init__(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, out_dim),
        )
        self.out_dim = out_dim


def is_vit(arch: Any) -> bool:
    """True for the MAE archs above and any timm ViT name (``vit_*``, ``deit*``, ``beit*``...)."""
    if isinstance(arch, nn.Module):
        return find_vit(arch) is not None
    name = str(arch).split(".")[0]
    return name in MAE_ARCHS or name.startswith(("vit_", "deit", "beit", "eva"))


def find_vit(model: nn.Module) -> Optional[Tuple[str, nn.Module]]:
    """(prefix, module) of the first submodule that is a ViT (has ``blocks`` and
    ``patch_embed``), e.g. ``('encoder.backbone.', vit)`` in a GPaCoModel; None if there is none."""
    for name, module in model.named_modules():
        if hasattr(module, "blocks") and hasattr(module, "patch_embed"):
            return (name + "." if name else ""), module
    return None


def _grid_of(vit: nn.Module) -> Tuple[int, int]:
    return tuple(int(g) for g in vit.patch_embed.grid_size)  # type: ignore[return-value]


def interpolate_pos_embed(pos_embed: Tensor, new_grid: Sequence[int], num_prefix_tokens: int = 1) -> Tensor:
    """Resample a ViT position embedding ``[1, P + H*W, E]`` to another patch grid.

    The ``P`` prefix (class-token) rows are kept as they are; the ``H x W`` patch rows
    (a square grid) are resized bicubically (align_corners False, no antialias, computed
    in float32) to ``new_grid``. The same grid returns the input unchanged.
    """
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed must be [1, N, E], got {tuple(pos_embed.shape)}")
    new_h, new_w = int(new_grid[0]), int(new_grid[1])
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n = patches.shape[1]
    side = int(round(math.sqrt(n)))
    if side * side != n:
        raise ValueError(f"pos_embed has {n} patch positions after {num_prefix_tokens} prefix rows: not a square grid")
    if (side, side) == (new_h, new_w):
        return pos_embed
    dim = patches.shape[-1]
    grid = patches.reshape(1, side, side, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_h, new_w), mode="bicubic", align_corners=False)
    patches = grid.permute(0, 2, 3, 1).reshape(1, new_h * new_w, dim).to(pos_embed.dtype)
    return torch.cat([prefix, patches], dim=1)


class FinetuneLoadResult(NamedTuple):
    """What :func:`load_mae_checkpoint` did. Key names are the backbone's (MAE layout)."""

    missing: List[str]  # backbone keys the checkpoint did not provide (they keep their init)
    unexpected: List[str]  # checkpoint keys the backbone does not have (ignored)
    dropped_head: List[str]  # classifier keys removed before loading (the centers start fresh)
    pos_embed_resized: Optional[Tuple[Tuple[int, int], Tuple[int, int]]]  # (old grid, new grid) or None


_WRAPPERS = ("encoder.backbone.", "encoder_q.backbone.", "backbone.")


def load_mae_checkpoint(vit: nn.Module, checkpoint: Mapping[str, Any]) -> FinetuneLoadResult:
    """Load an MAE pre-training (or fine-tuning) checkpoint into a ViT backbone, leniently.

    Args:
        vit: the backbone (a timm ``VisionTransformer``, e.g. ``model.backbone``).
        checkpoint: ``{'model': state_dict}`` as MAE saves it, or a plain state dict. A
            ``module.`` / ``encoder.backbone.`` / ``backbone.`` prefix is stripped.
    Steps: drop the classifier (``head.*``, ``fc.*``: the class centers are re-initialised
    at fine-tune start anyway), resample ``pos_embed`` to the backbone's patch grid, then a
    non-strict load. Any other shape mismatch is an error naming the keys.
    Returns:
        :class:`FinetuneLoadResult`. For an MAE pre-training checkpoint loaded into the
        fine-tuning ViT: missing ``fc_norm.weight``/``fc_norm.bias``, unexpected
        ``norm.weight``/``norm.bias`` (plus ``mask_token``/``decoder_*`` if the decoder was kept).
    """
    state = dict(unwrap_state_dict(checkpoint, "the --finetune checkpoint"))
    own = vit.state_dict()
    for prefix in _WRAPPERS:
        if not any(k in own for k in state) and any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
    dropped = sorted(k for k in state if k.startswith(("head.", "fc.")) and k not in own)
    for k in dropped:
        del state[k]
    resized = None
    if "pos_embed" in state and "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape:
        prefix_tokens = int(getattr(vit, "num_prefix_tokens", 1))
        if getattr(vit, "no_embed_class", False):
            prefix_tokens = 0
        old = state["pos_embed"]
        side = int(round(math.sqrt(old.shape[1] - prefix_tokens)))
        new_grid = _grid_of(vit)
        if own["pos_embed"].shape[1] != prefix_tokens + new_grid[0] * new_grid[1]:
            raise RuntimeError(f"pos_embed of the backbone {tuple(own['pos_embed'].shape)} does not match its patch "
                               f"grid {new_grid}")
        state["pos_embed"] = interpolate_pos_embed(old, new_grid, prefix_tokens)
        resized = ((side, side), new_grid)
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in state.items() if k in own and v.shape != own[k].shape]
    if bad:
        raise RuntimeError("the checkpoint does not fit this ViT (other --arch / patch size?): " + "; ".join(bad[:5])
                           + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""))
    if not any(k in own for k in state):
        raise RuntimeError(f"no key of the checkpoint matches the ViT (checkpoint keys like {list(state)[:3]})")
    result = vit.load_state_dict(state, strict=False)
    return FinetuneLoadResult(sorted(result.missing_keys), sorted(result.unexpected_keys), dropped, resized)


@torch.no_grad()
def init_center_head(fc: nn.Linear, std: float = 2e-5) -> None:
    """Fine-tune start: class centers ~ truncated normal(0, std) (MAE: std 2e-5; the cut at +-2 is
    absolute, so in effect untruncated), bias 0."""
    nn.init.trunc_normal_(fc.weight, std=std)
    if fc.bias is not None:
        fc.bias.zero_()
