"""Convergence as a recorded fact: which trained models may carry a verdict (rules v2).

The rule, fixed in code before any run that uses it (``docs/rules.md#rules-v2``). A model
counts as **converged** when both hold:

1. **It fits its training set**: its final-epoch training cross-entropy is below
   ``CE_MAX = 0.05`` nats (mean over the epoch's training batches, the regulariser excluded).
2. **Its family is stable**: the family's first seed, retrained for ``LONGER = 1.5`` times the
   epochs (rounded up) with the same recipe, reaches a validation accuracy within
   ``STABLE_POINTS = 0.5`` point of the same seed at the normal budget.

*Why both.* The one-cycle schedule anneals the learning rate to zero, so every loss curve is
flat at its end; a flat tail alone proves nothing. Condition 1 says the model has learned what
its data can teach it; condition 2 says more training would not change the answer by more than
the test set resolves. Both read the training and validation splits only, never the test split.

The longer run is trained only when every seed of the family passes condition 1; otherwise the
family is already not converged and ``stable`` is recorded as not measured (``None``). A claim
that names a model that did not converge gets the verdict ``NOT_CONVERGED`` (``gate``), with
its numbers still shown.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import pandas as pd

from ersm.config import TrainConfig
from ersm.verdicts import NOT_CONVERGED, Claim, check_member

CE_MAX = 0.05
LONGER = 1.5
STABLE_POINTS = 0.5


def longer_config(config: TrainConfig) -> TrainConfig:
    """The config retrained for the stability check: ``ceil(LONGER * epochs)`` epochs, all else equal."""
    return config.replace(epochs=math.ceil(LONGER * config.epochs))


def longer_runs(configs: dict[str, list[TrainConfig]]) -> dict[str, list[TrainConfig]]:
    """``"<family> (longer)"`` -> ``[longer_config(first seed)]`` for every family of ``configs``: the
    runs ``assess`` trains (when the family's seeds fit), e.g. for their provenance."""
    return {f"{name} (longer)": [longer_config(runs[0])] for name, runs in configs.items()}


def assess(configs: dict[str, list[TrainConfig]], history_of: Callable[[TrainConfig], list[dict]] | None = None) -> pd.DataFrame:
    """One row per ``(model, seed)``: the convergence rule's inputs and its outcome.

    ``configs``: family name -> one config per seed (first seed first). ``history_of(config)``
    returns a trained config's per-epoch records (default ``ersm.train.training_history``, which
    trains when the cache lacks the model). Columns: ``model, seed, epochs, cross_entropy`` (final
    epoch), ``fits``, ``val_accuracy`` (final, %), ``longer_val_accuracy`` (the family's first seed
    at ``LONGER`` x epochs, % or NaN), ``val_change`` (points), ``stable`` (True/False/None: not
    measured) and ``converged``.
    """
    if history_of is None:
        from ersm.train import training_history as history_of
    if not isinstance(configs, dict) or not configs or any(not runs for runs in configs.values()):
        raise ValueError(f"configs must map each family name to a non-empty list of configs, got {configs!r}")
    rows = []
    for name, runs in configs.items():
        finals = [_final(history_of(config), name, config) for config in runs]
        fits = [final["cross_entropy"] < CE_MAX for final in finals]
        longer = change = stable = None
        if all(fits):
            longer = 100 * _final(history_of(longer_config(runs[0])), name, longer_config(runs[0]))["val_accuracy"]
            change = longer - 100 * finals[0]["val_accuracy"]
            stable = abs(change) < STABLE_POINTS
        for config, final, fit in zip(runs, finals, fits):
            rows.append({"model": name, "seed": config.seed, "epochs": config.epochs,
                         "cross_entropy": final["cross_entropy"], "fits": fit, "val_accuracy": 100 * final["val_accuracy"],
                         "longer_val_accuracy": math.nan if longer is None else longer,
                         "val_change": math.nan if change is None else change, "stable": stable,
                         "converged": bool(fit and stable)})
    return pd.DataFrame(rows)


def _final(history: list[dict], name: str, config: TrainConfig) -> dict:
    if len(history) != config.epochs or not {"cross_entropy", "val_accuracy"} <= set(history[-1]):
        raise ValueError(f"the history of {name!r} seed {config.seed} has {len(history)} epoch record(s) of "
                         f"{config.epochs}, or lacks cross_entropy/val_accuracy; retrain it (CACHE_VERSION >= 4)")
    return history[-1]


def all_converged(table: pd.DataFrame, names) -> bool:
    """Whether every seed of every family in ``names`` converged."""
    for name in names:
        check_member("names", name, pd.unique(table["model"]), "the convergence table")
    return bool(table.loc[table["model"].isin(list(names)), "converged"].all())


def gate(claim: Claim, table: pd.DataFrame, *names: str) -> Claim:
    """``claim`` as it is when every model it compares (``names``) converged; else the same
    numbers with the verdict ``NOT_CONVERGED``."""
    if not names:
        raise ValueError("gate needs the names of the model families the claim compares")
    return claim if all_converged(table, names) else dataclasses.replace(claim, verdict=NOT_CONVERGED)


def gate_verdict(verdict: str, table: pd.DataFrame, *names: str) -> str:
    """An overall verdict string, gated like ``gate``."""
    if not names:
        raise ValueError("gate_verdict needs the names of the model families the verdict compares")
    return verdict if all_converged(table, names) else NOT_CONVERGED


def summary_line(table: pd.DataFrame) -> str:
    """One line: how many models converged, and why the others did not."""
    n, ok = len(table), int(table["converged"].sum())
    unfit = int((~table["fits"]).sum())
    unstable = int((table["fits"] & (table["stable"] == False)).sum())  # noqa: E712 (None is not False)
    return (f"{ok} of {n} models converged (rule: final training cross-entropy < {CE_MAX} and the family's first seed "
            f"within {STABLE_POINTS} validation points after {LONGER}x the epochs); {unfit} do not fit their training set, "
            f"{unstable} fit but are not stable")
