"""Statistics of a study over seeds: mean, standard deviation, the 95 % Student-t interval of the
mean, and paired differences against a baseline seed by seed.

No SciPy (an optional extra of gpaco): the Student-t quantile inverts the closed-form CDF of an
integer number of degrees of freedom (Abramowitz & Stegun 26.7.3 / 26.7.4) by bisection, exact
to float precision for any df.

>>> round(t_quantile(0.975, 2), 4)
4.3027
>>> s = summarize([70.0, 72.0, 77.0])
>>> round(s.mean, 3), round(s.std, 3), round(s.low, 2), round(s.high, 2)
(73.0, 3.606, 64.04, 81.96)
"""
from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Optional, Sequence

__all__ = ["t_quantile", "Summary", "summarize", "Paired", "paired_difference", "CONFIDENCE"]

#: the confidence level of every interval of a study report
CONFIDENCE = 0.95


def _t_central_mass(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with ``df`` (integer >= 1) degrees of freedom, t >= 0."""
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2:  # odd: (2/pi) (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)), the sum up to cos^(df-2)
        if df == 1:
            return 2.0 * theta / math.pi
        term = total = math.cos(theta)
        for j in range(1, (df - 1) // 2):
            term *= c2 * (2 * j) / (2 * j + 1)
            total += term
        return 2.0 / math.pi * (theta + s * total)
    term = total = 1.0  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...), the sum up to cos^(df-2)
    for j in range(1, df // 2):
        term *= c2 * (2 * j - 1) / (2 * j)
        total += term
    return s * total


def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (``t_quantile(0.975, 2)``
    = 4.3027: the half-width factor of a 95 % interval from 3 values)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"t_quantile: q must be in (0, 1), got {q}")
    if int(df) != df or df < 1:
        raise ValueError(f"t_quantile: df must be a whole number >= 1, got {df}")
    df = int(df)
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    target = 2.0 * q - 1.0  # P(|T| <= t)
    lo, hi = 0.0, 1.0
    while _t_central_mass(hi, df) < target:
        lo, hi = hi, hi * 2.0
    for _ in range(200):  # bisection to the last bit
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if _t_central_mass(mid, df) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


class Summary(NamedTuple):
    """One metric over ``n`` seeds: mean, sample standard deviation (ddof 1) and the two-sided
    :data:`CONFIDENCE` t-interval of the mean (NaN where ``n`` < 2 leaves them undefined)."""
    n: int
    mean: float
    std: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    """:class:`Summary` of ``values`` (one per seed; NaN and None are left out)."""
    x = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(x)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = math.fsum(x) / n
    if n == 1:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in x) / (n - 1))
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


class Paired(NamedTuple):
    """Method minus baseline over the seeds both have: the :class:`Summary` of the differences,
    and how many seeds favour the method, the baseline, or neither."""
    diff: Summary
    method_better: int
    baseline_better: int
    tied: int
    seeds: tuple


def paired_difference(method: Mapping[int, Optional[float]], baseline: Mapping[int, Optional[float]], *,
                      higher_is_better: bool = True, confidence: float = CONFIDENCE) -> Paired:
    """Seed-by-seed differences ``method[s] - baseline[s]`` over the seeds with a value in both
    (``{seed: value}``); which side a seed favours follows ``higher_is_better``."""
    def known(v):
        return v is not None and not math.isnan(float(v))

    seeds = tuple(sorted(s for s in method if s in baseline and known(method[s]) and known(baseline[s])))
    diffs = [float(method[s]) - float(baseline[s]) for s in seeds]
    sign = 1.0 if higher_is_better else -1.0
    better = sum(1 for d in diffs if sign * d > 0)
    worse = sum(1 for d in diffs if sign * d < 0)
    return Paired(summarize(diffs, confidence), better, worse, len(diffs) - better - worse, seeds)
