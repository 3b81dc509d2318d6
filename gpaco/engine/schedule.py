"""Learning-rate schedules of the reference recipes (docs/method.md#learning-rate-schedules).

* ``cosine`` (ResNet drivers): set once per epoch; linear warmup ``lr/W*(e+1)``, then the
  original's off-by-one cosine ``lr*0.5*(1+cos(pi*(e-W+1)/(E-W+1)))``, which never
  reaches 0 (400 epochs, W=10, lr .02 ends at ~3.2e-7).
* ``step_cifar`` (CIFAR driver): warmup ``lr/10*(e+1)`` for ``e <= 10`` (so epoch 10
  runs at 1.1*lr, a quirk kept on purpose), then x0.1 after each milestone.
* ``mae_cosine`` (MAE ViT fine-tuning): per iteration on a fractional epoch; linear
  warmup then half-cycle cosine down to ``min_lr``.
* ``cosine_plain`` (ResLT iNaturalist, MiSLAS): ``lr*0.5*(1+cos(pi*e/E))`` per epoch, no warmup.
* ``step`` (ResLT and MiSLAS CIFAR): for ``e < W`` ``lr*(s*(1-f)+f)`` with ``f=(e+1)/W`` and
  start factor ``s`` (ResLT 1/3, MiSLAS 0), then x0.1 for every milestone ``m <= e``.
* ``cosine_min`` (ResCom): with the 1-based epoch ``e = epoch + 1``: ``lr*e/W`` while ``e < W``,
  then ``eta + (lr-eta)*0.5*(1+cos(pi*(e-W)/(E-W)))`` with ``eta = lr*1e-5``.
* ``constant``: ``lr`` throughout (ResCom's CIFAR runs as released).
* ``gendd_step`` (GenDD CIFAR stage 2): with the 1-based epoch ``e = epoch + 1``, ``lr*e/W`` while
  ``e < W``; then the original sets nothing until the first milestone, so those epochs keep the
  last warm-up value ``lr*(W-1)/W`` (0.98 lr for W = 50, a quirk the published numbers trained
  with; ``step`` with the same ``--warmup-epochs`` and ``--milestones`` is the intended
  schedule, at ``lr``); then ``lr*0.1**k`` for the ``k`` milestones ``m <= epoch``.
* ``gendd_cosine`` (GenDD ImageNet / ImageNet-LT / CC3M stage 2, ImageNet and CIFAR stage 1):
  ``lr*(e+1)/W`` while ``e < W``, then ``min_lr + (lr-min_lr)*0.5*(1+cos(pi*(e-W+1)/(E-W)))``;
  the last epoch runs at ``min_lr`` exactly.
* ``mae_cosine_epoch`` (GenDD's ImageNet-LT teacher): ``mae_cosine`` set once per epoch at the
  integer epoch, so epoch 0 runs at lr 0.
* ``poly`` (segmentation): mmcv's PolyLrUpdaterHook by iteration,
  ``(lr-min_lr)*(1-it/max_iters)**power + min_lr``, times mmcv's linear warmup factor
  ``1-(1-it/warmup_iters)*(1-warmup_ratio)`` while ``it < warmup_iters``. Its clock is the
  0-based global iteration: ``sched(it)``.

The arithmetic order matches the original's, so values agree bit for bit with
``refvectors/lr_schedules.json``.

The table
---------
:data:`SCHEDULES` is the one list of schedules. Each row (:class:`ScheduleEntry`) holds the
function, whether it is applied at every optimizer step or once per epoch, its required and
``[optional]`` keywords, and which of them :func:`schedule_from_flags` reads from the training
flags (``vars(args)``); :func:`build_schedule` takes the keywords directly.

============  =========  ====================================================================
name          applied    keywords
============  =========  ====================================================================
cosine        per epoch  base_lr, epochs, warmup_epochs
step_cifar    per epoch  base_lr, [warmup_epochs], [milestones] (not read from flags)
mae_cosine    per step   base_lr, min_lr, epochs, warmup_epochs
cosine_plain  per epoch  base_lr, epochs
step          per epoch  base_lr, [warmup_epochs], [milestones], [warmup_start]
cosine_min    per epoch  base_lr, epochs, warmup_epochs, [min_lr_ratio] (not read from flags)
constant      per epoch  base_lr
poly          per step   base_lr, max_iters, [power], [min_lr], [warmup_iters], [warmup_ratio]
gendd_step    per epoch  base_lr, warmup_epochs, [milestones]
gendd_cosine  per epoch  base_lr, min_lr, epochs, warmup_epochs
mae_cosine_e  per epoch  (``mae_cosine_epoch``) base_lr, min_lr, epochs, warmup_epochs
============  =========  ====================================================================

A keyword's flag has the keyword's name (the dest of ``tools/train.py --help``,
``tools/train_seg.py --help``) except ``base_lr`` (``--lr``) and ``max_iters`` (``--iters``).
step_cifar keeps its 320/360 milestones (``--milestones`` is ``step``'s) and cosine_min its
1e-5 floor ratio (no flag). ``cosine_epoch`` is another name of ``cosine``.

AdamW's second-moment decay can follow a schedule too: :class:`Beta2Schedule` (GenDD's
per-iteration cosine rise of beta2, applied with :func:`apply_beta2`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import AbstractSet, Any, Callable, Mapping, Optional, Sequence

import torch

__all__ = [
    "lr_at_epoch_cosine", "lr_at_epoch_cifar_step", "lr_at_iter_mae", "lr_at_epoch_cosine_plain", "lr_at_epoch_step",
    "lr_constant", "lr_at_epoch_cosine_min", "poly_lr", "lr_at_epoch_gendd_step", "lr_at_epoch_gendd_cosine",
    "beta2_at_step", "Beta2Schedule", "apply_beta2",
    "LRSchedule", "ScheduleEntry", "build_schedule", "schedule_from_flags", "apply_lr", "SCHEDULES",
    "SCHEDULE_ALIASES", "FLAG_OF_KEYWORD",
]


def lr_at_epoch_cosine(epoch: int, *, base_lr: float, epochs: int, warmup_epochs: int) -> float:
    """LR of 0-based ``epoch`` for the ResNet drivers (warmup + off-by-one cosine)."""
    if epoch < warmup_epochs:
        return base_lr / warmup_epochs * (epoch + 1)
    w = warmup_epochs
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - w + 1) / (epochs - w + 1)))


def lr_at_epoch_cifar_step(
    epoch: int, *, base_lr: float, warmup_epochs: int = 10, milestones: Sequence[int] = (320, 360)
) -> float:
    """LR of 0-based ``epoch`` for the CIFAR driver.

    Warmup covers ``epoch <= warmup_epochs`` (one epoch more than the name says, so the
    last warmup epoch uses ``1.1*base_lr``); after it, x0.1 for every milestone ``m``
    with ``epoch > m``.
    """
    if epoch <= warmup_epochs:
        return base_lr / warmup_epochs * (epoch + 1)
    passed = sum(1 for m in milestones if epoch > m)
    # 10.0**-k is exactly the double nearest 0.1, 0.01, ... (0.1**2 is not).
    return base_lr * 10.0 ** -passed if passed else base_lr


def lr_at_iter_mae(epoch_float: float, *, base_lr: float, min_lr: float, epochs: int, warmup_epochs: float) -> float:
    """LR at fractional epoch ``epoch + it/iters_per_epoch`` for MAE fine-tuning."""
    if epoch_float < warmup_epochs:
        return base_lr * epoch_float / warmup_epochs
    w = warmup_epochs
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (epoch_float - w) / (epochs - w)))


def lr_at_epoch_cosine_plain(epoch: int, *, base_lr: float, epochs: int) -> float:
    """``base_lr * 0.5 * (1 + cos(pi * epoch / epochs))`` for 0-based ``epoch`` (no warmup)."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def lr_at_epoch_step(epoch: int, *, base_lr: float, warmup_epochs: int = 5, milestones: Sequence[int] = (160, 180),
                     warmup_start: float = 0.0) -> float:
    """Linear warmup from ``warmup_start * base_lr`` over epochs ``0 .. W-1`` (epoch ``e`` runs at
    ``base_lr * (s * (1 - f) + f)``, ``f = (e + 1) / W``), then x0.1 for each milestone ``m <= e``."""
    if epoch < warmup_epochs:
        f = (epoch + 1) / warmup_epochs
        return base_lr * (warmup_start * (1.0 - f) + f)
    passed = sum(1 for m in milestones if epoch >= m)
    return base_lr * 10.0 ** -passed if passed else base_lr


