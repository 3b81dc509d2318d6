"""Knowledge distillation from a frozen teacher: ``kl_kd``, ``ikl_kd`` and ``gkl_kd``
(docs/method.md#knowledge-distillation).

The student is a plain classifier (the model ``--method ce`` trains). Each step runs the
teacher (:mod:`gpaco.methods.teacher`: eval mode, no gradient, outside the optimizer, the
saved model and DDP) and the student on the same images and minimises

    loss = CE_WEIGHT * CE(student, y) + factor * KD(student, teacher)

* ``kl_kd``: KD = ``w * T^2 * KL(softmax(t/T) || softmax(s/T))`` (Hinton et al.), ``w`` = ``--kd-weight``;
* ``ikl_kd``: KD = IKL, ``beta`` x the weighted MSE of pairwise logit gaps + ``alpha`` x the
  soft CE at temperature T (:func:`gpaco.losses.kd.ikl_loss`);
* ``gkl_kd``: KD = GKL, IKL with the weights raised to ``gamma`` and the MSE divided by the
  sum of the pair weights (:func:`gpaco.losses.kd.gkl_loss`).

``factor = min(epoch / W, 1)`` with the epoch counted from 1 and W = ``--kd-warmup-epochs``
(0: no warm-up). IKL and GKL weight the gap MSE either with ``softmax(t / T2)`` (``--no-kd-gi``)
or with class-wise global information (``--kd-gi``): row ``y`` of a [C, C] matrix holding, for
each class, the mean of ``softmax(t / T2)`` over its training samples in the previous epoch
(uniform in the first). The matrix (:class:`gpaco.losses.kd.ClassStats`) is summed over the
processes at each epoch's end and saved in the checkpoint, so a resumed run continues it.

``--device-batch N`` / ``--bn-device-batch N`` (the original's DDP / DataParallel runs on more
GPUs than this one): BatchNorm normalises groups of N, and the CE and KD terms are computed per
group of N and averaged, as each GPU computed its own loss (it matters for GKL, whose normaliser
is per group); the class statistics still sum over every sample.

The hyperparameters' defaults are the released configurations' (``ikl_kd``: T 1, alpha 1,
beta 1, T2 100, GI off, W 1; ``gkl_kd``: T 1, alpha beta gamma 1, T2 1, GI on, W 5;
``kl_kd``: T 1, weight 1); ``--kd-t2``, ``--kd-gi`` and ``--kd-warmup-epochs`` therefore
default to None on the command line and are resolved per method (:meth:`Distillation.settings`).
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
from gpaco.engine.logging import print_main
from gpaco.engine.step import Batch, FitContext, StepOutput
from gpaco.losses.criteria import CrossEntropyLoss
from gpaco.losses.kd import ClassStats, gkl_loss, ikl_loss, kl_kd_loss
from gpaco.metrics import format_accuracy
from gpaco.models.contrastive import build_classifier
from gpaco.models.view_bn import group_count

from .base import ClassificationMethod, flag
from .teacher import FrozenTeacher, load_teacher, random_teacher

__all__ = ["Distillation", "KLKD", "IKLKD", "GKLKD", "warmup_factor", "class_stats_state", "load_class_stats_state",
           "dry_run_teacher", "report_teacher"]

# Flags several methods own are defined once (their definitions must agree); those whose
# default differs per method default to None and are resolved by Distillation.settings.
TEACHER_WEIGHTS = flag("--teacher-weights", default=None, metavar="PATH",
                       help="the frozen teacher: a gpaco run folder (its best.pth) or checkpoint, an mdistiller "
                            "ckpt_epoch_240.pth, a torchvision state dict (read without running code)")
TEACHER_ARCH = flag("--teacher-arch", default=None, metavar="ARCH",
                    help="the teacher's network (kd_resnet32x4, resnet34, ...); needed for mdistiller / torchvision "
                         "files, checked against a gpaco checkpoint's")
TEMPERATURE = flag("--kd-temperature", type=float, default=1.0, range="(0, inf)",
                   help="distillation temperature T of the soft targets (both sides)")
CE_WEIGHT = flag("--kd-ce-weight", type=float, default=1.0, range="[0, inf)",
                 help="weight of the cross-entropy on the labels")
WARMUP = flag("--kd-warmup-epochs", type=int, default=None, range="[0, inf)",
              help="the distillation term is scaled by min(epoch / W, 1), epochs counted from 1; 0: no warm-up "
                   "(default: ikl_kd 1, gkl_kd 5, kl_kd 0)")
DROP_LAST = flag("--kd-drop-last", action=argparse.BooleanOptionalAction, default=None,
                 help="drop each epoch's last, partial batch (default: kept on CIFAR, as mdistiller; dropped on "
                      "split lists, as the ImageNet-LT distillation driver)")
ALPHA = flag("--kd-alpha", type=float, default=1.0, range="[0, inf)", help="IKL/GKL: weight of the soft CE")
BETA = flag("--kd-beta", type=float, default=1.0, range="[0, inf)",
            help="IKL/GKL: weight of the weighted MSE of pairwise logit gaps")
T2 = flag("--kd-t2", type=float, default=None, range="(0, inf)",
          help="IKL/GKL: temperature of softmax(teacher / T2), the gap weights without --kd-gi and what the class "
               "statistics average (default: ikl_kd 100, gkl_kd 1)")
GI = flag("--kd-gi", action=argparse.BooleanOptionalAction, default=None,
          help="IKL/GKL: weight the gaps with class-wise global information (the previous epoch's mean teacher "
               "prediction of the sample's class) instead of the sample's own (default: ikl_kd off, gkl_kd on)")
GAMMA = flag("--kd-gamma", type=float, default=1.0, range="[0, inf)",
             help="GKL: the gap weights are raised to this power (0: all weights 1)")
KD_WEIGHT = flag("--kd-weight", type=float, default=1.0, range="[0, inf)",
                 help="KL-KD: weight of the T^2-scaled KL term")
FREEZE_CLASSIFIER = flag("--kd-freeze-classifier", action="store_true", default=None,
                         help="KL-KD: the student's classifier stays at its random initialisation (the original's "
                              "label-free CC3M KL baseline, whose published number depends on it)")

_COMMON = (TEACHER_WEIGHTS, TEACHER_ARCH, TEMPERATURE, CE_WEIGHT, WARMUP, DROP_LAST)


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """``min(epoch / W, 1)`` for the 0-based ``epoch`` counted from 1 (W 20: 0.05 in the first); W 0: 1."""
    return 1.0 if warmup_epochs <= 0 else min((epoch + 1) / warmup_epochs, 1.0)


class Distillation(ClassificationMethod):
    """Distillation from a frozen teacher (see the module docstring); subclasses give the KD term."""

    flags = _COMMON
    default_aug, cifar_aug = "crop_flip", "cifar_crop_flip"
    checkpoint_prefixes = {"backbone": "backbone.", "classifier": "fc."}
    #: the method's own defaults of the flags that default to None
    defaults: Mapping[str, Any] = {}
    #: keep the class-wise statistics (IKL and GKL; also with GI off, as the original)
    class_stats: bool = False

    def build_model(self, arch, num_classes, **options):
        return build_classifier(arch, num_classes, **options)

    def build_criterion(self, **options):
        return CrossEntropyLoss(prior=False, **options)

    def settings(self, options: Mapping[str, Any]) -> Dict[str, Any]:
        """The flag values by ``dest``; those left at None (or absent) take this method's default,
        else the flag's."""
        return {f.dest: options[f.dest] if options.get(f.dest) is not None else
                self.defaults.get(f.dest, f.kwargs.get("default")) for f in self.flags}

    def validate(self, options: dict) -> None:
        if not options.get("teacher_weights") and not options.get("dry_run"):
            raise ValueError(f"--method {self.name} needs --teacher-weights PATH (a gpaco run folder or checkpoint, an "
                             f"mdistiller or torchvision file; the last two also need --teacher-arch)")

    def needs_labels(self, options: Mapping[str, Any]) -> bool:
        """The cross-entropy and the class statistics read the labels: kl_kd with
        ``--kd-ce-weight 0`` does not (the CC3M KL baseline)."""
        return self.class_stats or self.settings(options)["kd_ce_weight"] > 0

    # ------------------------------------------------------------------ the run

    def setup(self, ctx: FitContext) -> None:
        """Load the teacher (and print its accuracy), create the class statistics."""
        self.kd = self.settings(ctx.options)
        num_classes = int(ctx.options["num_classes"])
        drop_last = self.kd["kd_drop_last"]
        # read by the task's train loader, built after setup
        self.drop_last = not is_cifar(ctx.options.get("dataset", "")) if drop_last is None else bool(drop_last)
        self.teacher = self._teacher(ctx.options, num_classes).to(ctx.device)
        if ctx.channels_last:
            self.teacher.to(memory_format=torch.channels_last)
        self.stats = ClassStats(num_classes).to(ctx.device) if self.class_stats else None
        self.report_teacher(ctx)

    def _teacher(self, options: Mapping[str, Any], num_classes: int) -> FrozenTeacher:
        weights, arch = self.kd["teacher_weights"], self.kd["teacher_arch"]
        try:
            return load_teacher(weights, arch=arch, num_classes=num_classes) if weights else \
                dry_run_teacher("no --teacher-weights", arch, options, num_classes)
        except FileNotFoundError as e:
            if not options.get("dry_run"):
                raise FlagError(str(e)) from None
            return dry_run_teacher(str(e), arch, options, num_classes)

    def report_teacher(self, ctx: FitContext) -> None:
        report_teacher(ctx, self.teacher)

    def distill(self, student: Tensor, teacher: Tensor, class_prior: Optional[Tensor]) -> Tensor:
        """The KD term of one group (scalar)."""
        raise NotImplementedError

    def training_step(self, ctx: FitContext, batch: Batch) -> StepOutput:
        labels = batch.targets
        with ctx.autocast():
            teacher_logits = self.teacher(batch.images)  # no_grad, eval mode
            logits = ctx.model(batch.images)
        class_prior = self.stats.rows(labels) if self.stats is not None and self.kd.get("kd_gi") else None
        factor = warmup_factor(ctx.epoch, self.kd["kd_warmup_epochs"])
        groups = group_count(labels.shape[0], ctx.options.get("device_batch") or ctx.options.get("bn_device_batch"))
        ce_terms, kd_terms = [], []
        for i, (s, t, y) in enumerate(zip(logits.tensor_split(groups), teacher_logits.tensor_split(groups),
                                          batch.loss_targets.tensor_split(groups))):
            prior = class_prior.tensor_split(groups)[i] if class_prior is not None else None
            # weight 0 skips the CE (not 0 x CE): label-free batches hold no label to read
            ce_terms.append(self.kd["kd_ce_weight"] * ctx.criterion(s, y) if self.kd["kd_ce_weight"] else
                            torch.zeros((), device=s.device))
            kd_terms.append(factor * self.distill(s, t, prior))
        ce, kd = (torch.stack(terms).mean() if groups > 1 else terms[0] for terms in (ce_terms, kd_terms))
        if self.stats is not None:
            probs = F.softmax(teacher_logits.to(self.stats.matrix.dtype) / self.kd["kd_t2"], dim=1)
            self.stats.update(labels, probs)
        return StepOutput(ce + kd, logits=logits, parts={"ce": ce.detach(), "kd": kd.detach()})

    def on_train_epoch_end(self, ctx: FitContext) -> None:
        if self.stats is not None:
            self.stats.end_epoch()  # summed over the processes, then row-normalised

    # ------------------------------------------------------------------ checkpointed state

    def state_dict(self) -> Dict[str, Any]:
        return {} if self.stats is None else class_stats_state(self.stats)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.stats is None:
            return super().load_state_dict(state)
        load_class_stats_state(self.stats, state, self.name)


