"""The models of Generative Distribution Distillation (GenDD, arXiv 2507.14503).

* :class:`GenDDStudent` (stage 2, ``--method gendd``): the student trunk, a LayerNorm that turns
  its pooled feature into the condition, the diffusion model of the teacher's feature given it
  (:class:`~gpaco.losses.gendd.DiffusionLoss`), a linear probe trained on the *detached*
  feature, and the frozen teacher classifier that decodes generated features.
* :class:`GenDDStage1` (``--method gendd_stage1``): the student trunk and a projection to the
  teacher's feature size, trained with cross-entropy through the frozen teacher classifier.

State-dict names (``--gendd-stage1``, tools/eval.py and the authors' files rely on them):

=====================  ==================================  ===================================
ours                   what                                the authors' ``DiffModel``
=====================  ==================================  ===================================
``backbone.*``         student trunk                       ``model.*`` (its classifier excepted)
``fc.*``               linear probe Linear(F, C)           ``model.fc.*`` (RepDistiller heads:
                                                           ``model.linear.*``, ``model.classifier.*``)
``cls_projector.*``    LayerNorm(F), affine, eps 1e-5      ``cls_projector.*``
``diffloss.net.*``     the denoiser (stage 2)              ``diffloss.net.*``
``proj.*``             Linear(F, D) (stage 1, F != D)      ``proj.*``
``cls_centers``        teacher classifier weight [C, D]    ``cls_centers`` (= ``classifier.weight``)
``cls_bias``           teacher classifier bias [C]         ``classifier.bias``
=====================  ==================================  ===================================

:func:`from_original_state_dict` maps the authors' layout onto ours. The teacher classifier is a
pair of buffers: saved with the model (a checkpoint evaluates alone), outside the optimizer.

The training forward of stage 2 (:func:`stage2_forward`, what the original's
``forward_train_stage2`` computes; docs/method.md#generative-distribution-distillation): probe
logits ``fc(f.detach())``; ``z = LayerNorm(f)``; the target is the teacher feature contracted toward
the label's classifier row; condition and target are mixed with one ``(m, perm)`` per batch; the
target is cut into K = D / d tokens, each a row with its sample's condition, the rows repeated M
times; a fraction of the conditions is dropped to zero; the diffusion loss of the rows. Every random
draw of a step is one :class:`Stage2Draws`, so a step can be replayed exactly (the method draws it
from a per-step generator).

Evaluation (:meth:`GenDDStudent.predict`): ``num_samples`` features are sampled per image
(``sampling_steps`` respaced steps, guidance ``cfg``, temperature 1), averaged, and decoded by
the teacher classifier. The sampling noise comes from a generator reseeded each time the model
is put in eval mode, so every evaluation pass draws the same noise: evaluations are
reproducible and a resumed run evaluates exactly as the uninterrupted one.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpaco.losses.diffusion import TRAIN_STEPS, space_timesteps
from gpaco.losses.gendd import (
    DiffusionLoss, contract, draw_mixup, drop_condition, generated_logits, mix_features, split_tokens,
)

from .contrastive import CONTRASTIVE_ONLY, make_backbone
from .kd_zoo import to_classifier_state_dict
from .view_bn import convert_view_batchnorm

__all__ = ["Stage2Settings", "Stage2Draws", "Stage2Output", "stage2_forward", "GenDDStudent", "GenDDStage1",
           "build_gendd_student", "build_gendd_stage1", "from_original_state_dict", "load_stage1",
           "check_sampling_steps"]


# --------------------------------------------------------------------------- the training forward


@dataclass(frozen=True)
class Stage2Settings:
    """The training hyper-parameters of stage 2 (the method's flags).

    ``contraction`` s (``--gendd-contraction``): target ``(1 - s) f_t + s W_t[y]``; 0: the
    teacher feature. ``mixup_beta`` (``--gendd-mixup-beta``): feature mixup with ``m ~ Beta(b, b)``;
    0: none. ``batch_mul`` M (``--gendd-batch-mul``): copies of every token row. ``cond_drop`` p
    (``--gendd-cond-drop``): probability that a row's condition is replaced by zeros.
    """

    contraction: float = 0.9
    mixup_beta: float = 1.0
    batch_mul: int = 10
    cond_drop: float = 0.2

    def rows(self, batch: int, num_tokens: int) -> int:
        """R = M B K, the diffusion rows of a batch of B."""
        return self.batch_mul * batch * num_tokens


@dataclass
class Stage2Draws:
    """Every random draw of one stage-2 training step (the original's, in its order).

    ``perm`` [B] and ``m`` (feature mixup; None without), ``drop_u`` [R] (a row's condition is
    dropped iff ``u < p``), ``t`` [R] (int64 diffusion steps in [0, 1000)), ``noise`` [R, d].
    """

    drop_u: Tensor
    t: Tensor
    noise: Tensor
    perm: Optional[Tensor] = None
    m: Optional[float] = None

    @classmethod
    def draw(cls, settings: Stage2Settings, *, batch: int, num_tokens: int, token_dim: int,
             generator: torch.Generator, mixup_generator: Optional[torch.Generator] = None,
             dtype: torch.dtype = torch.float32) -> "Stage2Draws":
        """The draws of a batch of ``batch`` from ``generator`` (on the device they are drawn on);
        ``perm`` and ``m`` from ``mixup_generator`` (a CPU generator; default: ``generator``,
        which must then be a CPU one)."""
        m = perm = None
        if settings.mixup_beta > 0:
            m, perm = draw_mixup(batch, settings.mixup_beta, generator=mixup_generator or generator)
        rows = settings.rows(batch, num_tokens)
        device = generator.device
        return cls(drop_u=torch.rand(rows, generator=generator, device=device),
                   t=torch.randint(0, TRAIN_STEPS, (rows,), generator=generator, device=device),
                   noise=torch.randn(rows, token_dim, generator=generator, device=device, dtype=dtype),
                   perm=None if perm is None else perm.to(device), m=m)


@dataclass
class Stage2Output:
    """``loss``: the diffusion loss (scalar); ``probe_logits`` [B, C]: the linear probe on the
    detached feature; the rows the diffusion loss saw: ``target_rows`` [R, d], ``cond_rows``
    [R, F] (after the condition drop), ``token_index`` [R]."""

    loss: Tensor
    probe_logits: Tensor
    target_rows: Tensor
    cond_rows: Tensor
    token_index: Tensor


def stage2_forward(features: Tensor, teacher_features: Tensor, targets: Optional[Tensor], *, projector: nn.Module,
                   probe: nn.Module, diffloss: DiffusionLoss, classifier_weight: Tensor, token_dim: int,
                   settings: Stage2Settings, draws: Stage2Draws) -> Stage2Output:
    """GenDD's training forward on pooled features (the original's ``forward_train_stage2``).

    Args:
        features: the student's pooled feature f [B, F] (gradient flows to it through the
            condition only; the probe reads it detached).
        teacher_features: f_t [B, D] (no gradient).
        targets: class indices [B], probabilities [B, C] (mixup targets, the teacher's in the
            label-free mode) or None (no contraction).
        projector: LayerNorm(F).  probe: Linear(F, C).  classifier_weight: W_t [C, D].
        token_dim: d (D / d tokens).  settings, draws: see :class:`Stage2Settings`, :class:`Stage2Draws`.
    """
    if (settings.mixup_beta > 0) != (draws.perm is not None):
        raise ValueError(f"stage2_forward: mixup_beta {settings.mixup_beta} needs draws with a mixup "
                         f"(perm, m) exactly when it is > 0")
    probe_logits = probe(features.detach())
    cond = projector(features)
    target = contract(teacher_features.to(cond.dtype), classifier_weight.to(cond.dtype), targets,
                      settings.contraction)
    if draws.perm is not None:
        cond, target = mix_features(cond, target, draws.m, draws.perm)
    target_rows, cond_rows, token_index = split_tokens(target, cond, token_dim, repeats=settings.batch_mul)
    cond_rows = drop_condition(cond_rows, settings.cond_drop, u=draws.drop_u)
    loss = diffloss(target_rows, cond_rows, token_index, t=draws.t, noise=draws.noise.to(cond.dtype))
    return Stage2Output(loss, probe_logits, target_rows, cond_rows, token_index)


# --------------------------------------------------------------------------- models


def check_sampling_steps(steps: Union[str, int]) -> str:
    """``steps`` as the respacing string of :meth:`DiffusionLoss.sample` ("100", "64", "ddim25"),
    or ValueError naming ``--gendd-steps``."""
    text = str(steps).strip()
    try:
        kept = space_timesteps(TRAIN_STEPS, text)
    except ValueError as e:
        raise ValueError(f"--gendd-steps {steps!r}: {e} (give a number of steps <= {TRAIN_STEPS}, e.g. 100, or "
                         f"ddimN)") from None
    if not text or not kept:
        raise ValueError(f"--gendd-steps {steps!r}: give a number of sampling steps (e.g. 100 or 64)")
    return text


def _teacher_buffers(module: nn.Module, num_classes: int, teacher_dim: int) -> None:
    # Filled from the teacher at setup (or a checkpoint); zeros until then.
    module.register_buffer("cls_centers", torch.zeros(num_classes, teacher_dim))
    module.register_buffer("cls_bias", torch.zeros(num_classes))


def _set_teacher_classifier(module: nn.Module, weight: Tensor, bias: Optional[Tensor]) -> None:
    if tuple(weight.shape) != tuple(module.cls_centers.shape):
        raise ValueError(f"the teacher classifier is {tuple(weight.shape)} (classes, feature size), the model "
                         f"expects {tuple(module.cls_centers.shape)} (--gendd-teacher-dim?)")
    with torch.no_grad():
        module.cls_centers.copy_(weight)
        module.cls_bias.copy_(bias if bias is not None else torch.zeros_like(module.cls_bias))


class GenDDStudent(nn.Module):
    """GenDD stage 2 (module docstring): ``backbone``, ``fc``, ``cls_projector``, ``diffloss``,
    buffers ``cls_centers`` / ``cls_bias``.

    ``model(images, teacher_features, targets, settings=..., draws=...)`` (training) ->
    :class:`Stage2Output`; ``model(images)`` -> logits [B, C] of the generated features;
    :meth:`predict` -> those and the probe's logits.

    Args:
        backbone: the student trunk (images -> [B, F]).  feat_dim: F.  num_classes: C.
        teacher_dim: D, the teacher's feature size (a multiple of ``token_dim``).
        token_dim: d.  width / depth: the denoiser's W and L.
        sampling_steps: the respacing of evaluation ("100": CIFAR, "64": ImageNet).
        num_samples: features sampled per image at evaluation (averaged).  cfg: guidance scale.
        freeze_probe: the probe stays at its initial weights (label-free distillation has no labels).
        sampling_seed: seed of the evaluation noise (plus the process rank).
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, num_classes: int, *, teacher_dim: int,
                 token_dim: int = 64, width: int = 1024, depth: int = 3, sampling_steps: Union[str, int] = "100",
                 num_samples: int = 1, cfg: float = 2.0, freeze_probe: bool = False, sampling_seed: int = 0) -> None:
        super().__init__()
        if token_dim < 1 or teacher_dim < 1 or teacher_dim % token_dim:
            raise ValueError(f"--gendd-token-dim {token_dim} must divide the teacher's feature size "
                             f"--gendd-teacher-dim {teacher_dim}")
        if num_samples < 1:
            raise ValueError(f"--gendd-samples must be >= 1, got {num_samples}")
        self.feat_dim, self.num_classes = feat_dim, num_classes
        self.teacher_dim, self.token_dim = teacher_dim, token_dim
        self.num_tokens = teacher_dim // token_dim
        self.sampling_steps = check_sampling_steps(sampling_steps)
        self.num_samples, self.cfg, self.sampling_seed = int(num_samples), float(cfg), int(sampling_seed)
        self.backbone = backbone
        self.fc = nn.Linear(feat_dim, num_classes)
        if hasattr(backbone, "init_classifier"):  # a zoo network's own head init (gpaco.models.kd_cifar)
            backbone.init_classifier(self.fc)
        self.fc.requires_grad_(not freeze_probe)
        self.cls_projector = nn.LayerNorm(feat_dim)
        self.diffloss = DiffusionLoss(token_dim, feat_dim, depth, width, self.sampling_steps, self.num_tokens)
        _teacher_buffers(self, num_classes, teacher_dim)
        self._sampling_rng: Optional[torch.Generator] = None

    def set_teacher_classifier(self, weight: Tensor, bias: Optional[Tensor] = None) -> None:
        """Copy the frozen teacher classifier (weight [C, D], bias [C]) into the buffers."""
        _set_teacher_classifier(self, weight, bias)

    def train(self, mode: bool = True) -> "GenDDStudent":
        if not mode:
            self._sampling_rng = None  # every evaluation pass starts from the same noise
        return super().train(mode)

    def _sampling_generator(self, device: torch.device) -> torch.Generator:
        if self._sampling_rng is None or self._sampling_rng.device != device:
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            self._sampling_rng = torch.Generator(device=device)
            self._sampling_rng.manual_seed(self.sampling_seed * 1_000_003 + rank)
        return self._sampling_rng

    def predict(self, images: Tensor, *, generator: Optional[torch.Generator] = None,
                init_noise: Optional[Tensor] = None, step_noise=None) -> Dict[str, Tensor]:
        """``logits`` [B, C]: the teacher classifier on the mean of ``num_samples`` sampled
        features; ``probe`` [B, C]: the linear probe. The sampling runs in float32 whatever the
        autocast (its first step multiplies by ~300). ``generator`` (default: the evaluation
        generator, see the module docstring) or the injected ``init_noise`` / ``step_noise``
        (:meth:`~gpaco.losses.gendd.DiffusionLoss.sample`) give its noise."""
        feature = self.backbone(images)
        with torch.autocast(feature.device.type, enabled=False):
            feature = feature.float() if feature.dtype != torch.float64 else feature
            cond = self.cls_projector(feature)
            logits, _ = generated_logits(
                self.diffloss, cond, self.cls_centers.to(cond.dtype), self.cls_bias.to(cond.dtype),
                num_samples=self.num_samples, steps=self.sampling_steps, cfg=self.cfg, temperature=1.0,
                init_noise=init_noise, step_noise=step_noise,
                generator=generator if generator is not None else self._sampling_generator(cond.device))
            return {"logits": logits, "probe": self.fc(feature)}

    def forward(self, images: Tensor, teacher_features: Optional[Tensor] = None, targets: Optional[Tensor] = None,
                *, settings: Optional[Stage2Settings] = None, draws: Optional[Stage2Draws] = None):
        if teacher_features is None:
            return self.predict(images)["logits"]
        if settings is None or draws is None:
            raise ValueError("GenDDStudent: the training forward needs settings and draws")
        feature = self.backbone(images)
        # the generative part in float32 (float64 in checks) whatever the autocast: rows at t = 999
        # have terms of several hundred bits
        with torch.autocast(feature.device.type, enabled=False):
            feature = feature.float() if feature.dtype != torch.float64 else feature
            return stage2_forward(feature, teacher_features, targets, projector=self.cls_projector, probe=self.fc,
                                  diffloss=self.diffloss, classifier_weight=self.cls_centers,
                                  token_dim=self.token_dim, settings=settings, draws=draws)