def lr_at_epoch_cosine_min(epoch: int, *, base_lr: float, epochs: int, warmup_epochs: int,
                           min_lr_ratio: float = 1e-5) -> float:
    """ResCom's schedule for 0-based ``epoch``: linear warmup ``lr*(epoch+1)/W`` while ``epoch+1 < W``,
    then a cosine from ``lr`` (reached at ``epoch+1 = W``) to ``lr*min_lr_ratio`` at ``epoch+1 = E``."""
    e = epoch + 1
    if e < warmup_epochs:
        return base_lr / warmup_epochs * e
    eta = base_lr * min_lr_ratio
    return eta + (base_lr - eta) * (1.0 + math.cos(math.pi * (e - warmup_epochs) / (epochs - warmup_epochs))) / 2


def lr_constant(epoch: int, *, base_lr: float) -> float:
    """``base_lr`` at every epoch."""
    return base_lr


def poly_lr(it: int, *, base_lr: float, max_iters: int, power: float = 0.9, min_lr: float = 0.0,
            warmup_iters: int = 0, warmup_ratio: float = 1e-6) -> float:
    """mmcv's PolyLrUpdaterHook (by iteration) with its linear warmup; ``it`` is 0-based."""
    lr = (base_lr - min_lr) * (1.0 - it / max_iters) ** power + min_lr
    if warmup_iters and it < warmup_iters:
        k = (1.0 - it / warmup_iters) * (1.0 - warmup_ratio)
        lr = lr * (1.0 - k)
    return lr


