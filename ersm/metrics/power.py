"""Seeds for a paired non-inferiority t-test (rules v2, claim 01; `docs/protocols.md#power-for-non-inferiority`).

The test: the per-seed paired difference ``d = ERSM - dense`` has seed-level standard deviation
``sd``; non-inferiority with margin ``margin`` is concluded when the one-sided level-``alpha``
t-test rejects ``mean(d) <= -margin``, i.e. ``t = (mean(d) + margin) / (s / sqrt(n)) >
t_{1-alpha, n-1}`` (equivalently, the two-sided ``1 - 2 alpha`` t-interval lies above
``-margin``). Power is taken at a true difference of 0.

- ``seeds_for_noninferiority``: the standard sample-size formula for a one-sample (paired)
  t-test, ``n >= ((z_{1-alpha} + z_{power}) * sd / margin)^2`` with the normal quantiles
  replaced by t quantiles on ``n - 1`` degrees of freedom and solved by iteration (e.g. Chow,
  Shao and Wang, *Sample Size Calculations in Clinical Research*, one-sample non-inferiority):
  the smallest ``n >= 2`` with ``((t_{1-alpha, n-1} + t_{power, n-1}) * sd / margin)^2 <= n``.
- ``noninferiority_power``: the exact power of that test at a true difference of 0,
  ``P(T > t_{1-alpha, n-1})`` with ``T`` noncentral t, ``n - 1`` degrees of freedom,
  noncentrality ``margin * sqrt(n) / sd``.

The formula is an approximation of the exact power; the tests check that at the ``n`` it
returns the exact power reaches ``power``.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

from ersm.checks import check_count, is_number


def seeds_for_noninferiority(sd: float, margin: float, power: float = 0.8, alpha: float = 0.025,
                             max_seeds: int = 1000) -> int:
    """Smallest ``n >= 2`` with ``((t_{1-alpha, n-1} + t_{power, n-1}) * sd / margin)^2 <= n``.

    Raises ``ValueError`` for bad input, or when no ``n <= max_seeds`` qualifies.
    """
    _check_positive("sd", sd)
    _check_positive("margin", margin)
    _check_open("power", power, 0.0, 1.0)
    _check_open("alpha", alpha, 0.0, 0.5)
    check_count("max_seeds", max_seeds, 2)
    n = np.arange(2, int(max_seeds) + 1)
    df = n - 1
    needed = ((stats.t.ppf(1 - alpha, df) + stats.t.ppf(power, df)) * sd / margin) ** 2
    ok = np.flatnonzero(needed <= n)  # the left side falls and the right side rises with n
    if ok.size == 0:
        raise ValueError(f"no seed count up to max_seeds={max_seeds} reaches power={power} for sd={sd}, "
                         f"margin={margin}, alpha={alpha} (needs about {needed[-1]:.0f}); raise max_seeds")
    return int(n[ok[0]])


def noninferiority_power(n: int, sd: float, margin: float, alpha: float = 0.025) -> float:
    """Power of the one-sided paired t-test for non-inferiority at a true difference of 0."""
    check_count("n", n, 2, " (seeds)")
    _check_positive("sd", sd)
    _check_positive("margin", margin)
    _check_open("alpha", alpha, 0.0, 0.5)
    critical = stats.t.ppf(1 - alpha, n - 1)
    return float(stats.nct.sf(critical, n - 1, margin * math.sqrt(n) / sd))


def _is_real(value) -> bool:
    return is_number(value, finite=False)


def _check_positive(name: str, value) -> None:
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a finite number > 0")


def _check_open(name: str, value, low: float, high: float) -> None:
    if not _is_real(value) or not low < value < high:
        raise ValueError(f"{name}={value!r} must be a number in ({low}, {high})")
