"""Verdict rules and the claim rows they produce (the rules: ``docs/rules.md``, version ``ersm.study.rules.VERSION``).

Every rule reads only an *oriented* difference (``ERSM - baseline`` where larger is better,
``baseline - ERSM`` where smaller is better, so a positive value always favours the claim)
and its 95% interval ``[lo, hi]``:

- superiority: SUPPORTED if ``lo > 0``; NOT SUPPORTED if ``hi < 0``; else INCONCLUSIVE.
- non-inferiority with margin ``M``: SUPPORTED if ``lo > -M``; NOT SUPPORTED if ``hi < -M``;
  else INCONCLUSIVE.
- threshold (a single quantity must clear a bar ``t``): SUPPORTED if ``lo > t``; NOT SUPPORTED
  if ``hi < t``; else INCONCLUSIVE.

Bad input is refused, never turned into a verdict: every claim function checks its arguments
first (the ``check_*`` helpers below) and raises a ``ValueError`` that names the argument and
its value for an empty frame, a model that is not there, too few seeds or images for an
interval, unpaired units, or scores that are NaN or inf.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np
import pandas as pd

from ersm.checks import MIN_UNITS, check_count, is_number
from ersm.study.rules import RULES_PAGE, VERSION

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "SUPPORTED", "NOT SUPPORTED", "INCONCLUSIVE"
RULES_TEXT = f"rules {VERSION}, {RULES_PAGE}; amended after test data existed"  # what every verdict prints
NOT_CONVERGED = "INCONCLUSIVE (not converged)"  # rules v2: a claim whose models did not all converge (ersm.study.convergence)


def superiority(lo: float, hi: float) -> str:
    return threshold(lo, hi, 0.0)


def non_inferiority(lo: float, hi: float, margin: float) -> str:
    return threshold(lo, hi, -margin)


def threshold(lo: float, hi: float, bar: float) -> str:
    if lo > bar:
        return SUPPORTED
    if hi < bar:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def overall_verdict(verdicts) -> str:
    """SUPPORTED if every verdict is; NOT SUPPORTED if any is; else INCONCLUSIVE."""
    verdicts = list(verdicts)
    if not verdicts:
        raise ValueError("verdicts is empty; an overall verdict needs at least one row")
    if all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    if any(v == NOT_SUPPORTED for v in verdicts):
        return NOT_SUPPORTED
    return INCONCLUSIVE


@dataclass
class Claim:
    """One row of the claims table."""

    claim: str
    metric: str
    baseline_name: str
    baseline: float
    ersm: float
    difference: float
    lo: float
    hi: float
    rule: str
    verdict: str

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self, digits: int = 1) -> str:
        f = partial(number_text, digits=digits)
        return (f"Claim: {self.claim}\nMetric: {self.metric}\nRule ({RULES_TEXT}): {self.rule}\n"
                f"{self.baseline_name}: {f(self.baseline)} | ERSM: {f(self.ersm)} | "
                f"difference: {f(self.difference)} [95% CI {f(self.lo)}, {f(self.hi)}]\n"
                f"VERDICT: {self.verdict}")


NOT_AVAILABLE = "n/a"


def number_text(value, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals; ``"n/a"`` for NaN or None (a claim with no value: e.g.
    INCONCLUSIVE for want of headroom, whose numbers the results JSON stores as null)."""
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return NOT_AVAILABLE
    return f"{value:.{digits}f}"


def claims_markdown(rows: list[dict], digits: int = 2) -> str:
    """A Markdown table: claim | metric | baseline | ERSM | difference [95% CI] | verdict.

    A value that is NaN or None (no value, e.g. no headroom) prints as ``n/a``.
    """
    f = partial(number_text, digits=digits)
    lines = ["| claim | metric | baseline | ERSM | difference [95% CI] | verdict |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['claim']} | {r['metric']} | {r['baseline_name']}: {f(r['baseline'])} | "
                     f"{f(r['ersm'])} | {f(r['difference'])} [{f(r['lo'])}, {f(r['hi'])}] | "
                     f"**{r['verdict']}** |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- input checks
# Used at the start of every claim function (ersm.experiments.*). They only raise; they change
# nothing that a valid input computes.

RULE_V2_INTERVAL = ("rules v2 interval (hull of the paired two-level bootstrap over seeds and test images, one image draw "
                    "shared by the drawn seeds, and the Student-t interval of the per-seed differences)")


def check_number(name: str, value, low: float | None = None, high: float | None = None) -> None:
    """``value`` is a finite real number (not a bool) in ``[low, high]``."""
    if not is_number(value):
        raise ValueError(f"{name}={value!r} must be a finite number")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name}={value!r} must lie in [{low}, {high}]")