def lr_at_epoch_gendd_step(epoch: int, *, base_lr: float, warmup_epochs: int,
                           milestones: Sequence[int] = (150, 180, 210)) -> float:
    """GenDD's CIFAR stage-2 step schedule (train_student_gendd.py:188-200) for 0-based ``epoch``.

    With ``e = epoch + 1``: ``base_lr * e / W`` while ``e < W``. The original then sets nothing
    until the first milestone, so the optimizer keeps the last warm-up value ``base_lr * (W-1) / W``
    (with W = 1 no warm-up epoch ran: it keeps its initial ``base_lr``). After that,
    ``base_lr * 0.1 ** k`` for the ``k`` milestones ``m <= epoch`` (the original's ``e > m``).
    """
    e = epoch + 1
    if e < warmup_epochs:
        return base_lr * e / warmup_epochs
    passed = sum(1 for m in milestones if e > m)
    if passed:
        return base_lr * 0.1 ** passed  # the original's arithmetic (0.001 * 0.1 ** 2 = 1.0000000000000003e-05)
    return base_lr * (warmup_epochs - 1) / warmup_epochs if warmup_epochs > 1 else base_lr


def lr_at_epoch_gendd_cosine(epoch: int, *, base_lr: float, min_lr: float, epochs: int, warmup_epochs: int) -> float:
    """GenDD's ImageNet cosine (main_supervised_gendd.py:707-716) for 0-based ``epoch``:
    ``base_lr * (epoch+1) / W`` while ``epoch < W``, then
    ``min_lr + (base_lr - min_lr) * 0.5 * (1 + cos(pi * (epoch - W + 1) / (E - W)))``, which is
    ``min_lr`` at the last epoch. With W = 0 it is also the CIFAR stage-1 cosine (epochs from 1, no +1)."""
    if epoch < warmup_epochs:
        return base_lr * (epoch + 1) / warmup_epochs
    w = warmup_epochs
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (epoch - w + 1) / (epochs - w)))


