"""Convergence as a recorded fact: which trained models may carry a verdict (rules v2).

The rule, fixed in code before any run that uses it (``docs/rules.md#rules-v2``). A model
counts as **converged** when both hold:

1. **It fits its training set**: its final-epoch training cross-entropy is below
   ``CE_MAX = 0.05`` nats (mean over the epoch's training batches, the regulariser excluded).
   For a model trained with augmentation (``dense + Cutout``) it is the trained model's mean
   cross-entropy over its training images *without* augmentation, in evaluation mode
   (``fit_cross_entropy``; amended 2026-12-01, see below).
2. **Its family is stable**: the family's first seed, retrained for ``LONGER = 1.5`` times the
   epochs (rounded up) with the same recipe, reaches a validation accuracy less than
   ``STABLE_POINTS = 0.5`` point from the same seed at the normal budget, counted in whole
   validation images (5 of 1,000 is 0.5 point, not stable).

*Why both.* The one-cycle schedule anneals the learning rate to zero, so every loss curve is
flat at its end; a flat tail alone proves nothing. Condition 1 says the model has learned what
its data can teach it; condition 2 says more training would not change the answer by more than
the test set resolves. Both read the training and validation splits only, never the test split.

*Why the amendment for augmented models.* A Cutout batch hides a third of the image side at a
random place, sometimes most of the digit, so no model can bring the loss on those batches near
zero: in the ``full`` run the five Cutout models ended at 0.18-0.20 nats on their batches
while dense, on the same images unhidden, ended below 0.01. Read on its batches, condition 1
could never pass for Cutout, whatever its training. Whether a model has learned its training set
is read on that set's images; the augmentation is part of the recipe, not of the data. The
amendment was made after those batch numbers were seen and before any ``full`` model was scored
on the test split; the batch value stays in the table (``cross_entropy``) beside the one the rule
reads (``fit_cross_entropy``). Models trained without augmentation read the same number as before.

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


def fit_cross_entropy(config: TrainConfig, final: dict,
                      clean_cross_entropy_of: Callable[[TrainConfig], float] | None = None) -> float:
    """The cross-entropy condition 1 compares with ``CE_MAX``: ``final["cross_entropy"]`` (the last
    epoch's training-batch mean) for a model trained without augmentation; for an augmented one,
    ``clean_cross_entropy_of(config)`` (default ``ersm.train.clean_training_cross_entropy``: the
    trained model over its training images without augmentation, in evaluation mode)."""
    if config.augmentation == "none":
        return final["cross_entropy"]
    if clean_cross_entropy_of is None:
        from ersm.train import clean_training_cross_entropy as clean_cross_entropy_of
    return float(clean_cross_entropy_of(config))


def assess(configs: dict[str, list[TrainConfig]], history_of: Callable[[TrainConfig], list[dict]] | None = None,
           clean_cross_entropy_of: Callable[[TrainConfig], float] | None = None) -> pd.DataFrame:
    """One row per ``(model, seed)``: the convergence rule's inputs and its outcome.

    ``configs``: family name -> one config per seed (first seed first). ``history_of(config)``
    returns a trained config's per-epoch records (default ``ersm.train.training_history``, which
    trains when the cache lacks the model); ``clean_cross_entropy_of`` goes to ``fit_cross_entropy``
    for augmented models. Columns: ``model, seed, epochs, cross_entropy`` (final epoch, training
    batches), ``fit_cross_entropy`` (what condition 1 reads), ``fits``, ``val_accuracy`` (final,
    %), ``longer_val_accuracy`` (the family's first seed at ``LONGER`` x epochs, % or NaN),
    ``val_change`` (points), ``stable`` (True/False/None: not measured) and ``converged``.
    """
    if history_of is None:
        from ersm.train import training_history as history_of
    if not isinstance(configs, dict) or not configs or any(not runs for runs in configs.values()):
        raise ValueError(f"configs must map each family name to a non-empty list of configs, got {configs!r}")
    rows = []
    for name, runs in configs.items():
        finals = [_final(history_of(config), name, config) for config in runs]
        fit_values = [fit_cross_entropy(config, final, clean_cross_entropy_of) for config, final in zip(runs, finals)]
        fits = [value < CE_MAX for value in fit_values]
        longer = change = stable = None
        if all(fits):
            first, n_val = runs[0], runs[0].n_val
            longer_correct = _correct(_final(history_of(longer_config(first)), name, longer_config(first)), name, first)
            longer = 100 * longer_correct / n_val
            # in whole images: the float32 accuracies of 908 and 903 of 1,000 differ by 0.4999983 points, not 0.5
            change = 100 * (longer_correct - _correct(finals[0], name, first)) / n_val
            stable = abs(change) < STABLE_POINTS
        for config, final, fit_value, fit in zip(runs, finals, fit_values, fits):
            rows.append({"model": name, "seed": config.seed, "epochs": config.epochs,
                         "cross_entropy": final["cross_entropy"], "fit_cross_entropy": fit_value, "fits": fit,
                         "val_accuracy": 100 * final["val_accuracy"],
                         "longer_val_accuracy": math.nan if longer is None else longer,
                         "val_change": math.nan if change is None else change, "stable": stable,
                         "converged": bool(fit and stable)})
    return pd.DataFrame(rows)


def _final(history: list[dict], name: str, config: TrainConfig) -> dict:
    if len(history) != config.epochs or not {"cross_entropy", "val_accuracy"} <= set(history[-1]):
        raise ValueError(f"the history of {name!r} seed {config.seed} has {len(history)} epoch record(s) of "
                         f"{config.epochs}, or lacks cross_entropy/val_accuracy; retrain it (CACHE_VERSION >= 4)")
    return history[-1]


def _correct(final: dict, name: str, config: TrainConfig) -> int:
    """The validation images a model got right: its recorded accuracy (a float32 mean) times ``n_val``."""
    count = final["val_accuracy"] * config.n_val
    if abs(count - round(count)) > 0.01:
        raise ValueError(f"the val_accuracy {final['val_accuracy']!r} of {name!r} seed {config.seed} is not a share of "
                         f"n_val={config.n_val} images; its history comes from another validation split")
    return round(count)


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
