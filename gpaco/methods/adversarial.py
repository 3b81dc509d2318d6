"""Adversarial training: ``pgd_at`` (Madry), ``trades_at`` (TRADES), ``ikl_at`` and ``gkl_at``
(the DKL papers' IKL-AT / GKL-AT) (docs/method.md#adversarial-training).

Each step attacks the batch, then trains on it, as the DKL code (a TRADES/AWP fork) does:

1. **Attack**, the model in eval mode: ``x' = x + 0.001 * N(0, 1)``, then K sign-gradient
   steps of size ``eta`` that maximise the method's attack objective, each projected on the
   L∞ ball of radius ``eps_t`` and on [0, 1] (:func:`gpaco.attacks.pgd_attack`). The radius
   ramps with the 1-based epoch: ``eps_t = eps * e / E``; the budget ``high`` (every DKL
   script) runs K = 5 steps of ``eps_t / 2`` at every epoch (the released code's if-chain
   overwrites its per-quarter budgets), ``low`` 2 steps of ``eps_t``
   (:func:`attack_schedule`). The attack's objective has its own weights (``--attack-*``).
2. **AWP** (Wu et al. 2020) from epoch ``--awp-warmup`` on: the direction of one SGD step at
   the initial LR that increases the method's proxy loss, scaled per weight to its norm
   (:func:`gpaco.attacks.awp_direction`), is added times ``--awp-gamma`` before the forward
   and taken back after the optimizer step (:meth:`after_optimizer_step`).
3. **Train**, the model in training mode: adversarial logits ``a = f(x')`` then natural
   ``n = f(x)`` (two BatchNorm batches, in that order) and the method's loss.

Every method also keeps an exponential average of the weights over epochs (the DKL code's
``swa.py``, run after training on the epoch files: ``S_e = 0.1 w_e + 0.9 S_{e-1}``), in its
checkpoint state; ``tools/average_weights.py RUN`` writes it out as a checkpoint.

IKL-AT / GKL-AT weight their gap MSE with class-wise global information: row ``y`` of a
[C, C] matrix of each class's mean ``softmax(n / T)`` over the previous epoch's training
batches (the clean half with ``--aug cifar_crop_flip_cifar_autoaugment``), kept and
checkpointed as the distillation methods' (:class:`gpaco.losses.kd.ClassStats`). With that
two-view ``--aug`` the batch is ``[plain views; AutoAugment views]`` (2B images, labels
repeated) and the robust term is ``R(first B) + w * R(second B)`` (``--at-aug-weight``),
while the CE and the AWP proxy take the 2B batch whole.

The models see pixels in [0, 1] (``--norm none``), as the original's WideResNets.
"""
from __future__ import annotations

import argparse
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpaco import distributed as gdist
from gpaco.attacks import awp_direction, perturb_weights, pgd_attack
from gpaco.engine.step import Batch, FitContext, StepOutput
from gpaco.losses.criteria import CrossEntropyLoss
from gpaco.losses.kd import ClassStats, gkl_at_loss, ikl_at_loss
from gpaco.models.contrastive import build_classifier
from gpaco.models.weight_average import EpochAverage

from .base import ClassificationMethod, flag
from .kd import class_stats_state, load_class_stats_state

__all__ = ["AdversarialTraining", "PGDAT", "TRADESAT", "IKLAT", "GKLAT", "attack_schedule", "START_STD"]

#: the standard deviation of the attack's random start (the DKL / TRADES code's 0.001 * randn)
START_STD = 0.001

EPSILON = flag("--at-epsilon", type=float, default=8.0, range="[0, 255]", metavar="LEVELS",
               help="the attack's L∞ radius in pixel levels of 255 (8: 8/255), reached at the last epoch with --at-ramp")
RAMP = flag("--at-ramp", action=argparse.BooleanOptionalAction, default=True,
            help="the radius ramps linearly with the 1-based epoch e: eps * e / epochs (the DKL code); "
                 "--no-at-ramp: eps from the first epoch")