def apply_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every param group's lr to ``lr * group.get('lr_scale', 1)`` (MAE layer decay)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"] if "lr_scale" in group else lr


@dataclass(frozen=True)
class LRSchedule:
    """A named schedule: ``sched(epoch, iter_in_epoch, iters_per_epoch) -> lr``.

    Per-epoch schedules ignore the iteration (the LR changes at epoch boundaries only).
    ``by_iteration`` schedules (``poly``) are functions of the 0-based global iteration
    ``epoch * iters_per_epoch + iter_in_epoch``, so ``sched(it)`` works too.
    """

    name: str
    per_iteration: bool
    fn: Callable[..., float] = field(repr=False)
    kwargs: dict[str, Any] = field(default_factory=dict)
    by_iteration: bool = False

    def __call__(self, epoch: int, iter_in_epoch: int = 0, iters_per_epoch: int = 1) -> float:
        if self.by_iteration:
            return self.fn(epoch * iters_per_epoch + iter_in_epoch, **self.kwargs)
        if self.per_iteration:
            if iters_per_epoch < 1:
                raise ValueError(f"iters_per_epoch must be >= 1, got {iters_per_epoch}")
            return self.fn(epoch + iter_in_epoch / iters_per_epoch, **self.kwargs)
        return self.fn(epoch, **self.kwargs)

    @staticmethod
    def apply(optimizer: torch.optim.Optimizer, lr: float) -> None:
        """See :func:`apply_lr`."""
        apply_lr(optimizer, lr)


def beta2_at_step(step: int, *, total_steps: int, beta2_min: float, beta2_max: float = 0.999) -> float:
    """GenDD's AdamW beta2 (main_supervised_gendd.py:139-143): a half cosine rising from
    ``beta2_min`` at step 0 to ``beta2_max`` at ``step = total_steps``,
    ``beta2_max - 0.5 * (beta2_max - beta2_min) * (1 + cos(pi * step / total_steps))``."""
    return beta2_max - 0.5 * (beta2_max - beta2_min) * (1.0 + math.cos(math.pi * step / max(total_steps, 1)))


@dataclass(frozen=True)
class Beta2Schedule:
    """AdamW's beta2 per optimizer step: ``sched(epoch, iter_in_epoch, iters_per_epoch) -> beta2``.

    The step is ``epoch * iters_per_epoch + iter_in_epoch`` of ``epochs * iters_per_epoch - 1``
    (:func:`beta2_at_step`), the original's clock (CIFAR's 1-based epoch minus one, ImageNet's
    0-based epoch, CC3M's epoch of T iterations). The value is a function of the position alone, so
    a resumed run (its epoch and step restored from the checkpoint) continues the rise exactly;
    nothing of the schedule is saved. With gradient accumulation give the micro-batch that starts
    the accumulation cycle, as the per-iteration LR does.
    """

    beta2_min: float
    epochs: int
    beta2_max: float = 0.999

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta2_min <= self.beta2_max < 1.0:
            raise ValueError(f"need 0 <= beta2_min <= beta2_max < 1, got {self.beta2_min}, {self.beta2_max}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")

    def __call__(self, epoch: int, iter_in_epoch: int, iters_per_epoch: int) -> float:
        if iters_per_epoch < 1:
            raise ValueError(f"iters_per_epoch must be >= 1, got {iters_per_epoch}")
        return beta2_at_step(epoch * iters_per_epoch + iter_in_epoch, total_steps=self.epochs * iters_per_epoch - 1,
                             beta2_min=self.beta2_min, beta2_max=self.beta2_max)