def dry_run_teacher(why: str, arch: Optional[str], options: Mapping[str, Any], num_classes: int) -> FrozenTeacher:
    """A teacher with random weights for a dry run without the teacher's file (``why``: what is missing)."""
    arch = arch or options["arch"]
    print_main(f"warning: {why}; the dry run distils from a {arch} teacher with random weights")
    return random_teacher(arch, num_classes, image_size=options.get("dry_run_image_size"))


def report_teacher(ctx: FitContext, teacher: FrozenTeacher) -> None:
    """One line with the teacher's top-1 on the test split (val without one), before training:
    a wrong teacher shows at once."""
    result = ctx.evaluate(teacher) if ctx.evaluate is not None else None
    if result is None:
        print_main(f"teacher {teacher.arch} from {teacher.source}")
        return
    split, m = result
    groups = " / ".join(f"{g} {format_accuracy(m[g])}" for g in ("many", "medium", "few"))
    print_main(f"teacher {teacher.arch} from {teacher.source}: top-1 {format_accuracy(m['top1'])} on "
               f"{split} ({groups})")


def class_stats_state(stats: ClassStats) -> Dict[str, Any]:
    """A method's checkpoint entries for its class statistics: the class matrix, and every
    process's accumulator of the current epoch (non-zero after a mid-epoch stop). Called on
    every process at once (the engine's save): the accumulators are gathered."""
    return {"class_matrix": stats.matrix.detach().cpu().clone(),
            "class_accumulators": gdist.all_gather_nograd(stats.accumulator[None]).cpu().clone()}


