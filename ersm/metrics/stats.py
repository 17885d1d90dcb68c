"""Intervals for reported numbers: over seeds (Student t) and over test images (bootstrap).

Every claim's verdict compares baseline and ERSM with a 95% interval (`docs/protocols.md#statistics`),
either over training seeds or by a paired bootstrap over the same test images.
- ``mean_ci``: ``mean +- t_{(1+level)/2, n-1} * s / sqrt(n)``, for a handful of seeds.
- ``bootstrap_ci``: the percentile interval of the resampled mean (Efron and Tibshirani, 1993).
- ``paired_bootstrap``: the same, for ``mean(a - b)`` with the *same* resampled indices for
  ``a`` and ``b``, so the per-image pairing (and its correlation) is kept.
- ``coefficient_of_variation``: ``std / mean`` (sample std, ``ddof=1``), a spread measure for
  per-input adaptivity (`docs/protocols.md#what-sparsity-means-elsewhere`, SACT).

Arrays in (anything ``numpy.asarray`` takes, 1-D, finite), Python floats out. A single value
has no spread: its interval is ``(nan, nan)`` and its coefficient of variation is nan.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from ersm.checks import as_numbers, check_count, is_number


def mean_ci(values, level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: Student-t interval of the mean over ``values`` (e.g. one per seed)."""
    x = _as_values("values", values)
    _check_level(level)
    mean = float(x.mean())
    if x.size < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf((1 + level) / 2, df=x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return mean, float(mean - half), float(mean + half)


def bootstrap_ci(values, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: percentile bootstrap interval of the mean, ``n_boot`` resamples."""
    x = _as_values("values", values)
    _check_level(level)
    _check_n_boot(n_boot)
    if x.size < 2:
        return float(x.mean()), float("nan"), float("nan")
    means = x[_resample_indices(x.size, n_boot, seed)].mean(1)
    return (float(x.mean()), *_percentiles(means, level))


def paired_bootstrap(a, b, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """``(mean(a - b), lo, hi)``: percentile bootstrap of the mean paired difference.

    ``a[i]`` and ``b[i]`` must be measured on the same unit (image, seed); each resample draws
    one set of indices and uses it for both. Deterministic for a given ``seed``.
    """
    x, y = _as_values("a", a), _as_values("b", b)
    if x.shape != y.shape:
        raise ValueError(f"a and b must be paired, same length; got a with {x.size} values and b with {y.size}")
    return bootstrap_ci(x - y, n_boot=n_boot, seed=seed, level=level)


def coefficient_of_variation(values) -> float:
    """``std(values, ddof=1) / mean(values)``; nan for one value or a zero mean."""
    x = _as_values("values", values)
    mean = x.mean()
    if x.size < 2 or mean == 0:
        return float("nan")
    return float(x.std(ddof=1) / mean)


def _resample_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n]`` indices drawn with replacement, from ``numpy.random.default_rng(seed)``."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return float(lo), float(hi)


def _as_values(name: str, values) -> np.ndarray:
    x = as_numbers(name, values, "a 1-D array of numbers")
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got {name} with shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains non-finite values (NaN or inf); drop or count them first")
    return x


def _check_level(level) -> None:
    if not is_number(level, numpy=False) or not 0 < level < 1:
        raise ValueError(f"level={level!r} must be a number in (0, 1)")


def _check_n_boot(n_boot) -> None:
    check_count("n_boot", n_boot, 1)
