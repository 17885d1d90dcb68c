"""The tuning protocol, pre-registered: an equal budget for every family, decided on validation only.

Written on 2026-11-23, before any run that uses it. The protocol object (``protocol()``) goes
into the results JSON of notebook 01 beside the grid it produced.

**Families and what each tunes.**

- ``dense`` tunes the recipe: the AdamW learning rate ``lr`` and ``weight_decay``.
- Each ERSM variant (paper, calibrated, meanfield, hardconcrete) tunes its layer and regulariser:
  ``lambda_unary``, ``lambda_pair`` and ``beta``. It trains with the recipe selected for dense
  (the recipe is shared, tuned once on dense), so no family gets a recipe of its own.
- ``dense + Cutout`` uses dense's recipe; every ``beta = 0`` control uses its variant's selected
  ``lambda_unary`` and ``lambda_pair`` with ``beta = 0``. Neither tunes anything.

**Budget.** ``K`` trials per tuned family, the same ``K`` for every family (the profile's
``TUNING_TRIALS``; ``full``: 8). Trial 0 is the default config (``lr = 3e-3``,
``weight_decay = 5e-4``; the paper's ``lambda_unary = lambda_pair = beta = 1``), so the paper's
setting is always in the grid and reported beside the selection. Trials 1..K-1 are drawn
log-uniformly from ``SPACES`` by ``numpy.random.default_rng([TUNING_SEED, family code])``, so
the grid is a pure function of the family and ``K`` (a larger ``K`` extends a smaller one). The
exponential is ``math.exp`` (the C library's), not ``numpy.exp``: numpy picks its exp loop by the
CPU's vector extensions, and on an AVX-512 CPU it returned one trial's ``lr`` one bit away from
the committed grid, which is a different config hash and a model trained twice.
Every trial trains model seed ``TRIAL_SEED = 0`` at the profile's full budget (same images,
epochs and schedule as the final models).

**Selection.** The trial with the highest final-epoch validation accuracy; ties go to the
lower trial index. ERSM trials all have ``beta > 0`` (the space's lower end is 0.1): the paper's
method is the layer *and* its regulariser, so a config that switches the regulariser off is
never selected. Tuning reads the validation split only, never the test split.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pandas as pd

from ersm.checks import is_integer, is_number
from ersm.training.config import TrainConfig
from ersm.layer import VARIANTS

TUNING_SEED = 2026
TRIAL_SEED = 0
DEFAULT_TRIALS = 8
SPACES = {
    "dense": {"lr": (1e-3, 1e-2), "weight_decay": (1e-5, 1e-2)},
    "ersm": {"lambda_unary": (0.1, 10.0), "lambda_pair": (0.1, 10.0), "beta": (0.1, 10.0)},
}
# the random-stream code of each tuned family: dense 0, then the variants in ersm.layer.VARIANTS order (paper 1 ...
# hardconcrete 4); a new variant takes the next code, so the grids of the others do not move
FAMILY_CODES = {"dense": 0, **{variant: code for code, variant in enumerate(VARIANTS, start=1)}}


def protocol(trials: int) -> dict:
    """The pre-registered protocol as a JSON-ready dict (for the results file)."""
    check_trials(trials)
    return {"trials_per_family": trials, "tuning_seed": TUNING_SEED, "trial_model_seed": TRIAL_SEED,
            "spaces": {k: {p: list(r) for p, r in v.items()} for k, v in SPACES.items()}, "sampling": "log-uniform",
            "trial_0": "the default config (paper: lambda_unary = lambda_pair = beta = 1)",
            "recipe": "shared: tuned on dense, used by every family",
            "selection": "highest final-epoch validation accuracy; ties to the lower trial index; ERSM trials all have beta > 0",
            "split": "validation (held-out training digits); never the test split"}


def check_trials(trials) -> None:
    if not is_integer(trials) or trials < 1:
        raise ValueError(f"trials={trials!r} must be a positive integer (trial 0 is the default config)")


def check_space(space: dict) -> None:
    """Every range is ``(low, high)`` with ``0 < low <= high`` and finite: a log-uniform draw needs it."""
    for name, bounds in space.items():
        ok = isinstance(bounds, (tuple, list)) and len(bounds) == 2 and all(
            is_number(v) for v in bounds)
        if not ok or not 0 < bounds[0] <= bounds[1]:
            raise ValueError(f"tuning space {name}={bounds!r} must be (low, high) with 0 < low <= high, finite "
                             f"(a log-uniform draw needs positive bounds)")


def trial_settings(family: str, trials: int) -> list[dict]:
    """The ``trials`` settings of ``family`` (a ``TrainConfig.model``), trial 0 first (the default)."""
    check_trials(trials)
    if family not in FAMILY_CODES:
        raise ValueError(f"family={family!r} is not a tuned family; tuned families are {list(FAMILY_CODES)}")
    space = SPACES["dense" if family == "dense" else "ersm"]
    check_space(space)
    default = TrainConfig()
    settings = [{name: getattr(default, name) for name in space}]
    rng = np.random.default_rng([TUNING_SEED, FAMILY_CODES[family]])
    for _ in range(trials - 1):
        # math.exp, not np.exp: numpy's AVX-512 exp loop can differ in the last bit, and a last-bit change
        # in lr or beta is a new config hash, so the grid would not be the same on every x86-64 CPU.
        settings.append({name: math.exp(float(rng.uniform(math.log(lo), math.log(hi)))) for name, (lo, hi) in space.items()})
    return settings


def trial_configs(base: TrainConfig, family: str, trials: int, recipe: dict | None = None) -> list[TrainConfig]:
    """One config per trial of ``family`` at the base budget and ``TRIAL_SEED``; ERSM trials use ``recipe``
    (dense's selected ``lr`` and ``weight_decay``)."""
    recipe = {} if family == "dense" else dict(recipe or {})
    return [base.replace(model=family, seed=TRIAL_SEED, **recipe, **setting) for setting in trial_settings(family, trials)]


def trials_by_family(base: TrainConfig, trials: int, selected: dict[str, dict],
                     families=VARIANTS) -> dict[str, list[TrainConfig]]:
    """``"<family> trials"`` -> the trial configs ``tune`` trained (ERSM families with dense's selected recipe)."""
    recipe = {k: selected["dense"][k] for k in SPACES["dense"]}
    return {f"{family} trials": trial_configs(base, family, trials, None if family == "dense" else recipe)
            for family in ("dense", *families)}


def select(scores: list[float]) -> int:
    """Index of the highest validation accuracy, the lower index on ties; NaN is refused."""
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1 or values.size == 0 or not np.isfinite(values).all():
        raise ValueError(f"scores={list(scores)!r} must be a non-empty list of finite validation accuracies")
    return int(np.flatnonzero(values == values.max())[0])


def tune(base: TrainConfig, trials: int, families=VARIANTS,
         history_of: Callable[[TrainConfig], list[dict]] | None = None) -> tuple[dict[str, dict], pd.DataFrame]:
    """Run the protocol: dense first (its recipe), then every ERSM family with that recipe.

    Returns ``(selected, grid)``: ``selected[family]`` holds the chosen fields (dense: ``lr``,
    ``weight_decay``; ERSM: ``lr``, ``weight_decay``, ``lambda_unary``, ``lambda_pair``,
    ``beta``); ``grid`` has one row per trial (``family, trial, <settings>, val_accuracy, selected``).
    ``history_of`` returns a trained config's per-epoch records (default: train through the cache).
    """
    if history_of is None:
        from ersm.training.cache import training_history as history_of
    rows, selected = [], {}
    for family in ("dense", *families):
        recipe = None if family == "dense" else {k: selected["dense"][k] for k in SPACES["dense"]}
        configs = trial_configs(base, family, trials, recipe)
        scores = [100 * history_of(config)[-1]["val_accuracy"] for config in configs]
        best = select(scores)
        fields = ("lr", "weight_decay") + (() if family == "dense" else tuple(SPACES["ersm"]))
        selected[family] = {name: getattr(configs[best], name) for name in fields}
        for index, (config, score) in enumerate(zip(configs, scores)):
            rows.append({"family": family, "trial": index, **{name: getattr(config, name) for name in fields},
                         "val_accuracy": score, "selected": index == best})
    return selected, pd.DataFrame(rows)


def trial_report(base: TrainConfig, grid: pd.DataFrame, recipe: dict) -> pd.DataFrame:
    """``grid`` with, per ERSM trial, its mask on the validation split: ``sparsity`` (1 minus the
    kept mass ``mean m / max m``, mean over images) and ``mask_auroc`` (per-pixel AUROC of the
    mask, upsampled, against the digit, mean over images). Dense trials get NaN. Reads the
    validation split only; the models come from the cache (``tune`` trained them)."""
    from ersm.training.inference import predict
    from ersm.metrics.localisation import pixel_auroc
    from ersm.data import load_split
    from ersm.training.cache import get_model

    rows = []
    for row in grid.to_dict("records"):
        sparsity = auroc = math.nan
        if row["family"] != "dense":
            settings = {k: row[k] for k in SPACES["ersm"]}
            config = base.replace(model=row["family"], seed=TRIAL_SEED, **recipe, **settings)
            images, _, masks = load_split(config, "validation")
            mask = predict(get_model(config), images).mask[:, 0].cpu().float()   # [N, h, w]
            kept = mask.flatten(1).mean(1) / mask.flatten(1).amax(1).clamp_min(1e-12)
            sparsity = float((1 - kept).mean())
            shifted = mask - mask.flatten(1).amin(1).view(-1, 1, 1)
            auroc = float(np.nanmean(pixel_auroc(shifted, masks).numpy()))
        rows.append({**row, "sparsity": sparsity, "mask_auroc": auroc})
    return pd.DataFrame(rows)