def check_member(name: str, value, available, container: str, what: str = "model") -> None:
    """``value`` is one of ``available`` (the models, or maps, found in the argument ``container``)."""
    available = list(available)
    if not any(value == item for item in available):
        raise ValueError(f"{name}={value!r} is not a {what} in {container}; {what}s are {_sorted(available)}")


def _sorted(items) -> list:
    """``sorted(items)``, or sorted by ``str`` where the items do not compare (mixed types), for messages."""
    try:
        return sorted(items)
    except TypeError:
        return sorted(items, key=str)


def check_n_boot(n_boot) -> None:
    """``n_boot`` is an integer >= 1 (checked up front, also where a claim ends before any bootstrap)."""
    check_count("n_boot", n_boot, 1)


def check_distinct(first: str, a, second: str, b) -> None:
    """A claim compares two different things: ``first`` and ``second`` must differ."""
    if a == b:
        raise ValueError(f"{first}={a!r} and {second}={b!r} are the same; a claim compares two different ones")


def check_frame(frame, name: str, columns) -> None:
    """``frame`` is a non-empty DataFrame with every one of ``columns``."""
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{name} must be a pandas DataFrame, got {name} of type {type(frame).__name__}")
    if len(frame) == 0:
        raise ValueError(f"{name} is empty (no rows); a claim needs one row per (model, seed)")
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks the column(s) {missing}; its columns are {list(frame.columns)}")


def check_seed_values(frame: pd.DataFrame, name: str, value: str, model_arg: str, model) -> np.ndarray:
    """The finite ``value`` of ``model`` in ``frame``, at least ``MIN_UNITS`` of them (one per seed)."""
    try:
        values = frame.loc[frame["model"] == model, value].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}[{value!r}] must hold numbers; {model_arg}={model!r} has non-numeric values") from None
    if values.size < MIN_UNITS:
        raise ValueError(f"{name} has {values.size} seed(s) for {model_arg}={model!r}; "
                         f"a 95% t-interval over seeds needs at least {MIN_UNITS}")
    if not np.isfinite(values).all():
        raise ValueError(f"{name}[{value!r}] has NaN or inf for {model_arg}={model!r} "
                         f"({int((~np.isfinite(values)).sum())} of {values.size} seeds); a claim needs every value")
    return values


def check_seed_pairs(frame, name: str, value: str, models: dict) -> None:
    """``frame`` pairs ``models`` (argument name -> model) by seed for a t-interval of ``value``.

    Every named model has exactly one finite ``value`` for every seed that ``frame`` holds (the
    difference is read from ``frame.pivot(index="seed", columns="model")``), and there are at
    least ``MIN_UNITS`` seeds.
    """
    check_frame(frame, name, ("model", "seed", value))
    present = pd.unique(frame["model"])
    for arg, model in models.items():
        check_member(arg, model, present, name)
    (first, a), *rest = models.items()
    for second, b in rest:
        check_distinct(first, a, second, b)
    duplicated = frame[frame.duplicated(["model", "seed"])]
    if len(duplicated):
        pairs = _sorted({(m, s) for m, s in zip(duplicated["model"], duplicated["seed"])})
        raise ValueError(f"{name} has more than one row for (model, seed) {pairs}; a claim needs one row per (model, seed)")
    seeds = _sorted(set(frame["seed"]))
    for arg, model in models.items():
        own = _sorted(set(frame.loc[frame["model"] == model, "seed"]))
        if own != seeds:
            raise ValueError(f"{arg}={model!r} has rows for seeds {own} in {name}, which holds seeds {seeds}; "
                             f"the claim pairs models by seed, so it needs a row for every seed")
        check_seed_values(frame, name, value, arg, model)