def apply_beta2(optimizer: torch.optim.Optimizer, beta2: float) -> None:
    """Set the second beta of every param group (Adam/AdamW) to ``beta2``, keeping the first.
    A Python float: the next ``optimizer.step()`` reads it, nothing is moved to the device."""
    for group in optimizer.param_groups:
        group["betas"] = (group["betas"][0], beta2)


@dataclass(frozen=True)
class ScheduleEntry:
    """One row of :data:`SCHEDULES`: the LR function and the keywords it takes.

    ``from_flags`` lists the keywords :func:`schedule_from_flags` reads from the training
    flags (all of them unless given); a keyword left out keeps the function's default.
    """

    fn: Callable[..., float]
    per_iteration: bool
    required: AbstractSet[str]
    optional: AbstractSet[str] = frozenset()
    from_flags: Optional[AbstractSet[str]] = None
    by_iteration: bool = False  # the function takes the global iteration, not a (fractional) epoch

    def __post_init__(self) -> None:
        object.__setattr__(self, "required", frozenset(self.required))
        object.__setattr__(self, "optional", frozenset(self.optional))
        flags = self.required | self.optional if self.from_flags is None else frozenset(self.from_flags)
        if not flags <= self.required | self.optional:
            raise ValueError(f"{self.fn.__name__}: from_flags {sorted(flags - self.required - self.optional)} "
                             f"are not keywords of the schedule")
        object.__setattr__(self, "from_flags", flags)

    @property
    def keywords(self) -> frozenset:
        return self.required | self.optional


SCHEDULES: dict[str, ScheduleEntry] = {
    "cosine": ScheduleEntry(lr_at_epoch_cosine, False, {"base_lr", "epochs", "warmup_epochs"}),
    # The CIFAR driver's milestones are fixed at 320/360: --milestones belongs to ``step``.
    "step_cifar": ScheduleEntry(lr_at_epoch_cifar_step, False, {"base_lr"}, {"warmup_epochs", "milestones"},
                                from_flags={"base_lr", "warmup_epochs"}),
    "mae_cosine": ScheduleEntry(lr_at_iter_mae, True, {"base_lr", "min_lr", "epochs", "warmup_epochs"}),
    "cosine_plain": ScheduleEntry(lr_at_epoch_cosine_plain, False, {"base_lr", "epochs"}),
    "step": ScheduleEntry(lr_at_epoch_step, False, {"base_lr"}, {"warmup_epochs", "milestones", "warmup_start"}),
    "constant": ScheduleEntry(lr_constant, False, {"base_lr"}),
    # ResCom's floor ratio has no flag; --min-lr is mae_cosine's and poly's absolute floor.
    "cosine_min": ScheduleEntry(lr_at_epoch_cosine_min, False, {"base_lr", "epochs", "warmup_epochs"},
                                {"min_lr_ratio"}, from_flags={"base_lr", "epochs", "warmup_epochs"}),
    # Counts global iterations, not epochs: sched(it).
    "poly": ScheduleEntry(poly_lr, True, {"base_lr", "max_iters"},
                          {"power", "min_lr", "warmup_iters", "warmup_ratio"}, by_iteration=True),
    "gendd_step": ScheduleEntry(lr_at_epoch_gendd_step, False, {"base_lr", "warmup_epochs"}, {"milestones"}),
    "gendd_cosine": ScheduleEntry(lr_at_epoch_gendd_cosine, False, {"base_lr", "min_lr", "epochs", "warmup_epochs"}),
    # mae_cosine at integer epochs (GenDD's ImageNet-LT teacher, main_lt_sgd.py:543-552)
    "mae_cosine_epoch": ScheduleEntry(lr_at_iter_mae, False, {"base_lr", "min_lr", "epochs", "warmup_epochs"}),
}