class GenDDStage1(nn.Module):
    """GenDD stage 1: ``logits = cls_centers @ proj(backbone(x)) + cls_bias`` [B, C], the frozen
    teacher classifier on the projected student feature (``proj`` Linear(F, D), the identity
    when F = D). The student's own ``fc`` is built (stage 2 takes it as the probe's start) but
    frozen and unused, as the original's."""

    def __init__(self, backbone: nn.Module, feat_dim: int, num_classes: int, *, teacher_dim: int) -> None:
        super().__init__()
        self.feat_dim, self.num_classes, self.teacher_dim = feat_dim, num_classes, teacher_dim
        self.backbone = backbone
        self.fc = nn.Linear(feat_dim, num_classes)
        if hasattr(backbone, "init_classifier"):
            backbone.init_classifier(self.fc)
        self.fc.requires_grad_(False)
        self.proj = nn.Linear(feat_dim, teacher_dim) if feat_dim != teacher_dim else nn.Identity()
        _teacher_buffers(self, num_classes, teacher_dim)

    def set_teacher_classifier(self, weight: Tensor, bias: Optional[Tensor] = None) -> None:
        _set_teacher_classifier(self, weight, bias)

    def forward(self, images: Tensor) -> Tensor:
        return F.linear(self.proj(self.backbone(images)), self.cls_centers, self.cls_bias)


