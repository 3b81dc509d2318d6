"""Robustness metrics: ImageNet-C mean corruption errors and the ImageNet-R class mask."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor

from gpaco.data.robustness import ALEXNET_ERRORS, IMAGENET_R_INDICES

__all__ = ["corruption_errors", "mce_normalised_by", "imagenet_r_mask"]


# --------------------------------------------------------------------------- ImageNet-C


def _mean_errors(acc_by_corruption: Mapping[str, Sequence[float]]) -> dict[str, float]:
    if not acc_by_corruption:
        raise ValueError("acc_by_corruption is empty")
    errors = {}
    for name, accs in acc_by_corruption.items():
        accs = [float(a) for a in accs]
        if not accs:
            raise ValueError(f"no severities given for corruption {name!r}")
        if any(not 0.0 <= a <= 1.0 for a in accs):
            raise ValueError(f"accuracies of {name!r} must be fractions in 0..1 (not percent), got {accs}")
        errors[name] = 1.0 - sum(accs) / len(accs)
    return errors


def mce_normalised_by(errors: Mapping[str, float], baseline_errors: Mapping[str, float]) -> float:
    """``100 * mean_c E_c / B_c``: mCE normalised by a chosen baseline's per-corruption errors.

    With ``baseline_errors=ALEXNET_ERRORS`` this is the standard (Hendrycks) mCE.
    """
    missing = [c for c in errors if c not in baseline_errors]
    if missing:
        raise ValueError(f"baseline errors missing for corruptions {missing}")
    if any(baseline_errors[c] <= 0 for c in errors):
        raise ValueError("baseline errors must be > 0")
    return 100.0 * sum(errors[c] / baseline_errors[c] for c in errors) / len(errors)


def corruption_errors(
    acc_by_corruption: Mapping[str, Sequence[float]],
    *,
    baseline_errors: Optional[Mapping[str, float]] = None,
) -> dict:
    """Mean corruption errors from top-1 accuracy per corruption and severity.

    Naming trap (docs/method.md#metrics): the GPaCo code and README call the *unnormalised* mean error
    "mCE" (README column "ImageNet-C (mCE)", 50.9 for GPaCo R50) and the
    AlexNet-normalised one "rel. mCE" (64.4). The AlexNet-normalised value is in fact
    the standard Hendrycks mCE, and neither is Hendrycks' "relative mCE" (which
    subtracts clean error). The keys here say what each number is.

    Args:
        acc_by_corruption: ``{corruption: [top-1 accuracy per severity, 0..1]}``.
        baseline_errors: optional ``{corruption: error}`` of a baseline run (any dataset)
            to normalise by, reported as ``mce_baseline_normalised``.
    Returns:
        ``corruption_errors`` ({c: E_c = 1 - mean_s acc}, fractions),
        ``mce_unnormalised`` = 100 * mean_c E_c (the paper's "mCE"),
        ``mce_alexnet_normalised`` = 100 * mean_c E_c / E_c^AlexNet (the paper's "rel. mCE",
        the standard mCE; None unless every corruption has an AlexNet constant),
        ``mce_baseline_normalised`` (only with ``baseline_errors``), ``num_corruptions``.
    """
    errors = _mean_errors(acc_by_corruption)
    out: dict = {
        "corruption_errors": errors,
        "mce_unnormalised": 100.0 * sum(errors.values()) / len(errors),
        "mce_alexnet_normalised": (
            mce_normalised_by(errors, ALEXNET_ERRORS) if all(c in ALEXNET_ERRORS for c in errors) else None
        ),
        "num_corruptions": len(errors),
    }
    if baseline_errors is not None:
        out["mce_baseline_normalised"] = mce_normalised_by(errors, baseline_errors)
    return out


# --------------------------------------------------------------------------- ImageNet-R

def imagenet_r_mask(num_classes: int = 1000) -> Tensor:
    """[num_classes] bool mask of the ImageNet-R classes; ``logits[:, mask]`` gives the 200-way scores,
    whose column order matches ImageNet-R's sorted wnid folders."""
    if num_classes <= IMAGENET_R_INDICES[-1]:
        raise ValueError(f"num_classes must be > {IMAGENET_R_INDICES[-1]} (an ImageNet-1k head), got {num_classes}")
    mask = torch.zeros(num_classes, dtype=torch.bool)
    mask[list(IMAGENET_R_INDICES)] = True
    return mask
