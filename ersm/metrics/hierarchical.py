"""Intervals that count seeds and images: the building blocks of rules v2 (`docs/rules.md#rules-v2`).

An image-level claim reads the hull of two 95% intervals of one statistic
(`docs/protocols.md#two-level-bootstrap`):

- ``two_level_bootstrap`` / ``paired_two_level_bootstrap``: each resample draws ``S`` seeds
  with replacement, then ``N`` test images with replacement for each drawn seed, and recomputes
  the statistic; the interval is the percentile interval of the resampled statistics.
- ``seed_t_interval``: the Student-t interval over the per-seed statistics (``per_seed_statistics``).
- ``interval_hull``: the lowest lower end and the highest upper end.

**Data.** One arm's measurement is an array ``[S, N]``: row ``k`` holds seed ``k``'s value on
each of the same ``N`` test images (a list of per-seed arrays of equal length ``N`` is read as
its rows). Seeds pair across arrays by row index, images by column index. Where one statistic
needs several measurements of an arm (retained accuracy needs occluded and clean correctness),
pass a *tuple* of ``[S, N]`` arrays; every array in a call gets the same seed and image draws.
Values must be finite: drop images with NaN from every seed and arm first, so pairing holds.

**Statistics.** A statistic takes the (resampled) arrays, each ``[..., S, N]``, and returns
``[...]``: it reduces the last two axes (seeds, images) and keeps any leading ones. Written
with ``axis=-1`` / ``axis=-2`` reductions it does. The defaults are ``mean_of_seed_means``
(the mean over seeds of each seed's mean over images) and, for ratios, ``mean_seed_ratio``
(the mean over seeds of ``mean(numerator) / mean(denominator)``, e.g. occluded / clean
accuracy). ``per_seed_statistics`` applies a statistic to each seed alone, which is the
per-seed value for any statistic that is a mean over seeds of a per-seed quantity.

**Image draws.** ``images="shared"`` (the default, and what rules v2 use) draws one set of
image indices per resample and uses it for every drawn seed. ``images="per_seed"`` draws the
images independently for every drawn seed (the nested design). All models are scored on the *same* test images (images are crossed with seeds, not
nested in them), so a per-image effect that every seed shares (an image that is hard for every
model, or that favours one arm under every seed) averages down by ``1/S`` under per-seed draws
but not under shared draws: with identical seeds, ``"shared"`` reproduces the image bootstrap
of one seed while ``"per_seed"`` is ``sqrt(S)`` times narrower. On simulated crossed data (a
shared image effect of SD 1, noise SD 1, S = 5, 200 datasets) per-seed draws covered the true
mean in 81% of the datasets, shared draws in all of them.

Draws come from ``numpy.random.default_rng(seed)``: all seed draws first (``[n_boot, S]``),
then the image draws in chunks of resamples, so the result is a function of ``(seed, S, N,
n_boot, images)`` and the data. Memory stays near ``_CHUNK_VALUES`` float64s per array.
"""
from __future__ import annotations

import math

import numpy as np

from ersm.checks import check_seed_images
from ersm.metrics.stats import _check_level, _check_n_boot, _percentiles, mean_ci

_CHUNK_VALUES = 2_000_000  # resampled values per array held at once (16 MB of float64)
_IMAGE_DRAWS = ("per_seed", "shared")


def mean_of_seed_means(values: np.ndarray) -> np.ndarray:
    """``[..., S, N] -> [...]``: the mean over seeds of each seed's mean over images."""
    return values.mean(axis=-1).mean(axis=-1)