def _backbone(arch: Union[str, nn.Module], *, pretrained=False, drop_path_rate: float = 0.0,
              backbone_kwargs: Optional[Dict[str, Any]] = None, device_batch: Optional[int] = None,
              feat_dim: Optional[int] = None, **ignored: Any) -> Tuple[nn.Module, int]:
    unknown = sorted(set(ignored) - CONTRASTIVE_ONLY)  # the contrastive models' options are ignored, as a Classifier's
    if unknown:
        raise TypeError(f"unexpected model options {unknown}")
    backbone, dim = make_backbone(arch, feat_dim=feat_dim, pretrained=pretrained, drop_path_rate=drop_path_rate,
                                  backbone_kwargs=backbone_kwargs)
    if device_batch is not None:
        convert_view_batchnorm(backbone, device_batch=device_batch)
    return backbone, dim


def build_gendd_student(arch: Union[str, nn.Module], num_classes: int, *, teacher_dim: Optional[int] = None,
                        token_dim: int = 64,
                        width: int = 1024, depth: int = 3, sampling_steps: Union[str, int] = "100",
                        num_samples: int = 1, cfg: float = 2.0, freeze_probe: bool = False,
                        **backbone_options: Any) -> GenDDStudent:
    """:class:`GenDDStudent` on the trunk of ``arch`` (``backbone_options``: ``pretrained``,
    ``drop_path_rate``, ``backbone_kwargs``, ``device_batch``, ``feat_dim`` for a module);
    ``teacher_dim`` None: the trunk's feature size."""
    backbone, dim = _backbone(arch, **backbone_options)
    return GenDDStudent(backbone, dim, num_classes, teacher_dim=teacher_dim or dim, token_dim=token_dim, width=width,
                        depth=depth, sampling_steps=sampling_steps, num_samples=num_samples, cfg=cfg,
                        freeze_probe=freeze_probe)