BUDGET = flag("--at-budget", default="high", choices=("high", "low"),
              help="attack steps per batch: high = 5 steps of eps_t / 2 (what the released 'high' budget runs at "
                   "every epoch), low = 2 steps of eps_t")
STEPS = flag("--at-steps", type=int, default=None, range="[0, inf)",
             help="override the budget's number of attack steps")
STEP_SIZE = flag("--at-step-size", type=float, default=None, range="[0, 255]", metavar="LEVELS",
                 help="override the budget's attack step, in pixel levels of 255")
AWP_GAMMA = flag("--awp-gamma", type=float, default=0.005, range="[0, inf)",
                 help="adversarial weight perturbation size (0: no AWP)")
AWP_WARMUP = flag("--awp-warmup", type=int, default=10, range="[1, inf)", metavar="EPOCH",
                  help="AWP from this 1-based epoch on")
AVERAGE = flag("--at-average-decay", type=float, default=0.9, range="[0, 1)",
               help="exponential average of the weights over epochs, S = (1 - d) w + d S (the DKL code's swa.py 0.9)")
ALPHA = flag("--at-alpha", type=float, default=4.0, range="[0, inf)", help="IKL/GKL-AT: weight of the soft CE")
BETA = flag("--at-beta", type=float, default=20.0, range="[0, inf)",
            help="IKL/GKL-AT: weight of the weighted MSE of pairwise logit gaps")
TEMPERATURE = flag("--at-temperature", type=float, default=4.0, range="(0, inf)",
                   help="IKL/GKL-AT: the class statistics average softmax(natural / T)")
AUG_WEIGHT = flag("--at-aug-weight", type=float, default=None, range="[0, inf)",
                  help="IKL/GKL-AT with a two-view --aug: weight of the AutoAugment half's robust term "
                       "(default: ikl_at 0.3, gkl_at 0.5, the scripts')")
ATTACK_ALPHA = flag("--attack-alpha", type=float, default=1.0, range="[0, inf)",
                    help="IKL/GKL-AT: soft-CE weight of the attack's objective (the training --at-alpha is not used)")
ATTACK_BETA = flag("--attack-beta", type=float, default=1.0, range="[0, inf)",
                   help="IKL/GKL-AT: gap-MSE weight of the attack's objective (the CIFAR-10 scripts: 0, i.e. KL)")
STATS_MOMENTUM = flag("--at-stats-momentum", type=float, default=1.0, range="(0, 1]",
                      help="IKL-AT: the class matrix blends the new epoch's in with this weight")
GAMMA = flag("--at-gamma", type=float, default=1.0, range="[0, inf)",
             help="GKL-AT: the gap weights are raised to this power (the attack uses 1)")
TRADES_BETA = flag("--trades-beta", type=float, default=9.0, range="[0, inf)",
                   help="TRADES: weight of KL(f(x) || f(x')) (the DKL repository's TRADES script: 9)")

_COMMON = (EPSILON, RAMP, BUDGET, STEPS, STEP_SIZE, AWP_GAMMA, AWP_WARMUP, AVERAGE)


def attack_schedule(epoch: int, epochs: int, *, epsilon: float = 8.0, budget: str = "high", ramp: bool = True,
                    steps: Optional[int] = None, step_size: Optional[float] = None) -> Tuple[float, float, int]:
    """(radius, step size, steps) of the 1-based ``epoch`` of ``epochs``, in [0, 1] pixel units.

    ``epsilon`` and ``step_size`` are in levels of 255. The radius is ``epsilon/255 * e / E``
    with ``ramp``; ``budget`` high: 5 steps of radius / 2, low: 2 steps of the radius (the
    released code, whatever the quarter of training). ``steps`` / ``step_size`` override.
    """
    if budget not in ("high", "low"):
        raise ValueError(f"--at-budget must be 'high' or 'low', got {budget!r}")
    if not 1 <= epoch <= epochs:
        raise ValueError(f"attack_schedule: epoch {epoch} is not in 1..{epochs}")
    radius = epsilon / 255 * (epoch / epochs if ramp else 1.0)
    k, eta = (5, radius / 2) if budget == "high" else (2, radius)
    return radius, eta if step_size is None else step_size / 255, k if steps is None else steps