def load_class_stats_state(stats: ClassStats, state: Mapping[str, Any], method: str) -> None:
    """Restore :func:`class_stats_state` into ``stats`` (``ValueError`` naming ``method`` when the
    entries are missing or for another class count)."""
    if "class_matrix" not in state or "class_accumulators" not in state:
        raise ValueError(f"method {method!r}: the checkpoint holds no class statistics (keys {sorted(state)})")
    matrix, accumulators = state["class_matrix"], state["class_accumulators"]
    C = stats.matrix.shape[0]
    if tuple(matrix.shape) != (C, C) or accumulators.ndim != 3 or tuple(accumulators.shape[1:]) != (C, C):
        raise ValueError(f"method {method!r}: the checkpoint's class statistics are for "
                         f"{tuple(matrix.shape)} classes, this run has {C}")
    rank, world = gdist.get_rank(), gdist.get_world_size()
    stats.matrix.copy_(matrix)
    if accumulators.shape[0] == world:
        stats.accumulator.copy_(accumulators[rank])
    else:  # another process count: the epoch's sum is kept (on rank 0), not each process's share
        stats.accumulator.copy_(accumulators.sum(0) if rank == 0 else torch.zeros_like(accumulators[0]))


class KLKD(Distillation):
    name = "kl_kd"
    summary = "distillation: CE + w x T^2 KL(teacher ‖ student) from a frozen teacher"
    paper = "Hinton et al. 2015"
    flags = _COMMON + (KD_WEIGHT, FREEZE_CLASSIFIER)
    model_options = ("kd_freeze_classifier",)
    defaults = {"kd_warmup_epochs": 0}

    def build_model(self, arch, num_classes, *, kd_freeze_classifier: Optional[bool] = None, **options):
        model = build_classifier(arch, num_classes, **options)
        if kd_freeze_classifier:  # left out of the optimizer (it takes trainable parameters only)
            model.fc.requires_grad_(False)
        return model

    def distill(self, student, teacher, class_prior):
        return self.kd["kd_weight"] * kl_kd_loss(student, teacher, temperature=self.kd["kd_temperature"])