def build_gendd_stage1(arch: Union[str, nn.Module], num_classes: int, *, teacher_dim: Optional[int] = None,
                       **backbone_options: Any) -> GenDDStage1:
    """:class:`GenDDStage1` on the trunk of ``arch`` (``teacher_dim`` None: the trunk's feature size)."""
    backbone, dim = _backbone(arch, **backbone_options)
    return GenDDStage1(backbone, dim, num_classes, teacher_dim=teacher_dim or dim)


# --------------------------------------------------------------------------- checkpoints


_OWN_PREFIXES = ("diffloss.", "cls_projector.", "proj.")


def from_original_state_dict(state: Mapping[str, Tensor], arch: str) -> "OrderedDict[str, Tensor]":
    """The authors' ``DiffModel`` state dict (stage 1 or 2, DDP's ``module.`` stripped) in our
    names (module docstring table). ``arch``: the student's ``--arch`` (its head's name in the
    original, :func:`gpaco.models.kd_zoo.to_classifier_state_dict`). ``chunk_idx`` (a constant)
    and the keys of no part of ours are left out."""
    student = OrderedDict((k[len("model."):], v) for k, v in state.items() if k.startswith("model."))
    out = to_classifier_state_dict(student, arch) if student else OrderedDict()
    for key, value in state.items():
        if key.startswith(_OWN_PREFIXES):
            out[key] = value
    weight = state.get("cls_centers", state.get("classifier.weight"))
    if weight is not None:
        out["cls_centers"] = weight
    if state.get("classifier.bias") is not None:
        out["cls_bias"] = state["classifier.bias"]
    return out