def mean_seed_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``[..., S, N] x 2 -> [...]``: mean over seeds of ``mean(numerator) / mean(denominator)``.

    E.g. retained accuracy: per seed, occluded accuracy over the same model's clean accuracy.
    """
    return (numerator.mean(axis=-1) / denominator.mean(axis=-1)).mean(axis=-1)


def two_level_bootstrap(values, statistic=mean_of_seed_means, n_boot: int = 2000, seed: int = 0,
                        level: float = 0.95, images: str = "shared") -> tuple[float, float, float]:
    """``(estimate, lo, hi)``: two-level percentile bootstrap of ``statistic`` over seeds and images.

    ``values`` is one ``[S, N]`` array, or a tuple of them passed to ``statistic`` in order
    (all resampled with the same draws). ``estimate`` is the statistic on the data as given.
    """
    arrays = _as_arrays("values", values)
    return _bootstrap(arrays, statistic, n_boot, seed, level, images)


def paired_two_level_bootstrap(a, b, statistic=mean_of_seed_means, n_boot: int = 2000, seed: int = 0,
                               level: float = 0.95, images: str = "shared") -> tuple[float, float, float]:
    """``(statistic(a) - statistic(b), lo, hi)``: the two-level bootstrap of a paired difference.

    ``a`` and ``b`` are the two arms, each one ``[S, N]`` array or a tuple of them (the same
    number and shape in both arms): seed ``k`` of ``a`` pairs with seed ``k`` of ``b``, image
    ``i`` with image ``i``. Every resample applies the same seed draws and the same image
    draws to both arms, so the pairing (and its correlation) is kept. Orient it so that a
    positive difference favours the claim (``a`` = ERSM where larger is better).
    """
    first, second = _as_arrays("a", a), _as_arrays("b", b)
    if len(first) != len(second) or first[0].shape != second[0].shape:
        raise ValueError(f"a and b must be paired: the same number of [S, N] arrays of the same shape; got "
                         f"a: {len(first)} of shape {first[0].shape}, b: {len(second)} of shape {second[0].shape}")
    k = len(first)

    def difference(*arrays):
        return statistic(*arrays[:k]) - statistic(*arrays[k:])

    return _bootstrap(first + second, difference, n_boot, seed, level, images)


def per_seed_statistics(values, statistic=mean_of_seed_means) -> np.ndarray:
    """``[S]``: ``statistic`` applied to each seed alone (``values`` as in ``two_level_bootstrap``).

    For a statistic that is a mean over seeds of a per-seed quantity (both defaults are), these
    are the per-seed quantities, and their mean is the statistic. For a paired comparison pass
    the per-seed differences, ``per_seed_statistics(a) - per_seed_statistics(b)``, to
    ``seed_t_interval``.
    """
    arrays = _as_arrays("values", values)
    out = np.asarray(statistic(*(x[:, None, :] for x in arrays)), dtype=np.float64)
    if out.shape != (arrays[0].shape[0],):
        raise ValueError(f"statistic must reduce the last two axes [..., S, N] -> [...]; on {arrays[0].shape[0]} "
                         f"one-seed arrays it returned shape {out.shape}")
    return out


def seed_t_interval(per_seed_values, level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: Student-t interval over seeds of per-seed statistics (``stats.mean_ci``).

    Refuses fewer than two seeds (rules v2: at least two seeds enter every interval).
    """
    x = np.asarray(per_seed_values, dtype=np.float64) if _is_numeric(per_seed_values) else None
    if x is None or x.ndim != 1:
        raise ValueError(f"per_seed_values must be a 1-D array of numbers (one per seed), got {per_seed_values!r}")
    if x.size < 2:
        raise ValueError(f"per_seed_values has {x.size} seed(s); a t-interval over seeds needs at least 2")
    if not np.isfinite(x).all():
        raise ValueError(f"per_seed_values has NaN or inf: {x.tolist()}")
    return mean_ci(x, level=level)


def interval_hull(*intervals) -> tuple[float, float, float]:
    """``(estimate, min lo, max hi)`` of ``(estimate, lo, hi)`` intervals of the same estimate.

    The rule-v2 interval is the hull of the two-level bootstrap and the seed t-interval. The
    estimates must agree (to rounding: ``math.isclose`` with ``rel_tol=1e-9``,
    ``abs_tol=1e-12``); the first is returned. NaN or inf anywhere, or ``lo > hi``, is refused.
    """
    if not intervals:
        raise ValueError("interval_hull needs at least one (estimate, lo, hi) interval")
    rows = []
    for i, interval in enumerate(intervals):
        try:
            est, lo, hi = (float(v) for v in interval)
        except (TypeError, ValueError):
            raise ValueError(f"intervals[{i}]={interval!r} must be an (estimate, lo, hi) triple of numbers") from None
        if not all(math.isfinite(v) for v in (est, lo, hi)):
            raise ValueError(f"intervals[{i}]={interval!r} has NaN or inf; an interval needs finite ends")
        if lo > hi:
            raise ValueError(f"intervals[{i}]={interval!r} has lo > hi")
        rows.append((est, lo, hi))
    est = rows[0][0]
    for i, row in enumerate(rows[1:], start=1):
        if not math.isclose(row[0], est, rel_tol=1e-9, abs_tol=1e-12):
            raise ValueError(f"intervals[{i}] has estimate {row[0]!r} but intervals[0] has {est!r}; "
                             f"a hull joins intervals of the same statistic")
    return est, min(r[1] for r in rows), max(r[2] for r in rows)


