"""Claim 1: classification accuracy is preserved (ERSM vs. the same backbone without the layer).

Rules v2 (`docs/rules.md#01-accuracy-v2`) as amended (v2.4, ``ersm.study.rules``; v2 was written before the ``full`` run, its amendments after its test scores existed):

- Non-inferiority of ERSM against dense: the Student-t 95% interval over seeds of the per-seed
  difference ``accuracy(ERSM) - accuracy(dense)`` (paired by seed) must lie above ``-margin``
  points (``margin = 1.0`` in v2, both profiles).
- Seeds from a power analysis (``power_table``): ``s`` is the seed-level SD (``ddof=1``) of that
  paired difference; ``n = seeds_for_noninferiority(s, margin, power=0.8)`` is the smallest seed
  count with 80% power at a true difference of 0 (one-sided alpha 0.025, t quantiles;
  ``ersm.metrics.power``). A run with fewer seeds than ``n`` is *underpowered*: with
  ``accuracy_claim(..., power=POWER)`` its verdict text reads e.g.
  ``"SUPPORTED (underpowered: 2 seeds of 5 needed)"``. The verdict itself is the first word(s),
  one of SUPPORTED, NOT SUPPORTED, INCONCLUSIVE (``verdict.split(" (")[0]``); the note only says
  that the run has fewer seeds than the rule asks for.
- ``s == 0`` (every seed gives the same difference): no spread to plan with; ``n`` is the
  minimum of 2 seeds, the power is 1, and the table's ``note`` says so.
- The seeds the power analysis asks for go to the families the verdict compares
  (``claim_families``: dense and each ERSM variant, notebook 01's ``ACCURACY_SEEDS``); the
  other families of the accuracy table (dense + Cutout, the ``beta = 0`` controls) are
  descriptive and keep the profile's ``SEEDS``, as do the other claims. The ``full`` value came
  from one re-estimation on the measured ``s`` (amendment v2.4 of 2026-12-01, made after the 5-seed verdicts were read; `docs/rules.md`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ersm.training.config import TrainConfig
from ersm.experiments.common import ALL_MODELS, DENSE, ERSM_MODELS, family, paired_seed_difference
from ersm.training.inference import accuracy, correct
from ersm.metrics.power import noninferiority_power, seeds_for_noninferiority
from ersm.study.verdicts import MIN_UNITS, Claim, check_number, check_seed_pairs, non_inferiority

POWER = 0.8     # rules v2: 80% power ...
ALPHA = 0.025   # ... at one-sided alpha 0.025, true difference 0
MAX_SEEDS = 1000
COMPARED = (DENSE, *ERSM_MODELS)  # the families of the verdict rows, whose seeds the power analysis sizes


def claim_families(base: TrainConfig, seeds: list[int], accuracy_seeds: list[int],
                   selected: dict[str, dict] | None = None) -> dict[str, list[TrainConfig]]:
    """Notebook 01's models: every family of ``common.ALL_MODELS`` at ``seeds``, and those the
    verdict compares (``COMPARED``) at ``accuracy_seeds`` (``seeds`` first, then the added ones).

    ``accuracy_seeds`` must hold every seed of ``seeds``: the added seeds extend the same pairs,
    and the other notebooks read the models of ``seeds``. Refuses (``ValueError``, naming the
    argument and the value) a list with a missing seed, a repeated seed or a non-integer.
    """
    for name, values in (("seeds", seeds), ("accuracy_seeds", accuracy_seeds)):
        if (not isinstance(values, (list, tuple)) or not values
                or any(isinstance(v, bool) or not isinstance(v, int) for v in values)):
            raise ValueError(f"{name}={values!r} must be a non-empty list of integer seeds")
        if len(set(values)) != len(values):
            raise ValueError(f"{name}={values!r} repeats a seed")
    missing = [seed for seed in seeds if seed not in accuracy_seeds]
    if missing:
        raise ValueError(f"accuracy_seeds={list(accuracy_seeds)!r} lacks seed(s) {missing} of seeds={list(seeds)!r}; "
                         f"it extends the profile's seeds, so it must hold all of them")
    ordered = list(seeds) + [seed for seed in accuracy_seeds if seed not in seeds]
    every = family(base, list(seeds), names=ALL_MODELS, selected=selected)
    compared = family(base, ordered, names=COMPARED, selected=selected)
    return {name: compared.get(name, runs) for name, runs in every.items()}


def configs(base: TrainConfig, params: dict, selected: dict[str, dict]) -> dict[str, list[TrainConfig]]:
    """What notebook 01 trains: ``claim_families`` at the notebook's ``SEEDS`` and ``ACCURACY_SEEDS``
    with the tuning ``selected`` (``ersm.study.tuning.tune``). ``ersm.study.plan`` trains the
    union of the five claim modules' ``configs``."""
    return claim_families(base, params["SEEDS"], params["ACCURACY_SEEDS"], selected)

