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

The arithmetic order matches the original's, so values agree bit for bit with
``refvectors/lr_schedules.json``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

__all__ = [
    "lr_at_epoch_cosine", "lr_at_epoch_cifar_step", "lr_at_iter_mae", "lr_at_epoch_cosine_plain", "lr_at_epoch_step",
    "lr_constant", "lr_at_epoch_cosine_min",
    "LRSchedule", "build_schedule", "apply_lr", "SCHEDULES",
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


def apply_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every param group's lr to ``lr * group.get('lr_scale', 1)`` (MAE layer decay)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"] if "lr_scale" in group else lr


@dataclass(frozen=True)
class LRSchedule:
    """A named schedule: ``sched(epoch, iter_in_epoch, iters_per_epoch) -> lr``.

    Per-epoch schedules ignore the iteration (the LR changes at epoch boundaries only).
    """

    name: str
    per_iteration: bool
    fn: Callable[..., float] = field(repr=False)
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self, epoch: int, iter_in_epoch: int = 0, iters_per_epoch: int = 1) -> float:
        if self.per_iteration:
            if iters_per_epoch < 1:
                raise ValueError(f"iters_per_epoch must be >= 1, got {iters_per_epoch}")
            return self.fn(epoch + iter_in_epoch / iters_per_epoch, **self.kwargs)
        return self.fn(epoch, **self.kwargs)

    @staticmethod
    def apply(optimizer: torch.optim.Optimizer, lr: float) -> None:
        """See :func:`apply_lr`."""
        apply_lr(optimizer, lr)


# name -> (function, per_iteration, required kwargs, optional kwargs)
SCHEDULES: dict[str, tuple[Callable[..., float], bool, frozenset, frozenset]] = {
    "cosine": (lr_at_epoch_cosine, False, frozenset({"base_lr", "epochs", "warmup_epochs"}), frozenset()),
    "step_cifar": (lr_at_epoch_cifar_step, False, frozenset({"base_lr"}), frozenset({"warmup_epochs", "milestones"})),
    "mae_cosine": (lr_at_iter_mae, True, frozenset({"base_lr", "min_lr", "epochs", "warmup_epochs"}), frozenset()),
    "cosine_plain": (lr_at_epoch_cosine_plain, False, frozenset({"base_lr", "epochs"}), frozenset()),
    "step": (lr_at_epoch_step, False, frozenset({"base_lr"}),
             frozenset({"warmup_epochs", "milestones", "warmup_start"})),
    "constant": (lr_constant, False, frozenset({"base_lr"}), frozenset()),
    "cosine_min": (lr_at_epoch_cosine_min, False, frozenset({"base_lr", "epochs", "warmup_epochs"}),
                   frozenset({"min_lr_ratio"})),
}


def build_schedule(name: str, **kwargs: Any) -> LRSchedule:
    """Build a schedule by name: a key of :data:`SCHEDULES`.

    Keyword arguments are those of the matching ``lr_at_*`` function; unknown or missing
    ones raise ``TypeError`` here rather than at the first epoch.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown LR schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    fn, per_iter, required, optional = SCHEDULES[name]
    missing = sorted(required - kwargs.keys())
    unknown = sorted(kwargs.keys() - required - optional)
    if missing or unknown:
        raise TypeError(
            f"schedule {name!r}: missing {missing}, unknown {unknown} (accepts {sorted(required | optional)})"
        )
    if kwargs["base_lr"] < 0:
        raise ValueError(f"base_lr must be >= 0, got {kwargs['base_lr']}")
    w = kwargs.get("warmup_epochs", 10 if "warmup_epochs" in optional | required else 0)
    if w < 0 or (name == "step_cifar" and w == 0):
        raise ValueError(f"warmup_epochs must be {'> 0' if name == 'step_cifar' else '>= 0'}, got {w}")
    if not 0.0 <= kwargs.get("warmup_start", 0.0) <= 1.0:
        raise ValueError(f"warmup_start must be in [0, 1], got {kwargs['warmup_start']}")
    if "epochs" in kwargs:
        e = kwargs["epochs"]
        # mae_cosine and cosine_min divide by (E - W); cosine by (E - W + 1).
        if e < 1 or w > e or (name in ("mae_cosine", "cosine_min") and w == e):
            raise ValueError(f"schedule {name!r}: need epochs >= 1 and warmup_epochs < epochs, got {e}, {w}")
    if "milestones" in kwargs:
        kwargs["milestones"] = tuple(int(m) for m in kwargs["milestones"])
    return LRSchedule(name=name, per_iteration=per_iter, fn=fn, kwargs=dict(kwargs))


def poly_lr(it: int, *, base_lr: float, max_iters: int, power: float = 0.9, min_lr: float = 0.0,
            warmup_iters: int = 0, warmup_ratio: float = 1e-6) -> float:
    """mmcv's PolyLrUpdaterHook (by iteration) with its linear warmup; ``it`` is 0-based."""
    lr = (base_lr - min_lr) * (1.0 - it / max_iters) ** power + min_lr
    if warmup_iters and it < warmup_iters:
        k = (1.0 - it / warmup_iters) * (1.0 - warmup_ratio)
        lr = lr * (1.0 - k)
    return lr
