"""Generative Distribution Distillation: ``gendd`` (stage 2) and ``gendd_stage1``
(docs/method.md#generative-distribution-distillation).

GenDD distils by generation: a diffusion model learns the teacher's pooled feature given the
student's, and the student predicts by sampling teacher-like features and applying the frozen
teacher classifier to their mean (:mod:`gpaco.models.gendd`, :mod:`gpaco.losses.gendd`).

* ``gendd_stage1`` (optional on CIFAR, used by every supervised ImageNet recipe): CE of the
  frozen teacher classifier applied to a projection of the student feature.
* ``gendd``: per step, the teacher's feature (``--teacher-weights``, frozen, eval mode) is
  contracted toward the label's classifier row (``--gendd-contraction``), mixed with the batch
  (``--gendd-mixup-beta``), cut into tokens of ``--gendd-token-dim``, repeated
  ``--gendd-batch-mul`` times, its conditions dropped with ``--gendd-cond-drop``, and the
  diffusion loss trains the denoiser and, through the condition, the student. A linear probe
  on the detached student feature trains with CE beside it: loss = diffusion + CE.
  ``--gendd-stage1 PATH`` starts the student from a stage-1 run. ``--gendd-label-free``
  (CC3M): the targets are the teacher's probabilities, no CE, the probe stays frozen.
  Evaluation samples ``--gendd-samples`` features per image with ``--gendd-steps`` steps and
  guidance ``--gendd-cfg``; the probe's accuracy is reported beside it.

Optimisation as the original: AdamW with weight decay on every parameter but the denoiser's
(the original's name rule ``'diffloss' or 'ln'``), and beta2 rising per step from
``--gendd-beta2-min`` to 0.999 (:class:`gpaco.engine.schedule.Beta2Schedule`); stage 1 AdamW
0.9/0.999 with weight decay on everything. Both need ``--optimizer adamw``.

Every random draw of a step (mixup, condition drop, diffusion steps and noise) comes from
generators seeded by (``--seed``, epoch, step, rank), and beta2 is a function of (epoch,
step): a run resumed after a stop, even mid-epoch, continues exactly. The evaluation noise is
reseeded at every evaluation (the model's), so nothing of either is saved.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from gpaco import distributed as gdist
from gpaco.data.build import is_cifar
from gpaco.engine.args import FlagError
from gpaco.engine.optim import build_optimizer
from gpaco.engine.schedule import Beta2Schedule, apply_beta2
from gpaco.engine.step import Batch, FitContext, StepOutput
from gpaco.losses.criteria import CrossEntropyLoss
from gpaco.models.gendd import (
    GenDDStudent, Stage2Draws, Stage2Settings, build_gendd_stage1, build_gendd_student, check_sampling_steps,
    load_stage1,
)

from .base import ClassificationMethod, flag
from .flags import LABEL_SMOOTHING
from .kd import TEACHER_ARCH, TEACHER_WEIGHTS, dry_run_teacher, report_teacher
from .teacher import FrozenTeacher, load_teacher

__all__ = ["GenDD", "GenDDStage1", "step_seed", "NO_DECAY_KEYS"]

#: The original's no-weight-decay rule: a parameter whose name holds one of these (its model's
#: names match only the denoiser, ``diffloss.*``).
NO_DECAY_KEYS = ("diffloss", "ln")

TEACHER_DIM = flag("--gendd-teacher-dim", type=int, default=None, range="[1, inf)", metavar="D",
                   help="the teacher's feature size D, which the denoiser generates (64 resnet56/110, 128 wrn_40_2, "
                        "256 resnet32x4, 512 vgg13/resnet34, 2048 resnet50/resnext101, 768/1024 BEiT-v2 B/L; default: "
                        "the student's feature size); checked against the teacher at start-up")
TOKEN_DIM = flag("--gendd-token-dim", type=int, default=64, range="[1, inf)",
                 help="size d of the tokens the teacher feature is cut into (D / d tokens, each generated on its own)")
WIDTH = flag("--gendd-width", type=int, default=1024, range="[1, inf)", help="width of the denoiser MLP")
DEPTH = flag("--gendd-depth", type=int, default=3, range="[1, inf)", help="residual blocks of the denoiser MLP")
STEPS = flag("--gendd-steps", default="100", metavar="N",
             help="sampling steps at evaluation, respaced from the 1000 training steps (the original: 100 CIFAR, "
                  "64 ImageNet; also ddimN)")
SAMPLES = flag("--gendd-samples", type=int, default=1, range="[1, inf)",
               help="features sampled per image at evaluation, averaged (the original validates with 1 and its "
                    "final evaluation uses 5: tools/eval.py --gendd-samples 5)")
CFG = flag("--gendd-cfg", type=float, default=2.0, range="[0, inf)",
           help="classifier-free guidance scale of the sampler (1: conditional model alone)")
CONTRACTION = flag("--gendd-contraction", type=float, default=0.9, range="[0, 1]",
                   help="distribution contraction s: the generated target is (1 - s) teacher feature + s x the "
                        "teacher classifier's row of the label (CIFAR 0.7-0.9, ImageNet 0.9, ImageNet-LT and CC3M 0)")
MIXUP_BETA = flag("--gendd-mixup-beta", type=float, default=1.0, range="[0, inf)",
                  help="feature mixup of condition and target with m ~ Beta(b, b), one m and partner per batch "
                       "(the original's --beta; 0: off, as its BEiT recipes)")
BATCH_MUL = flag("--gendd-batch-mul", type=int, default=None, range="[1, inf)",
                 help="M: every token row is repeated M times, each copy with its own diffusion step and noise "
                      "(default: 30 on CIFAR, 10 otherwise, the original's recipes)")
COND_DROP = flag("--gendd-cond-drop", type=float, default=0.2, range="[0, 1]",
                 help="probability that a row's condition is dropped to zero (trains the unconditional model "
                      "classifier-free guidance needs)")
LABEL_FREE = flag("--gendd-label-free", action=argparse.BooleanOptionalAction, default=False,
                  help="label-free distillation (CC3M): the labels are never read; the contraction targets are the "
                       "teacher's probabilities (the original's recipes pass --gendd-contraction 0), no "
                       "cross-entropy, the linear probe stays frozen")
BETA2_MIN = flag("--gendd-beta2-min", type=float, default=None, range="[0, 0.999]",
                 help="AdamW's beta2 rises from this to 0.999 over the run by a half cosine, per step (default: "
                      "0.95 on CIFAR, 0.96 otherwise)")
STAGE1 = flag("--gendd-stage1", default=None, metavar="PATH",
              help="start the student from a gendd_stage1 run: its best.pth / checkpoint.pth (or the authors' "
                   "stage-1 file); the trunk and the student classifier (the probe's start) are loaded")


def teacher_dim_of(state: Mapping[str, Any]) -> Dict[str, Any]:
    """``{"teacher_dim": D}`` from the teacher classifier [C, D] a GenDD file holds (ours:
    ``cls_centers``; the authors': also ``classifier.weight``), else ``{}``."""
    weight = state.get("cls_centers", state.get("classifier.weight"))
    return {"teacher_dim": int(weight.shape[1])} if isinstance(weight, Tensor) and weight.ndim == 2 else {}


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """The seed of one training step's draws: a function of where the run is, so a resumed run
    draws what the uninterrupted one drew."""
    return (((seed * 1_000_003 + epoch) * 1_000_003 + step) * 1_009 + rank) % (2 ** 63)


def _teacher(options: Mapping[str, Any], num_classes: int) -> FrozenTeacher:
    """The frozen teacher of ``--teacher-weights`` / ``--teacher-arch`` (a dry run without the
    file: random weights, as the KD methods)."""
    weights, arch = options.get("teacher_weights"), options.get("teacher_arch")
    try:
        if weights:
            return load_teacher(weights, arch=arch, num_classes=num_classes)
        why = "no --teacher-weights"
    except FileNotFoundError as e:
        if not options.get("dry_run"):
            raise FlagError(str(e)) from None
        why = str(e)
    return dry_run_teacher(why, arch, options, num_classes)


class _TeacherClassifier(ClassificationMethod):
    """What both stages share: the teacher flags and its loading, the teacher classifier copied
    into the model, the AdamW groups."""

    default_aug, cifar_aug = "crop_flip", "cifar_crop_flip"
    checkpoint_prefixes = {"backbone": "backbone.", "classifier": "fc."}

    def report_teacher(self, ctx: FitContext) -> None:
        report_teacher(ctx, self.teacher)  # one line with the teacher's accuracy

    def build_criterion(self, **options):
        return CrossEntropyLoss(prior=False, **options)

    def validate(self, options: dict) -> None:
        if not options.get("teacher_weights") and not options.get("dry_run"):
            raise ValueError(f"--method {self.name} needs --teacher-weights PATH (a gpaco run folder or checkpoint, an "
                             f"mdistiller, torchvision or BEiT-v2 file; the last three also need --teacher-arch)")
        if options.get("optimizer", "adamw") != "adamw":
            raise ValueError(f"--method {self.name} trains with AdamW as the original: pass --optimizer adamw (got "
                             f"--optimizer {options['optimizer']})")

    def load_teacher(self, ctx: FitContext) -> FrozenTeacher:
        """Load the teacher, check its feature size and copy its classifier into the model."""
        options = ctx.options
        teacher = _teacher(options, int(options["num_classes"])).to(ctx.device)
        if ctx.channels_last:
            teacher.to(memory_format=torch.channels_last)
        weight, bias = teacher.classifier  # FlagError when the teacher is not a classifier on a feature
        dim = ctx.module.teacher_dim
        if weight.shape[1] != dim:
            given = "" if options.get("gendd_teacher_dim") else " (by default the student's feature size)"
            raise FlagError(f"--gendd-teacher-dim is {dim}{given}, but the teacher {teacher.arch} from "
                            f"{teacher.source} has {weight.shape[1]}-d features: pass --gendd-teacher-dim "
                            f"{weight.shape[1]}")
        ctx.module.set_teacher_classifier(weight, bias)
        return teacher

    def adamw(self, ctx: FitContext, *, no_decay_keys=(), beta2: float = 0.999) -> None:
        """The original's AdamW: weight decay on every trainable parameter (1-D ones too) but those
        named by ``no_decay_keys``. It replaces the optimizer the task built from ``--optimizer``
        (before any checkpoint state is loaded into it)."""
        options = ctx.options
        ctx.optimizer = build_optimizer(ctx.module, name="adamw", lr=options["lr"], wd=options["wd"], decay_1d=True,
                                        no_decay_keys=no_decay_keys, betas=(0.9, beta2))


class GenDDStage1(_TeacherClassifier):
    name = "gendd_stage1"
    summary = "GenDD stage 1: CE of the frozen teacher classifier on a projection of the student feature"
    paper = "Cui et al., 2025 (GenDD)"
    flags = (TEACHER_WEIGHTS, TEACHER_ARCH, TEACHER_DIM, LABEL_SMOOTHING)
    model_options = {"gendd_teacher_dim": "teacher_dim"}
    loss_options = ("label_smoothing",)

    def build_model(self, arch, num_classes, **options):
        return build_gendd_stage1(arch, num_classes, **options)

    def options_from_weights(self, state: Mapping[str, Any]) -> Dict[str, Any]:
        return teacher_dim_of(state)

    def setup(self, ctx: FitContext) -> None:
        self.teacher = self.load_teacher(ctx)
        self.report_teacher(ctx)
        self.teacher = None  # only its classifier (now the model's buffers) takes part in stage 1
        self.adamw(ctx)


class GenDD(_TeacherClassifier):
    name = "gendd"
    summary = ("GenDD: a diffusion model generates the teacher's feature from the student's; prediction = teacher "
               "classifier on sampled features")
    paper = "Cui et al., 2025 (GenDD)"
    flags = (TEACHER_WEIGHTS, TEACHER_ARCH, TEACHER_DIM, TOKEN_DIM, WIDTH, DEPTH, STEPS, SAMPLES, CFG, CONTRACTION,
             MIXUP_BETA, BATCH_MUL, COND_DROP, LABEL_FREE, BETA2_MIN, STAGE1, LABEL_SMOOTHING)
    model_options = {"gendd_teacher_dim": "teacher_dim", "gendd_token_dim": "token_dim", "gendd_width": "width",
                     "gendd_depth": "depth", "gendd_steps": "sampling_steps", "gendd_samples": "num_samples",
                     "gendd_cfg": "cfg", "gendd_label_free": "freeze_probe"}
    loss_options = ("label_smoothing",)
    # the denoiser is the part a file must hold besides the trunk and the probe
    checkpoint_prefixes = {"backbone": "backbone.", "classifier": "fc.", "head": "diffloss."}

    def build_model(self, arch, num_classes, **options):
        return build_gendd_student(arch, num_classes, **options)

    def options_from_weights(self, state: Mapping[str, Any]) -> Dict[str, Any]:
        """The denoiser's size from its tensors (the authors' files record no flags): width and
        token size from ``input_proj`` [W, d], depth from the residual blocks."""
        options = teacher_dim_of(state)
        proj = state.get("diffloss.net.input_proj.weight")
        if isinstance(proj, Tensor) and proj.ndim == 2:
            options.update(width=int(proj.shape[0]), token_dim=int(proj.shape[1]))
        blocks = {k.split(".")[3] for k in state if k.startswith("diffloss.net.res_blocks.")}
        if blocks:
            options["depth"] = len(blocks)
        return options

    def needs_labels(self, options: Mapping[str, Any]) -> bool:
        return not options.get("gendd_label_free")  # label-free: the teacher's probabilities, no CE

    def validate(self, options: dict) -> None:
        super().validate(options)
        check_sampling_steps(options.get("gendd_steps", "100"))
        dim, token = options.get("gendd_teacher_dim"), options.get("gendd_token_dim", 64)
        if dim is not None and dim % token:
            raise ValueError(f"--gendd-token-dim {token} must divide the teacher's feature size "
                             f"--gendd-teacher-dim {dim}")

    def prepare(self, model, options: dict) -> Optional[str]:
        path = options.get("gendd_stage1")
        if not path:
            return None
        try:
            return load_stage1(model, path, arch=options.get("arch"))
        except FileNotFoundError:
            raise FileNotFoundError(f"--gendd-stage1 {path}: no such file") from None
        except ValueError as e:
            raise ValueError(f"--gendd-stage1: {e}") from None

    # ------------------------------------------------------------------ the run

    def settings(self, options: Mapping[str, Any]) -> Stage2Settings:
        """The stage-2 hyper-parameters of the flags (``--gendd-batch-mul`` by dataset when unset)."""
        cifar = is_cifar(options.get("dataset", ""))
        batch_mul = options.get("gendd_batch_mul") or (30 if cifar else 10)
        return Stage2Settings(contraction=float(options.get("gendd_contraction", 0.9)),
                              mixup_beta=float(options.get("gendd_mixup_beta", 1.0)), batch_mul=int(batch_mul),
                              cond_drop=float(options.get("gendd_cond_drop", 0.2)))

    def setup(self, ctx: FitContext) -> None:
        """The teacher (its classifier into the model), the settings, the AdamW groups and beta2."""
        options = ctx.options
        self.stage2 = self.settings(options)
        self.label_free = bool(options.get("gendd_label_free"))
        beta2_min = options.get("gendd_beta2_min")
        if beta2_min is None:
            beta2_min = 0.95 if is_cifar(options.get("dataset", "")) else 0.96
        self.beta2 = Beta2Schedule(beta2_min=float(beta2_min), epochs=int(options["epochs"]))
        self.teacher = self.load_teacher(ctx)
        self.report_teacher(ctx)
        self.adamw(ctx, no_decay_keys=NO_DECAY_KEYS, beta2=self.beta2.beta2_min)

    def draws(self, ctx: FitContext, batch: int) -> Stage2Draws:
        """This step's draws, from generators seeded by where the run is (:func:`step_seed`)."""
        seed = step_seed(int(ctx.options.get("seed") or 0), ctx.epoch, ctx.step, gdist.get_rank())
        generator = torch.Generator(device=ctx.device)
        generator.manual_seed(seed)
        mixup_generator = torch.Generator()  # randperm and the Beta draw run on the host
        mixup_generator.manual_seed(seed)
        model: GenDDStudent = ctx.module
        return Stage2Draws.draw(self.stage2, batch=batch, num_tokens=model.num_tokens, token_dim=model.token_dim,
                                generator=generator, mixup_generator=mixup_generator)

    def set_beta2(self, ctx: FitContext) -> None:
        """beta2 of this step's optimizer update, from the micro-batch that starts its accumulation cycle."""
        if ctx.steps_per_epoch is None:
            raise RuntimeError("--method gendd needs the engine's steps_per_epoch (the per-step beta2 clock)")
        first = ctx.step - ctx.step % max(ctx.accum_iter, 1)
        apply_beta2(ctx.optimizer, self.beta2(ctx.epoch, first, ctx.steps_per_epoch))

    def training_step(self, ctx: FitContext, batch: Batch) -> StepOutput:
        images = batch.images
        with ctx.autocast():
            teacher_features = self.teacher.features(images)  # no_grad, eval mode
        teacher_features = teacher_features.float()
        if self.label_free:
            weight, bias = self.teacher.classifier
            targets = F.softmax(F.linear(teacher_features, weight.float(), bias.float()), dim=1)
        else:
            targets = batch.loss_targets
        self.set_beta2(ctx)
        draws = self.draws(ctx, images.shape[0])
        with ctx.autocast():
            out = ctx.model(images, teacher_features, targets, settings=self.stage2, draws=draws)
        diffusion = out.loss
        if self.label_free:
            return StepOutput(diffusion, parts={"diffusion": diffusion.detach()})
        ce = ctx.criterion(out.probe_logits, batch.loss_targets)
        return StepOutput(diffusion + ce, logits=out.probe_logits,
                          parts={"diffusion": diffusion.detach(), "ce": ce.detach()})

    def eval_forward(self, model, images):
        """``{"logits": generated-feature logits, "probe": the linear probe's}`` [B, C] each."""
        return model.predict(images)

    def state_dict(self) -> Dict[str, Any]:
        return {}  # draws and beta2 follow from the run's position; the model holds the rest