def rule_v2_interval(values, statistic=mean_of_seed_means, n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """``(estimate, lo, hi)`` of one arm's statistic under rules v2: the hull of the two-level
    bootstrap (shared image draws) and the Student-t interval over the per-seed statistics."""
    return interval_hull(two_level_bootstrap(values, statistic, n_boot, seed, level),
                         seed_t_interval(per_seed_statistics(values, statistic), level))


def paired_rule_v2_interval(a, b, statistic=mean_of_seed_means, n_boot: int = 2000, seed: int = 0,
                            level: float = 0.95) -> tuple[float, float, float]:
    """``(statistic(a) - statistic(b), lo, hi)`` under rules v2: the hull of the paired two-level
    bootstrap (shared image draws) and the t-interval of the per-seed differences.

    This is the interval every image-level verdict reads (``docs/rules.md#rules-v2``). Orient
    it so that a positive difference favours the claim.
    """
    boot = paired_two_level_bootstrap(a, b, statistic, n_boot, seed, level)
    per_seed = per_seed_statistics(a, statistic) - per_seed_statistics(b, statistic)
    return interval_hull(boot, seed_t_interval(per_seed, level))


def _bootstrap(arrays, statistic, n_boot, seed, level, images) -> tuple[float, float, float]:
    _check_level(level)
    _check_n_boot(n_boot)
    if images not in _IMAGE_DRAWS:
        raise ValueError(f"images={images!r} must be one of {_IMAGE_DRAWS}")
    s, n = arrays[0].shape
    estimate = _apply(statistic, [x[None] for x in arrays], 1)[0]
    if not math.isfinite(estimate):
        raise ValueError(f"statistic is {estimate} on the data as given; it must be finite")
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, s, size=(n_boot, s))
    flat = [x.ravel() for x in arrays]
    chunk = max(1, _CHUNK_VALUES // (s * n))
    stats = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        rows = seed_draws[start:start + chunk]                               # [B, S]
        b = rows.shape[0]
        cols = rng.integers(0, n, size=(b, s, n) if images == "per_seed" else (b, 1, n))
        index = rows[:, :, None] * n + cols                                  # [B, S, N] into the flat [S*N]
        stats[start:start + b] = _apply(statistic, [x[index] for x in flat], b)
    bad = ~np.isfinite(stats)
    if bad.any():
        raise ValueError(f"statistic is NaN or inf on {int(bad.sum())} of {n_boot} resamples "
                         f"(e.g. a ratio whose denominator resampled to 0)")
    return (float(estimate), *_percentiles(stats, level))


def _apply(statistic, arrays, b: int) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):  # non-finite results are refused by the caller
        out = np.asarray(statistic(*arrays), dtype=np.float64)
    if out.shape != (b,):
        raise ValueError(f"statistic must reduce the last two axes [..., S, N] -> [...]; on arrays of shape "
                         f"{arrays[0].shape} it returned shape {out.shape}")
    return out


def _as_arrays(name: str, values) -> list[np.ndarray]:
    """A non-empty list of finite float64 ``[S, N]`` arrays of one shape, ``S >= 2``, ``N >= 2``
    (``ersm.checks.check_seed_images`` on each)."""
    parts = list(values) if isinstance(values, tuple) else [values]
    if not parts:
        raise ValueError(f"{name} is an empty tuple; pass an [S, N] array or a tuple of them")
    out = []
    for j, part in enumerate(parts):
        label = name if len(parts) == 1 and not isinstance(values, tuple) else f"{name}[{j}]"
        out.append(check_seed_images(label, part, shape=out[0].shape if out else None, paired_with=f"{name}[0]"))
    return out


def _is_numeric(values) -> bool:
    try:
        np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return True