class AdversarialTraining(ClassificationMethod):
    """Adversarial training (see the module docstring); subclasses give the losses."""

    flags = _COMMON
    cifar_aug = "cifar_crop_flip"
    default_aug = "crop_flip"
    checkpoint_prefixes = {"backbone": "backbone.", "classifier": "fc."}
    drop_last = False  # the original's loaders keep the last batch
    #: defaults of the flags that default to None (resolved by :meth:`settings`)
    defaults: Mapping[str, Any] = {}
    #: the attack and the loss read the natural logits (all but PGD-AT)
    uses_natural = True

    def build_model(self, arch, num_classes, **options):
        return build_classifier(arch, num_classes, **options)

    def build_criterion(self, **options):
        return CrossEntropyLoss(prior=False, **options)

    def settings(self, options: Mapping[str, Any]) -> Dict[str, Any]:
        return {f.dest: options[f.dest] if options.get(f.dest) is not None else
                self.defaults.get(f.dest, f.kwargs.get("default")) for f in self.flags}

    def validate(self, options: Dict[str, Any]) -> None:
        if options.get("norm", "none") != "none":
            raise ValueError(f"--method {self.name} attacks pixels in [0, 1]: use --norm none (the model sees "
                             f"unnormalised images, as the original's), got --norm {options['norm']}")
        if int(options.get("accum_iter") or 1) != 1:
            raise ValueError(f"--method {self.name} perturbs the weights around each optimizer step: "
                             f"--accum-iter must be 1, got {options['accum_iter']}")
        if options.get("mixup") or options.get("cutmix"):
            raise ValueError(f"--method {self.name} attacks labelled images: --mixup/--cutmix are not supported")

    # ------------------------------------------------------------------ the run

    def setup(self, ctx: FitContext) -> None:
        self.at = self.settings(ctx.options)
        self.num_classes = int(ctx.options["num_classes"])
        self.base_lr = float(ctx.options["lr"])  # the AWP proxy's step: the initial LR, never scheduled
        self.average = EpochAverage(self.at["at_average_decay"])
        self.device = ctx.device  # the average lives beside the weights it blends (a resume loads it there)
        self.direction: Optional[Dict[str, Tensor]] = None
        self.stats = None

    def schedule(self, ctx: FitContext) -> Tuple[float, float, int]:
        at = self.at
        return attack_schedule(ctx.epoch + 1, int(ctx.options["epochs"]), epsilon=at["at_epsilon"],
                               budget=at["at_budget"], ramp=at["at_ramp"], steps=at["at_steps"],
                               step_size=at["at_step_size"])

    def start_noise(self, images: Tensor) -> Tensor:
        """N(0, 1) draws [N, ...] of the attack's random start (scaled by :data:`START_STD`)."""
        return torch.randn_like(images)

    # the method's losses -----------------------------------------------------------
    def attack_objective(self, natural: Optional[Tensor], target: Tensor) -> Callable[[Tensor], Tensor]:
        """``adversarial logits -> scalar`` the attack maximises (``natural``: eval-mode logits)."""
        raise NotImplementedError

    def robust_loss(self, natural: Tensor, adversarial: Tensor, target: Tensor) -> Tensor:
        """The robust term of the training loss on one batch (or half of a paired batch)."""
        raise NotImplementedError

    def proxy_loss(self, forward: Callable[[Tensor], Tensor], images: Tensor, adversarial: Tensor,
                   target: Tensor) -> Tensor:
        """What AWP increases: CE on the clean images + the robust term, the batch as one term."""
        natural = forward(images)
        return F.cross_entropy(natural, target) + self.robust_loss(natural, forward(adversarial), target)

    def training_loss(self, natural: Tensor, adversarial: Tensor, target: Tensor,
                      halves: int) -> Tuple[Tensor, Dict[str, Tensor]]:
        ce = F.cross_entropy(natural, target)
        if halves == 1:
            robust = self.robust_loss(natural, adversarial, target)
        else:
            b = target.shape[0] // 2
            robust = (self.robust_loss(natural[:b], adversarial[:b], target[:b]) + self.at["at_aug_weight"] *
                      self.robust_loss(natural[b:], adversarial[b:], target[b:]))
        return ce + robust, {"ce": ce.detach(), "robust": robust.detach()}

    # the step ----------------------------------------------------------------------
    def training_step(self, ctx: FitContext, batch: Batch) -> StepOutput:
        images, target = batch.images, batch.targets
        halves = 1
        if isinstance(images, list):  # [plain views, AutoAugment views]
            halves, images, target = len(images), torch.cat(images), target.repeat(len(images))
        module = ctx.module
        radius, step_size, steps = self.schedule(ctx)

        was_training = module.training
        module.eval()
        with ctx.autocast():
            natural_eval = None
            if self.uses_natural:
                with torch.no_grad():
                    natural_eval = module(images)
            x_adv = pgd_attack(module, images, self.attack_objective(natural_eval, target), epsilon=radius,
                               step_size=step_size, steps=steps, start=START_STD * self.start_noise(images))
        module.train(was_training)

        self.direction = None
        if self.at["awp_gamma"] > 0 and ctx.epoch + 1 >= self.at["awp_warmup"]:
            with ctx.autocast():
                self.direction = awp_direction(
                    module, lambda forward: self.proxy_loss(forward, images, x_adv, target), lr=self.base_lr,
                    all_reduce=_mean_over_processes if ctx.world_size > 1 else None)
            perturb_weights(module, self.direction, self.at["awp_gamma"])

        with ctx.autocast():
            adversarial = ctx.model(x_adv)
            natural = ctx.model(images) if self.uses_natural else None
        if self.stats is not None:
            b = batch.targets.shape[0]
            probs = F.softmax(natural[:b].detach().to(self.stats.matrix.dtype) / self.at["at_temperature"], dim=1)
            self.stats.update(batch.targets, probs)
        loss, parts = self.training_loss(natural, adversarial, target, halves)
        shown = natural if natural is not None else adversarial
        return StepOutput(loss, logits=shown[:batch.targets.shape[0]], parts=parts)

    def after_optimizer_step(self, ctx: FitContext) -> None:
        if self.direction is not None:  # the update was taken at the perturbed weights: take the perturbation back
            perturb_weights(ctx.module, self.direction, -self.at["awp_gamma"])
            self.direction = None

    def on_train_epoch_end(self, ctx: FitContext) -> None:
        if self.stats is not None:
            self.stats.end_epoch()
        self.average.update(ctx.module.state_dict())

    # ------------------------------------------------------------------ checkpointed state

    def state_dict(self) -> Dict[str, Any]:
        state: Dict[str, Any] = {"weight_average": self.average.state_dict()}
        if self.stats is not None:
            state.update(class_stats_state(self.stats))
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "weight_average" not in state:
            raise ValueError(f"method {self.name!r}: the checkpoint holds no weight average (keys {sorted(state)})")
        self.average.load_state_dict(state["weight_average"], device=self.device)
        if self.stats is not None:
            load_class_stats_state(self.stats, state, self.name)