def load_stage1(model: GenDDStudent, path: str, *, arch: Optional[str] = None) -> str:
    """Load a stage-1 checkpoint's trunk (``backbone.*``) and never-trained student classifier
    (``fc.*``, the probe's start) into a stage-2 model; its ``proj`` is dropped. Our checkpoints
    (``best.pth`` / ``checkpoint.pth`` of ``--method gendd_stage1``) and the authors' files
    (``{"model": ...}`` CIFAR, ``{"state_dict": ...}`` ImageNet; needs ``arch``) are read.

    Raises FileNotFoundError (no such file), ValueError (it does not fit the model).
    """
    from gpaco.checkpoint import load_checkpoint, unwrap_state_dict

    if not os.path.isfile(path):
        raise FileNotFoundError(f"stage-1 checkpoint {path}: no such file")
    state = unwrap_state_dict(load_checkpoint(path), path)
    if not any(k.startswith("backbone.") for k in state) and any(k.startswith("model.") for k in state):
        if arch is None:
            raise ValueError(f"stage-1 checkpoint {path} is in the authors' layout: the student's arch is needed")
        state = from_original_state_dict(state, arch)
    wanted = {k: v for k, v in state.items() if k.startswith(("backbone.", "fc."))}
    own = model.state_dict()
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in wanted.items()
           if k in own and v.shape != own[k].shape]
    missing = [k for k in own if k.startswith(("backbone.", "fc.")) and k not in wanted]
    extra = [k for k in wanted if k not in own]
    if bad or missing or extra:
        raise ValueError(f"stage-1 checkpoint {path} does not fit this model (--arch / number of classes?): "
                         + "; ".join(bad[:3] + [f"missing {missing[:4]}"] * bool(missing)
                                     + [f"unexpected {extra[:4]}"] * bool(extra)))
    model.load_state_dict(wanted, strict=False)
    return (f"loaded stage 1 from {path}: {len(wanted)} tensors (trunk + the student classifier, the probe's start); "
            f"its projection is dropped")