#: Other names of a schedule (``--schedule cosine_epoch``).
SCHEDULE_ALIASES: dict[str, str] = {"cosine_epoch": "cosine"}

#: Flag dest of a schedule keyword, where the two differ; any other keyword is its own flag.
FLAG_OF_KEYWORD: dict[str, str] = {"base_lr": "lr", "max_iters": "iters"}


def _canonical(name: str) -> str:
    name = SCHEDULE_ALIASES.get(name, name)
    if name not in SCHEDULES:
        raise ValueError(f"unknown LR schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    return name


def build_schedule(name: str, **kwargs: Any) -> LRSchedule:
    """Build a schedule by name: a key of :data:`SCHEDULES` (or :data:`SCHEDULE_ALIASES`).

    Keyword arguments are those of the matching ``lr_at_*`` function; unknown or missing
    ones raise ``TypeError`` here rather than at the first epoch.
    """
    name = _canonical(name)
    entry = SCHEDULES[name]
    missing = sorted(entry.required - kwargs.keys())
    unknown = sorted(kwargs.keys() - entry.keywords)
    if missing or unknown:
        raise TypeError(
            f"schedule {name!r}: missing {missing}, unknown {unknown} (accepts {sorted(entry.keywords)})"
        )
    if kwargs["base_lr"] < 0:
        raise ValueError(f"base_lr must be >= 0, got {kwargs['base_lr']}")
    w = kwargs.get("warmup_epochs", 10 if "warmup_epochs" in entry.keywords else 0)
    positive_warmup = name in ("step_cifar", "gendd_step")  # they divide by W
    if w < 0 or (positive_warmup and w == 0):
        raise ValueError(f"warmup_epochs must be {'> 0' if positive_warmup else '>= 0'}, got {w}")
    if not 0.0 <= kwargs.get("warmup_start", 0.0) <= 1.0:
        raise ValueError(f"warmup_start must be in [0, 1], got {kwargs['warmup_start']}")
    if "epochs" in kwargs:
        e = kwargs["epochs"]
        # mae_cosine(_epoch), cosine_min and gendd_cosine divide by (E - W); cosine by (E - W + 1).
        if e < 1 or w > e or (name in ("mae_cosine", "cosine_min", "gendd_cosine", "mae_cosine_epoch") and w == e):
            raise ValueError(f"schedule {name!r}: need epochs >= 1 and warmup_epochs < epochs, got {e}, {w}")
    if "max_iters" in kwargs and kwargs["max_iters"] < 1:  # poly divides by it
        raise ValueError(f"schedule {name!r}: need max_iters >= 1, got {kwargs['max_iters']}")
    if "milestones" in kwargs:
        kwargs["milestones"] = tuple(int(m) for m in kwargs["milestones"])
    return LRSchedule(name=name, per_iteration=entry.per_iteration, fn=entry.fn, kwargs=dict(kwargs),
                      by_iteration=entry.by_iteration)


def schedule_from_flags(name: str, flags: Mapping[str, Any]) -> LRSchedule:
    """The schedule ``name`` with its keywords read from parsed training flags (``vars(args)``).

    Each keyword in the row's ``from_flags`` comes from the flag of the same dest, or the one
    :data:`FLAG_OF_KEYWORD` names (``base_lr`` from ``lr``). An optional keyword whose flag is
    absent keeps the function's default; a required one is a ``TypeError``.
    """
    name = _canonical(name)
    entry = SCHEDULES[name]
    kwargs = {}
    for keyword in sorted(entry.from_flags):
        dest = FLAG_OF_KEYWORD.get(keyword, keyword)
        if dest in flags:
            kwargs[keyword] = flags[dest]
        elif keyword in entry.required:
            raise TypeError(f"schedule {name!r} needs the flag --{dest.replace('_', '-')} (its {keyword})")
    return build_schedule(name, **kwargs)