def _mean_over_processes(tensors: List[Tensor]) -> None:
    world = gdist.get_world_size()
    for t in tensors:
        torch.distributed.all_reduce(t)
        t.div_(world)


class PGDAT(AdversarialTraining):
    name = "pgd_at"
    summary = "adversarial training: CE on PGD examples (attack: CE), AWP, weight average"
    paper = "Madry et al., ICLR 2018; AWP: Wu et al., NeurIPS 2020"
    uses_natural = False

    def attack_objective(self, natural, target):
        return lambda adversarial: F.cross_entropy(adversarial, target)

    def proxy_loss(self, forward, images, adversarial, target):
        return F.cross_entropy(forward(adversarial), target)

    def training_loss(self, natural, adversarial, target, halves):
        ce = F.cross_entropy(adversarial, target)
        return ce, {"ce_adv": ce.detach()}


class TRADESAT(AdversarialTraining):
    name = "trades_at"
    summary = "TRADES: CE(f(x)) + beta x KL(f(x) ‖ f(x')) (attack: KL), AWP, weight average"
    paper = "Zhang et al., ICML 2019; AWP: Wu et al., NeurIPS 2020"
    flags = _COMMON + (TRADES_BETA,)

    def attack_objective(self, natural, target):
        reference = F.softmax(natural, dim=1)
        return lambda adversarial: F.kl_div(F.log_softmax(adversarial, dim=1), reference, reduction="sum")

    def robust_loss(self, natural, adversarial, target):
        return self.at["trades_beta"] * F.kl_div(F.log_softmax(adversarial, dim=1), F.softmax(natural, dim=1),
                                                 reduction="batchmean")


