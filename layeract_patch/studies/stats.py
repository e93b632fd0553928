"""The statistics of the study report without scipy: Student's t distribution, confidence intervals, Welch's test.

The t distribution's CDF comes from the regularized incomplete beta function, evaluated with its continued
fraction (modified Lentz; Numerical Recipes 6.4): for t and df degrees of freedom,
P(|T| > |t|) = I_x(df/2, 1/2) with x = df / (df + t^2). It stays written out here rather than taken from scipy:
the report needs these few functions only, and scipy would be one more dependency (or an optional extra whose
absence changes the report); tests/test_reproduce.py checks them against tabulated values. Means and standard
deviations are the standard library's `statistics`.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

__all__ = ["mean", "sample_std", "betainc", "t_cdf", "t_two_sided_p", "t_quantile", "confidence_interval",
           "Welch", "welch_test", "paired_t_test"]

_TINY = 1e-300


mean = statistics.fmean


def sample_std(values: Sequence[float]) -> float:
    """Standard deviation with n - 1 (0 for a single value, where `statistics.stdev` has none)."""
    return statistics.stdev(values) if len(values) >= 2 else 0.0


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    result = d
    for m in range(1, 1000):
        # even step, then odd step of the continued fraction
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            delta = c * d
            result *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return result


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1, got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The fraction converges fast for x < (a+1)/(a+b+2); otherwise use the symmetry I_x(a,b) = 1 - I_{1-x}(b,a).
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom (df may be fractional, as Welch's is)."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_cdf(t: float, df: float) -> float:
    tail = 0.5 * t_two_sided_p(t, df)
    return 1.0 - tail if t > 0 else tail


def t_quantile(q: float, df: float) -> float:
    """The t with t_cdf(t, df) = q, by bisection (the CDF is monotone)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile needs 0 < q < 1, got {q}")
    lo, hi = -1.0, 1.0
    while t_cdf(lo, df) > q:
        lo *= 2.0
    while t_cdf(hi, df) < q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def confidence_interval(values: Sequence[float], level: float = 0.95) -> Optional[Tuple[float, float]]:
    """The Student-t interval for the mean, mean +- t_{(1+level)/2, n-1} * s / sqrt(n); None below 2 values."""
    n = len(values)
    if n < 2:
        return None
    half = t_quantile(0.5 + level / 2.0, n - 1) * sample_std(values) / math.sqrt(n)
    m = mean(values)
    return m - half, m + half


@dataclass(frozen=True)
class Welch:
    difference: float  # mean(a) - mean(b)
    t: float
    df: float
    p: float  # two-sided


def welch_test(a: Sequence[float], b: Sequence[float]) -> Optional[Welch]:
    """Welch's unequal-variance t-test of mean(a) = mean(b); None when either side has fewer than 2 values.

    When both samples have no spread at all the test degenerates: p is 1 for equal means, 0 otherwise.
    """
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return None
    va, vb = sample_std(a) ** 2 / na, sample_std(b) ** 2 / nb
    difference = mean(a) - mean(b)
    if va + vb == 0.0:
        return Welch(difference, math.copysign(math.inf, difference) if difference else 0.0, na + nb - 2.0,
                     1.0 if difference == 0 else 0.0)
    t = difference / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
    return Welch(difference, t, df, t_two_sided_p(t, df))


def paired_t_test(differences: Sequence[float]) -> Optional[float]:
    """Two-sided p of the paired t-test that the mean of per-pair differences is 0 (pairs: the same seed under
    two treatments); None with fewer than 2 pairs. Differences with no spread give p 1 (all 0) or 0."""
    n = len(differences)
    if n < 2:
        return None
    spread = sample_std(differences)
    if spread == 0.0:
        return 1.0 if mean(differences) == 0 else 0.0
    return t_two_sided_p(mean(differences) / (spread / math.sqrt(n)), n - 1)