def seed_counts(seeds: list[int], accuracy_seeds: list[int]) -> str:
    """Notebook 01's seed count for its header line: ``"2 seeds"``, or ``"5 seeds (10 for dense and the
    ERSM variants)"`` where ``claim_families`` trains the compared families at more seeds."""
    extra = [seed for seed in accuracy_seeds if seed not in seeds]
    return f"{len(seeds)} seeds" + (f" ({len(seeds) + len(extra)} for dense and the ERSM variants)" if extra else "")


def accuracy_frame(models: dict[str, list], configs: dict[str, list], test) -> pd.DataFrame:
    """Test accuracy in percent, one row per (model, seed)."""
    images, labels, _ = test
    return pd.DataFrame([{"model": name, "seed": config.seed, "accuracy": 100 * accuracy(model, images, labels)}
                         for name in models for model, config in zip(models[name], configs[name])])


def correctness(models: dict[str, list], configs: dict[str, list], test) -> dict[str, np.ndarray]:
    """``{family: bool [S, N]}``: each seed's top-1 correctness on each test image (rows in the
    order of ``configs[family]``); ``accuracy_frame`` is its mean, in percent."""
    images, labels, _ = test
    return {name: np.stack([correct(model, images, labels).numpy() for model in models[name]]) for name in models}


def accuracy_claim(frame: pd.DataFrame, treatment: str, margin: float, power: float | None = None) -> Claim:
    """Non-inferiority of ``treatment`` against dense, paired by seed, margin in points (rules v2).

    With ``power`` (e.g. ``POWER``), the seeds the power analysis asks for (``power_table``) are
    compared with the seeds in ``frame``, and an underpowered run gets
    ``" (underpowered: N seeds of n needed)"`` appended to its verdict text.

    Refuses (``ValueError``) an empty frame, a treatment or dense model missing from it, fewer
    than two seeds, seeds not shared by both models, NaN accuracies, a negative margin, and
    (with ``power``) a margin of 0 or a power outside (0, 1).
    """
    check_number("margin", margin, low=0.0)
    check_seed_pairs(frame, "frame", "accuracy", {"treatment": treatment, "baseline (common.DENSE)": DENSE})
    table = power_table(frame, [treatment], margin, power=power) if power is not None else None
    diff, lo, hi = paired_seed_difference(frame, "accuracy", treatment, DENSE)
    means = frame.groupby("model")["accuracy"].mean()
    verdict = non_inferiority(lo, hi, margin)
    if table is not None and bool(table["underpowered"].iloc[0]):
        row = table.iloc[0]
        needed = row["seeds_needed"] if row["seeds_needed"] is not None else f"more than {MAX_SEEDS}"
        verdict += f" (underpowered: {row['seeds']} seeds of {needed} needed)"
    return Claim(
        claim=f"accuracy is preserved ({treatment})", metric="test accuracy (%), mean over seeds",
        baseline_name=DENSE, baseline=means[DENSE], ersm=means[treatment], difference=diff, lo=lo, hi=hi,
        rule=f"rules v2, non-inferiority, margin {margin} points: SUPPORTED if the 95% t-interval over seeds of the "
             f"per-seed difference ({treatment} - {DENSE}, paired by seed) lies above -{margin}; "
             f"NOT SUPPORTED if it lies below -{margin}; else INCONCLUSIVE"
             + (f"; seeds from a power analysis ({power:.0%} power at a true difference of 0, one-sided alpha {ALPHA}), "
                f"'underpowered' beside the verdict when the run has fewer" if power is not None else ""),
        verdict=verdict)