class IKLKD(Distillation):
    name = "ikl_kd"
    summary = "IKL distillation: CE + beta x weighted MSE of logit gaps + alpha x soft CE, frozen teacher"
    paper = "Cui et al., NeurIPS 2024 (DKL)"
    flags = _COMMON + (ALPHA, BETA, T2, GI)
    defaults = {"kd_warmup_epochs": 1, "kd_t2": 100.0, "kd_gi": False}
    class_stats = True

    def distill(self, student, teacher, class_prior):
        kd = self.kd
        return ikl_loss(student, teacher, temperature=kd["kd_temperature"], alpha=kd["kd_alpha"],
                        beta=kd["kd_beta"], class_prior=class_prior, t2=kd["kd_t2"])


class GKLKD(Distillation):
    name = "gkl_kd"
    summary = "GKL distillation: IKL with gap weights^gamma, the MSE normalised by the weight sum"
    paper = "Cui et al., TPAMI 2026 (GKL)"
    flags = _COMMON + (ALPHA, BETA, T2, GI, GAMMA)
    defaults = {"kd_warmup_epochs": 5, "kd_t2": 1.0, "kd_gi": True}
    class_stats = True

    def distill(self, student, teacher, class_prior):
        kd = self.kd
        return gkl_loss(student, teacher, temperature=kd["kd_temperature"], alpha=kd["kd_alpha"],
                        beta=kd["kd_beta"], gamma=kd["kd_gamma"], class_prior=class_prior, t2=kd["kd_t2"])