class _DKLAdversarial(AdversarialTraining):
    """IKL-AT and GKL-AT: the class statistics, the two-view batch and the attack's own weights."""

    paired_views = True

    def setup(self, ctx: FitContext) -> None:
        super().setup(ctx)
        momentum = self.at.get("at_stats_momentum", 1.0)
        self.stats = ClassStats(self.num_classes, momentum=momentum, dtype=torch.get_default_dtype()).to(ctx.device)


class IKLAT(_DKLAdversarial):
    name = "ikl_at"
    summary = "IKL-AT: CE(f(x)) + IKL(f(x') ‖ f(x)) weighted by class statistics, AWP, weight average"
    paper = "Cui et al., NeurIPS 2024 (DKL)"
    flags = _COMMON + (ALPHA, BETA, TEMPERATURE, AUG_WEIGHT, ATTACK_ALPHA, ATTACK_BETA, STATS_MOMENTUM)
    defaults = {"at_aug_weight": 0.3}

    def attack_objective(self, natural, target):
        at, matrix = self.at, self.stats.matrix
        return lambda adversarial: ikl_at_loss(natural, adversarial, matrix, target, alpha=at["attack_alpha"],
                                               beta=at["attack_beta"])

    def robust_loss(self, natural, adversarial, target):
        return ikl_at_loss(natural, adversarial, self.stats.matrix, target, alpha=self.at["at_alpha"],
                           beta=self.at["at_beta"])


class GKLAT(_DKLAdversarial):
    name = "gkl_at"
    summary = "GKL-AT: IKL-AT with gap weights^gamma, the MSE normalised by the weight sum"
    paper = "Cui et al., TPAMI 2026 (GKL)"
    flags = _COMMON + (ALPHA, BETA, TEMPERATURE, AUG_WEIGHT, ATTACK_ALPHA, ATTACK_BETA, GAMMA)
    defaults = {"at_aug_weight": 0.5}

    def attack_objective(self, natural, target):
        at, matrix = self.at, self.stats.matrix
        return lambda adversarial: gkl_at_loss(natural, adversarial, matrix, target, temperature=1.0,
                                               alpha=at["attack_alpha"], beta=at["attack_beta"], gamma=1.0)

    def robust_loss(self, natural, adversarial, target):
        # the scripts never pass T to the loss: temperature 1 (T only shapes the class statistics)
        return gkl_at_loss(natural, adversarial, self.stats.matrix, target, temperature=1.0,
                           alpha=self.at["at_alpha"], beta=self.at["at_beta"], gamma=self.at["at_gamma"])