def power_table(frame: pd.DataFrame, treatments, margin: float, baseline: str = DENSE,
                power: float = POWER) -> pd.DataFrame:
    """Seeds for non-inferiority of each treatment against ``baseline`` (rules v2, claim 01).

    One row per treatment, in the given order:

    - ``sd``: seed-level SD (``ddof=1``) of the paired difference ``treatment - baseline``;
    - ``seeds_needed``: ``seeds_for_noninferiority(sd, margin, power, alpha=0.025)``, the ``n``
      of the rule (``None`` when more than 1000 seeds would be needed);
    - ``seeds``: the seeds present (paired with the baseline);
    - ``power``: the exact power of the test at the present seed count and a true difference of
      0 (``noninferiority_power``);
    - ``underpowered``: ``seeds < seeds_needed``;
    - ``note``: why a row is special (``sd == 0``; more than 1000 seeds), else empty.

    ``sd == 0`` gives ``seeds_needed = 2`` and ``power = 1`` (the t statistic is infinite at any
    ``n >= 2``), with a note. Refuses (``ValueError``) what ``accuracy_claim`` refuses, an empty
    or string ``treatments``, a margin of 0 and a power outside (0, 1).
    """
    check_number("margin", margin, low=0.0)
    if margin == 0:
        raise ValueError(f"margin={margin!r} must be > 0 for a power analysis (no seed count has power at margin 0)")
    check_number("power", power, low=0.0, high=1.0)
    if not 0 < power < 1:
        raise ValueError(f"power={power!r} must lie strictly between 0 and 1")
    if isinstance(treatments, str) or not isinstance(treatments, (list, tuple)) or len(treatments) == 0:
        raise ValueError(f"treatments={treatments!r} must be a non-empty list of model names")
    for i, treatment in enumerate(treatments):
        check_seed_pairs(frame, "frame", "accuracy", {f"treatments[{i}]": treatment, "baseline": baseline})
    pivot = frame.pivot(index="seed", columns="model", values="accuracy")
    rows = []
    for treatment in treatments:
        diff = (pivot[treatment] - pivot[baseline]).to_numpy(dtype=np.float64)
        n_seeds = diff.size
        sd = float(diff.std(ddof=1))
        note = ""
        if sd == 0.0:
            needed, achieved = MIN_UNITS, 1.0
            note = (f"sd = 0: every seed gives the same difference; no spread to plan with, so the minimum of "
                    f"{MIN_UNITS} seeds is listed and the power is 1")
        else:
            try:
                needed = seeds_for_noninferiority(sd, margin, power=power, alpha=ALPHA, max_seeds=MAX_SEEDS)
            except ValueError:
                needed, note = None, f"more than {MAX_SEEDS} seeds needed"
            achieved = noninferiority_power(n_seeds, sd, margin, alpha=ALPHA)
        underpowered = True if needed is None else n_seeds < needed
        rows.append({"model": treatment, "baseline": baseline, "sd": sd, "seeds_needed": needed, "seeds": n_seeds,
                     "power": achieved, "underpowered": bool(underpowered), "note": note})
    table = pd.DataFrame(rows)
    table["seeds_needed"] = pd.Series([row["seeds_needed"] for row in rows], dtype=object)  # ints, None past MAX_SEEDS
    return table
