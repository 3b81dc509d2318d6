"""Worst-case perturbations: L∞ projected gradient attacks on images in [0, 1] (training's inner
maximisation and PGD evaluation) and adversarial weight perturbation (AWP).

    x_adv = pgd_attack(model, x, lambda logits: F.cross_entropy(logits, y), epsilon=8 / 255,
                       step_size=2 / 255, steps=20, start=uniform_start(x, 8 / 255))

One sign-gradient step is ``x' <- clip_[lower, upper](clip_{x ± eps}(x' + step * sign(grad)))``
(Madry et al. 2018). The attack differentiates with respect to the images only: no parameter
gradient is accumulated, and the caller chooses the model's mode (training's attack runs in
eval mode, as TRADES and the DKL code do).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["pgd_attack", "uniform_start", "cw_margin_loss", "awp_direction", "perturb_weights"]


def pgd_attack(
    forward: Callable[[Tensor], Tensor],
    images: Tensor,
    objective: Callable[[Tensor], Tensor],
    *,
    epsilon: float,
    step_size: float,
    steps: int,
    start: Optional[Tensor] = None,
    lower: float = 0.0,
    upper: float = 1.0,
) -> Tensor:
    """Adversarial images [B, ...] maximising ``objective(forward(x_adv))`` (a scalar) within the
    L∞ ball of radius ``epsilon`` around ``images``, clamped to ``[lower, upper]``.

    ``start``: an offset [B, ...] added to ``images`` before the first step, as given (neither
    projected nor clamped: the DKL code's ``0.001 * N(0, 1)`` start is not); None: none.
    ``steps`` 0 returns ``images + start``. The result is detached.
    """
    if steps < 0:
        raise ValueError(f"pgd_attack: steps must be >= 0, got {steps}")
    if epsilon < 0 or step_size < 0:
        raise ValueError(f"pgd_attack: epsilon and step_size must be >= 0, got {epsilon} and {step_size}")
    images = images.detach()
    x_adv = images if start is None else images + start.to(images.dtype)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = objective(forward(x_adv))
        (grad,) = torch.autograd.grad(loss, [x_adv])
        x_adv = x_adv.detach() + step_size * grad.sign()
        x_adv = torch.min(torch.max(x_adv, images - epsilon), images + epsilon)
        x_adv = x_adv.clamp(lower, upper)
    return x_adv.detach()


def uniform_start(images: Tensor, epsilon: float, *, generator: Optional[torch.Generator] = None,
                  lower: float = 0.0, upper: float = 1.0) -> Tensor:
    """A random start offset drawn uniformly in [-eps, eps], cut so that ``images + start`` stays
    in ``[lower, upper]`` (Madry et al.'s PGD evaluation)."""
    noise = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    start = (2 * noise - 1) * epsilon
    return (images + start).clamp(lower, upper) - images


def cw_margin_loss(logits: Tensor, target: Tensor, *, kappa: float = 50.0) -> Tensor:
    """Carlini-Wagner's margin as a PGD objective (mean over the batch): ``min(max_{j != y} z_j -
    z_y, kappa)``: it grows until the image is misclassified by a margin ``kappa``, then stops
    pulling (the CW-inf attack of the TRADES/AWP evaluations, kappa 50)."""
    one_hot = F.one_hot(target, logits.shape[1]).to(torch.bool)
    correct = logits[one_hot]
    other = logits.masked_fill(one_hot, float("-inf")).amax(dim=1)
    return (other - correct).clamp(max=kappa).mean()


# --------------------------------------------------------------------------- weights (AWP)

def awp_direction(
    module: nn.Module,
    proxy_loss: Callable[[Callable[[Tensor], Tensor]], Tensor],
    *,
    lr: float,
    eps: float = 1e-20,
    all_reduce: Optional[Callable[[List[Tensor]], None]] = None,
) -> Dict[str, Tensor]:
    """Adversarial weight perturbation (Wu et al. 2020, the TRADES-AWP proxy): the direction
    of one SGD step at ``lr`` that *increases* the loss, per weight, scaled to that weight's norm.

    ``proxy_loss(forward)`` is the loss to maximise, computed with ``forward(x)``: the model
    with its current weights and a copy of its buffers (BatchNorm running statistics move
    on the copy only, as on the original's proxy model, and are dropped). For every
    parameter with more than one dimension and "weight" in its name (convolutions and linear
    layers; not BatchNorm), with ``w' = w + lr * grad`` (the proxy's SGD step on the negated
    loss) and ``v = w' - w``: ``d = ||w|| / (||v|| + eps) * v``. ``all_reduce``: averages the
    proxy gradients over processes (DDP), so every rank perturbs alike.
    Returns ``{parameter name: d}`` (add ``gamma * d`` with :func:`perturb_weights`).
    """
    names = [n for n, p in module.named_parameters() if p.requires_grad and p.dim() > 1 and "weight" in n]
    chosen = set(names)
    params = {n: p.detach().requires_grad_(n in chosen) for n, p in module.named_parameters()}
    buffers = {n: b.clone() for n, b in module.named_buffers()}
    tensors = {**params, **buffers}
    loss = proxy_loss(lambda x: torch.func.functional_call(module, tensors, (x,)))
    grads = list(torch.autograd.grad(-loss, [params[n] for n in names]))  # the proxy minimises -loss
    if all_reduce is not None:
        all_reduce(grads)
    direction = {}
    with torch.no_grad():
        for n, g in zip(names, grads):
            w = params[n]
            step = (w - lr * g) - w  # w' - w, rounded as the proxy's step is
            direction[n] = w.norm() / (step.norm() + eps) * step
    return direction


def perturb_weights(module: nn.Module, direction: Mapping[str, Tensor], coefficient: float) -> None:
    """``w += coefficient * d`` in place for every parameter named in ``direction``."""
    with torch.no_grad():
        for n, p in module.named_parameters():
            if n in direction:
                p.add_(direction[n], alpha=coefficient)
