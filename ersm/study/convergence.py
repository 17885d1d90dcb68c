"""Convergence as a recorded fact: which trained models may carry a verdict (rules v2).

The rule of rules v2 as amended by v2.1-v2.3 (``docs/rules.md``; every amendment was made after
the ``full`` models' test scores existed in their training logs). A model
counts as **converged** when both hold:

1. **It fits its training set**: its final-epoch training cross-entropy is below
   ``CE_MAX = 0.05`` nats (mean over the epoch's training batches, the regulariser excluded).
   For a model trained with augmentation (``dense + Cutout``) it is the trained model's mean
   cross-entropy over its training images *without* augmentation, in evaluation mode
   (``fit_cross_entropy``; amendment v2.1 of 2026-12-01, see below).
2. **Its family is stable**: the family's second seed (``STABILITY_SEED_INDEX = 1``), retrained
   for ``LONGER = 1.5`` times the epochs (rounded up) with the same recipe, does not classify the
   validation images detectably better or worse than the same seed at the normal budget: the
   exact two-sided McNemar test of the two runs on the same validation images (a binomial test
   of the images only one of them gets right) gives ``p >= STABILITY_ALPHA = 0.001``
   (amendment v2.3 of 2026-12-01, see below).

*Why both.* The one-cycle schedule anneals the learning rate to zero, so every loss curve is
flat at its end; a flat tail alone proves nothing. Condition 1 says the model has learned what
its data can teach it; condition 2 says more training would not change its answers by more
than the validation split can resolve. Both read the training and validation splits only,
never the test split.

*Why the amendment for augmented models.* A Cutout batch hides a third of the image side at a
random place, sometimes most of the digit, so no model can bring the loss on those batches near
zero: in the ``full`` run the five Cutout models ended at 0.18-0.20 nats on their batches
while dense, on the same images unhidden, ended below 0.01. Read on its batches, condition 1
could never pass for Cutout, whatever its training. Whether a model has learned its training set
is read on that set's images; the augmentation is part of the recipe, not of the data. The
amendment was made after those batch numbers were seen, and after the ``full`` models' test
scores existed in their training logs (the engine then scored the test split every epoch); the batch value stays in the table (``cross_entropy``) beside the one the rule
reads (``fit_cross_entropy``). Models trained without augmentation read the same number as before.

*Why the stability test was replaced.* The first text asked the first seed's longer run to end
less than 0.5 point (5 of 1,000 validation images) from its normal run. Two runs of one family
that differ only in schedule length are two draws of the training noise: in the ``full`` run the
five seeds of a family spread by 0.57 point (median standard deviation over the 37 families) on
the same validation images, so one pair differs by about 0.8 point by chance alone, and a
converged family passes a 0.5-point bar about half the time; all 37 families pass together
with a chance near zero. Seed 0's longer runs showed it (15 of the first 20 families moved by
0.5 point or more, in both directions, dense included). A single pair can only show a change
larger than its own noise, so the test now asks exactly that, per image: with ``b + c``
validation images on which the two runs disagree, it flags a change of about
``3.3 * sqrt(b + c)`` images (about 2.7 points of 1,000 for the 52-77 disagreements of seed
0's pairs). The level 0.001 keeps the chance that 37 families whose longer runs change nothing
fail by noise alone below 4% (37 x 0.001; the exact test is conservative).
The replacement was written after seed 0's longer runs were seen, so it reads seed 1's, trained
after it was written; the test scores of every final ``full`` model already existed in their
training logs (amendment v2.3, ``docs/rules.md``). The table still
shows the old bar on the new pair (``within_half_point``).

**Rules v3 adds a third condition** (``docs/rules.md#rules-v3-confirmatory``; ``assess(...,
masks=True)``, which the ``confirm`` profiles use; the ``full`` run's table is unchanged):

3. **Its mask is stable** (families with an Energy-Mask Layer): on the validation images, the
   kept mass of the longer run (mean over images of ``mean_i m_i / max_j m_j``) lies within
   ``KEPT_MASS_TOLERANCE = 25%`` of the normal run's (``mask_stability``). The mean mask of
   both runs is reported, not tested: in ``full`` the regularised paper mask kept shrinking in
   absolute scale over the extra epochs while its kept mass moved by at most 18%.

With it the table states what condition 2 can detect: ``detectable_change``, the smallest
change of validation accuracy (points) that reaches ``p < STABILITY_ALPHA`` given the pair's
discordant images (16 images of 1,000 at 20 discordant, 32 at 80).

The longer run is trained only when every seed of the family passes condition 1; otherwise the
family is already not converged and ``stable`` is recorded as not measured (``None``). A claim
that names a model that did not converge gets the verdict ``NOT_CONVERGED`` (``gate``), with
its numbers still shown.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
import torch
import pandas as pd
from scipy.stats import binomtest

from ersm.checks import check_count, is_number
from ersm.training.config import TrainConfig
from ersm.study.verdicts import NOT_CONVERGED, Claim, check_member

CE_MAX = 0.05
LONGER = 1.5
STABILITY_SEED_INDEX = 1
STABILITY_ALPHA = 0.001
HALF_POINT = 0.5  # the first text's bar, still shown beside the test
KEPT_MASS_TOLERANCE = 0.25  # rules v3, condition 3: relative change of the validation kept mass


# --- the rule's inputs, read from the trained models (training and validation splits only) ---

def clean_training_cross_entropy(config: TrainConfig) -> float:
    """Mean cross-entropy (nats) of the trained model of ``config`` over its training images
    *without* augmentation, in evaluation mode (trains the model if needed). The convergence rule
    reads it for augmented models, whose batch loss includes what the augmentation hides
    (:func:`fit_cross_entropy`)."""
    from ersm.training.inference import predict
    from ersm.data import load_split
    from ersm.training.cache import get_model

    images, labels, _ = load_split(config, "train")
    logits = predict(get_model(config), images).logits
    return torch.nn.functional.cross_entropy(logits, labels.to(logits.device)).item()


def validation_correct(config: TrainConfig):
    """``[n_val]`` bool numpy array: which validation images the trained model of ``config``
    classifies right, in evaluation mode (trains the model if needed). The convergence rule's
    stability test compares two runs image by image (:func:`stability`)."""
    from ersm.training.inference import correct
    from ersm.data import load_split
    from ersm.training.cache import get_model

    images, labels, _ = load_split(config, "validation")
    return correct(get_model(config), images, labels).numpy()


def longer_config(config: TrainConfig) -> TrainConfig:
    """The config retrained for the stability check: ``ceil(LONGER * epochs)`` epochs, all else equal."""
    return config.replace(epochs=math.ceil(LONGER * config.epochs))


def stability_config(name: str, runs: list[TrainConfig]) -> TrainConfig:
    """The seed of family ``name`` whose longer run condition 2 reads: ``runs[STABILITY_SEED_INDEX]``."""
    if len(runs) <= STABILITY_SEED_INDEX:
        raise ValueError(f"family {name!r} has {len(runs)} seed(s); the stability test needs at least "
                         f"{STABILITY_SEED_INDEX + 1} (it reads the seed at index {STABILITY_SEED_INDEX})")
    return runs[STABILITY_SEED_INDEX]


def longer_runs(configs: dict[str, list[TrainConfig]]) -> dict[str, list[TrainConfig]]:
    """``"<family> (longer)"`` -> ``[longer_config(stability_config(...))]`` for every family of
    ``configs``: the runs ``assess`` trains (when the family's seeds fit), e.g. for their provenance."""
    return {f"{name} (longer)": [longer_config(stability_config(name, runs))] for name, runs in configs.items()}


def fit_cross_entropy(config: TrainConfig, final: dict,
                      clean_cross_entropy_of: Callable[[TrainConfig], float] | None = None) -> float:
    """The cross-entropy condition 1 compares with ``CE_MAX``: ``final["cross_entropy"]`` (the last
    epoch's training-batch mean) for a model trained without augmentation; for an augmented one,
    ``clean_cross_entropy_of(config)`` (default ``clean_training_cross_entropy``: the
    trained model over its training images without augmentation, in evaluation mode)."""
    if config.augmentation == "none":
        return final["cross_entropy"]
    if clean_cross_entropy_of is None:
        clean_cross_entropy_of = clean_training_cross_entropy
    return float(clean_cross_entropy_of(config))


def fits(config: TrainConfig, final: dict, clean_cross_entropy_of: Callable[[TrainConfig], float] | None = None) -> bool:
    """Condition 1: ``fit_cross_entropy(config, final) < CE_MAX``."""
    return fit_cross_entropy(config, final, clean_cross_entropy_of) < CE_MAX


def stability(normal: np.ndarray, longer: np.ndarray) -> dict:
    """Condition 2 on one pair of runs. ``normal``, ``longer``: ``[n_val]`` bool, which validation
    images each run classifies right. Returns ``longer_val_accuracy`` (%), ``val_change`` (points,
    longer minus normal), ``discordant`` (images exactly one run gets right), ``stability_p`` (exact
    two-sided McNemar), ``stable`` (``p >= STABILITY_ALPHA``) and ``within_half_point`` (the first
    text's bar: ``|val_change| < 0.5``, counted in images)."""
    normal, longer = np.asarray(normal, dtype=bool), np.asarray(longer, dtype=bool)
    if normal.ndim != 1 or normal.shape != longer.shape or not normal.size:
        raise ValueError(f"normal and longer must be two non-empty [n_val] vectors of one length, "
                         f"got shapes {normal.shape} and {longer.shape}")
    only_normal, only_longer = int((normal & ~longer).sum()), int((longer & ~normal).sum())
    discordant = only_normal + only_longer
    p = binomtest(only_longer, discordant, 0.5).pvalue if discordant else 1.0
    n = normal.size
    return {"longer_val_accuracy": float(100 * longer.sum() / n), "val_change": 100 * (only_longer - only_normal) / n,
            "discordant": discordant, "stability_p": float(p), "stable": bool(p >= STABILITY_ALPHA),
            "within_half_point": bool(abs(only_longer - only_normal) < HALF_POINT * n / 100)}


def detectable_change(discordant: int, n: int, alpha: float = STABILITY_ALPHA) -> float:
    """The smallest change of accuracy (points of ``n`` images) that the exact two-sided McNemar
    test flags (``p < alpha``) when ``discordant`` images differ between the two runs; NaN when
    no split of them is significant (too few discordant images)."""
    for name, value in (("discordant", discordant), ("n", n)):
        check_count(name, value, 0)
    if discordant > n or n == 0:
        raise ValueError(f"discordant={discordant} must not exceed n={n}, and n must be positive")
    for difference in range(discordant % 2, discordant + 1, 2):   # b - c has the parity of b + c
        if binomtest((discordant + difference) // 2, discordant, 0.5).pvalue < alpha:
            return 100.0 * difference / n
    return math.nan


def kept_mass_and_mean_mask(config: TrainConfig) -> tuple[float, float]:
    """``(kept mass, mean mask)`` of the trained model of ``config`` on its validation images:
    the mean over images of ``mean_i m_i / max_j m_j``, and of ``mean_i m_i`` (trains if needed)."""
    from ersm.experiments.sparsity import kept_mass
    from ersm.training.inference import predict
    from ersm.data import load_split
    from ersm.training.cache import get_model

    images, _, _ = load_split(config, "validation")
    mask = predict(get_model(config), images).mask.cpu()   # [N, 1, h, w]
    return float(kept_mass(mask).mean()), float(mask.double().mean())


def mask_stability(normal: tuple[float, float], longer: tuple[float, float]) -> dict:
    """Condition 3 (rules v3) on one pair of runs; ``normal``, ``longer``: ``(kept mass, mean
    mask)`` on the validation images. Returns both runs' values, ``kept_mass_change`` (relative,
    longer over normal minus 1) and ``mask_stable`` (``|change| <= KEPT_MASS_TOLERANCE``)."""
    (kept, mean), (longer_kept, longer_mean) = normal, longer
    for name, value in (("normal kept mass", kept), ("longer kept mass", longer_kept)):
        if not is_number(value, finite=False) or not (0 <= value <= 1 or math.isnan(value)):
            raise ValueError(f"{name}={value!r} must be a number in [0, 1] (or NaN)")
    if not (kept > 0 and math.isfinite(longer_kept)):   # an all-zero or undefined mask: no stability to show
        return {"kept_mass": kept, "longer_kept_mass": longer_kept, "kept_mass_change": math.nan, "mean_mask": mean,
                "longer_mean_mask": longer_mean, "mask_stable": False}
    change = longer_kept / kept - 1
    return {"kept_mass": kept, "longer_kept_mass": longer_kept, "kept_mass_change": change, "mean_mask": mean,
            "longer_mean_mask": longer_mean, "mask_stable": bool(abs(change) <= KEPT_MASS_TOLERANCE)}


def assess(configs: dict[str, list[TrainConfig]], history_of: Callable[[TrainConfig], list[dict]] | None = None,
           clean_cross_entropy_of: Callable[[TrainConfig], float] | None = None,
           correct_of: Callable[[TrainConfig], np.ndarray] | None = None, masks: bool = False,
           mask_of: Callable[[TrainConfig], tuple[float, float]] | None = None) -> pd.DataFrame:
    """One row per ``(model, seed)``: the convergence rule's inputs and its outcome.

    ``configs``: family name -> one config per seed (at least two). ``history_of(config)`` returns
    a trained config's per-epoch records (default ``ersm.training.cache.training_history``, which trains
    when the cache lacks the model); ``clean_cross_entropy_of`` goes to ``fit_cross_entropy`` for
    augmented models; ``correct_of(config)`` gives ``[n_val]`` bool, the validation images the
    trained model classifies right (default ``validation_correct``, which trains too).
    Columns: ``model, seed, epochs, cross_entropy`` (final epoch, training batches),
    ``fit_cross_entropy`` (what condition 1 reads), ``fits``, ``val_accuracy`` (final, %), the
    family's pair (``stability_seed`` and the columns of ``stability``; NaN when not measured),
    ``stable`` (True/False/None: not measured) and ``converged``.

    ``masks=True`` applies rules v3: ``detectable_change`` (points) and, for a family with an
    Energy-Mask Layer whose pair was measured, the columns of ``mask_stability`` from
    ``mask_of(config)`` (default :func:`kept_mass_and_mean_mask`); ``converged`` then also needs
    ``mask_stable``. Dense families have no mask: their ``mask_stable`` is None and not required.
    """
    if isinstance(masks, bool) is False:
        raise ValueError(f"masks={masks!r} must be True (rules v3) or False (rules v2.4)")
    mask_of = mask_of or kept_mass_and_mean_mask
    if history_of is None:
        from ersm.training.cache import training_history as history_of
    if correct_of is None:
        correct_of = validation_correct
    if not isinstance(configs, dict) or not configs or any(not runs for runs in configs.values()):
        raise ValueError(f"configs must map each family name to a non-empty list of configs, got {configs!r}")
    pairs = {name: stability_config(name, runs) for name, runs in configs.items()}  # refuses before any work
    rows = []
    for name, runs in configs.items():
        finals = [_final(history_of(config), name, config) for config in runs]
        fit_values = [fit_cross_entropy(config, final, clean_cross_entropy_of) for config, final in zip(runs, finals)]
        fitting = [value < CE_MAX for value in fit_values]
        pair = {"stability_seed": math.nan, "longer_val_accuracy": math.nan, "val_change": math.nan,
                "discordant": math.nan, "stability_p": math.nan, "stable": None, "within_half_point": None}
        normal = pairs[name]
        if all(fitting):
            pair = {"stability_seed": normal.seed,
                    **stability(_checked(correct_of(normal), name, normal), _checked(correct_of(longer_config(normal)), name, normal))}
        if masks:
            pair["detectable_change"] = (math.nan if pair["stable"] is None
                                         else detectable_change(int(pair["discordant"]), normal.n_val))
            pair.update(kept_mass=math.nan, longer_kept_mass=math.nan, kept_mass_change=math.nan, mean_mask=math.nan,
                        longer_mean_mask=math.nan, mask_stable=None)
            if normal.is_ersm and pair["stable"] is not None:
                pair.update(mask_stability(mask_of(normal), mask_of(longer_config(normal))))
        for config, final, fit_value, fit in zip(runs, finals, fit_values, fitting):
            stable = pair["stable"] and (not masks or not config.is_ersm or bool(pair["mask_stable"]))
            rows.append({"model": name, "seed": config.seed, "epochs": config.epochs,
                         "cross_entropy": final["cross_entropy"], "fit_cross_entropy": fit_value, "fits": fit,
                         "val_accuracy": 100 * final["val_accuracy"], **pair,
                         "converged": bool(fit and stable)})
    return pd.DataFrame(rows)


def _final(history: list[dict], name: str, config: TrainConfig) -> dict:
    if len(history) != config.epochs or not {"cross_entropy", "val_accuracy"} <= set(history[-1]):
        raise ValueError(f"the history of {name!r} seed {config.seed} has {len(history)} epoch record(s) of "
                         f"{config.epochs}, or lacks cross_entropy/val_accuracy; retrain it (CACHE_VERSION >= 4)")
    return history[-1]


def _checked(correct, name: str, config: TrainConfig) -> np.ndarray:
    correct = np.asarray(correct)
    if correct.shape != (config.n_val,):
        raise ValueError(f"the validation outcomes of {name!r} seed {config.seed} have shape {correct.shape}, "
                         f"not ({config.n_val},): they come from another validation split")
    return correct


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
    return (f"{ok} of {n} models converged (rule: final training cross-entropy < {CE_MAX}, and the family's second seed "
            f"after {LONGER}x the epochs not detectably different on the validation images, McNemar p >= {STABILITY_ALPHA}); "
            f"{unfit} do not fit their training set, {unstable} fit but are not stable" + _mask_summary(table))


def _mask_summary(table: pd.DataFrame) -> str:
    """Condition 3's part of ``summary_line``, for a table assessed under rules v3 (``masks=True``)."""
    if "mask_stable" not in table:
        return ""
    moved = int((table["fits"] & (table["stable"] == True) & (table["mask_stable"] == False)).sum())  # noqa: E712
    return (f"; rules v3 also asks an ERSM family's validation kept mass to move by at most "
            f"{KEPT_MASS_TOLERANCE:.0%} with the longer run: {moved} fit and are stable but their mask is not")
