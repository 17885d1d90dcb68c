"""Checks of the per-image arrays that every interval and claim reads; they only raise.

One place for the shapes the statistics need, so that a bad array gets the same message whether
it reaches a claim (``ersm.study.verdicts``, ``ersm.experiments.*``) or an interval directly
(``ersm.metrics.hierarchical``):

- :func:`check_units`: ``[N]``, one value per test image;
- :func:`check_seed_images`: ``[S, N]``, seeds by row and the same test images by column;
- :func:`is_integer`, :func:`is_number`: the one form of the "a number, not a bool" test;
- :func:`as_numbers`: an array of numbers, or a message naming the argument;
- :func:`check_count`: a count argument (seeds, resamples, steps, jobs ...): an integer, not a
  bool, at least some minimum; the one form of that check in the package.

``check_units`` and ``check_seed_images`` refuse fewer than :data:`MIN_UNITS` values along an axis an interval runs over, and NaN or
inf (with ``allow_nan``, NaN passes, for callers that drop those images themselves; inf never
does). Each returns the float64 array it checked.
"""
from __future__ import annotations

import math

import numpy as np

MIN_UNITS = 2  # a t-interval over seeds, or a bootstrap interval over images, needs two values


def is_integer(value, numpy: bool = True) -> bool:
    """An integer, not a bool (``True`` is an int to Python, never a count here); a NumPy integer
    too unless ``numpy=False`` (for arguments handed on to torch, which refuses NumPy scalars)."""
    kinds = (int, np.integer) if numpy else int
    return isinstance(value, kinds) and not isinstance(value, bool)


def is_number(value, finite: bool = True, numpy: bool = True) -> bool:
    """A real number (int or float), not a bool, finite unless ``finite=False``; a NumPy scalar
    too unless ``numpy=False`` (``np.float64`` is a Python float, so it always passes)."""
    kinds = (int, float, np.integer, np.floating) if numpy else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        return False
    try:
        return not finite or math.isfinite(value)
    except OverflowError:  # an int too large for a float is no finite number here
        return False


def check_count(name: str, value, minimum: int, note: str = "") -> None:
    """Refuse ``value`` unless it is an integer (Python or NumPy, not a bool) ``>= minimum``;
    the message names the argument and the value: ``"<name>=<value> must be an integer >= <minimum><note>"``."""
    if not is_integer(value) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}{note}")


def as_numbers(name: str, values, expected: str) -> np.ndarray:
    """``values`` as a float64 array; ``ValueError`` "<name> must be <expected>, got <name> of type <T>"
    when numpy cannot read it as numbers (a string, a ragged list, an object)."""
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {expected}, got {name} of type {type(values).__name__}") from None


def check_units(name: str, values, n: int | None = None, allow_nan: bool = False) -> np.ndarray:
    """A 1-D array of at least ``MIN_UNITS`` finite numbers (one per test image), of length ``n`` if given."""
    x = as_numbers(name, values, "a 1-D array of numbers")
    if x.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array (one value per test image), got {name} with shape {x.shape}")
    if n is not None and x.size != n:
        raise ValueError(f"{name} has {x.size} values, but the values it is paired with have {n}; "
                         f"a paired comparison needs the same test images")
    if x.size < MIN_UNITS:
        raise ValueError(f"{name} has {x.size} value(s); a bootstrap interval over test images needs at least {MIN_UNITS}")
    return _finite(name, x, allow_nan)


def check_seed_images(name: str, values, shape: tuple | None = None, allow_nan: bool = False,
                      paired_with: str = "the array it is paired with") -> np.ndarray:
    """A float64 ``[S, N]`` array (seeds x the same test images), ``S, N >= MIN_UNITS``, of ``shape``
    if given (that of the array named ``paired_with``). The rules v2 interval
    (``ersm.metrics.hierarchical.paired_rule_v2_interval``) reads such arrays."""
    x = as_numbers(name, values, "an [S, N] array of numbers (seeds x test images)")
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [S, N] array (seeds x test images), got {name} with shape {x.shape}")
    if shape is not None and x.shape != tuple(shape):
        raise ValueError(f"{name} has shape {x.shape}, but {paired_with} has {tuple(shape)}; "
                         f"a paired comparison needs the same seeds and the same test images")
    if x.shape[0] < MIN_UNITS:
        raise ValueError(f"{name} has {x.shape[0]} seed(s); an interval over seeds needs at least {MIN_UNITS}")
    if x.shape[1] < MIN_UNITS:
        raise ValueError(f"{name} has {x.shape[1]} test image(s); an interval over images needs at least {MIN_UNITS}")
    return _finite(name, x, allow_nan)


def _finite(name: str, x: np.ndarray, allow_nan: bool) -> np.ndarray:
    bad = np.isinf(x) if allow_nan else ~np.isfinite(x)
    if bad.any():
        raise ValueError(f"{name} has {int(bad.sum())} {'inf' if allow_nan else 'NaN or inf'} value(s) of {x.size}; "
                         f"a claim needs finite scores (drop NaN images from every seed and arm first)")
    return x
