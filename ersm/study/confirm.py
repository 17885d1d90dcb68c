"""What the confirmatory run trains, phase by phase, as rules v3 fixes it (``docs/rules.md#rules-v3-confirmatory``).

One study per backbone, each a profile (``ersm.study.profiles.CONFIRM_PROFILES``): ``confirm_small_cnn``
and ``confirm_resnet20``. ``ersm warm --profile <one of them>`` trains every model of the study
through the cache (``ERSM_CACHE``; resumable, one model at a time on a CPU); the claim notebooks
then only load them, after which they open the sealed test split (``ersm.data.sealed``). Every
decision a phase takes reads the training or validation split only.

The phases, each built when the ones before it are trained:

1. ``dense trials`` and ``ERSM trials``: the tuning protocol of ``ersm.study.tuning`` (8 trials per
   tuned family, model seed 0, validation accuracy). ResNet-20 tunes dense and ERSM paper. The
   SmallCNN takes the exploratory run's selections: its trials are the ``full`` run's models
   (``models/full``, the same configs and hashes), so they must be in the cache; this module
   refuses to retrain them (:class:`ExploratoryTrialsMissing`).
2. ``final models``: :data:`PRIMARY` and the backbone's :data:`SECONDARY` families at the
   selected settings, model seeds :data:`SEEDS`.
3. ``background dense, rho=...``: dense on the spurious split at each rho of
   :data:`RHOS_DESCENDING` in turn, until one qualifies (:func:`qualifies`: dense's mean
   accuracy over seeds on validation images with swapped backgrounds is at least 10 points
   above chance). That rho is the primary rho; smaller ones are not trained.

Before any phase, the text of rules v3 must be the frozen one, and the study's test split must
never have been opened (``ersm.data.sealed.check_not_opened``).
4. ``background ERSM``: ERSM paper and its ``beta = 0`` control at the primary rho (none if
   no rho qualifies).
5. ``longer runs``: the convergence rule's 1.5x run of each family whose every seed fits.
"""
from __future__ import annotations

from typing import Iterator

from ersm.study import convergence, setup, tuning
from ersm.training.config import TrainConfig
from ersm.experiments import common
from ersm.experiments.common import CALIBRATED, CONTROLS, CUTOUT, DENSE, MEANFIELD, PAPER
from ersm.experiments.occlusion import background_rho
from ersm.study.profiles import CONFIRM, CONFIRM_PROFILES

SEEDS = tuple(range(10, 19))  # rules v3: 9 fresh model seeds per family
PRIMARY = (DENSE, PAPER, CONTROLS[PAPER])
SECONDARY = {"small_cnn": (CUTOUT, CALIBRATED, CONTROLS[CALIBRATED], MEANFIELD, CONTROLS[MEANFIELD]),
             "resnet20": (CUTOUT,)}
TUNED = {"small_cnn": ("paper", "calibrated", "meanfield"), "resnet20": ("paper",)}
RHOS_DESCENDING = (0.9, 0.7, 0.5)
BACKGROUND_ERSM = (PAPER, CONTROLS[PAPER])


class ExploratoryTrialsMissing(RuntimeError):
    """The SmallCNN study reads the exploratory run's tuning trials, and the cache lacks some."""


def base_of(profile: str) -> TrainConfig:
    """The study's base config: ``full``'s size and data, its backbone, the sealed test split."""
    return setup.base_of(_params(profile))


def families(profile: str, selected: dict) -> dict[str, list[TrainConfig]]:
    """Display name -> one config per seed of :data:`SEEDS`, for the primary and secondary families."""
    backbone = _params(profile)["BACKBONE"]
    return common.family(base_of(profile), list(SEEDS), PRIMARY + SECONDARY[backbone], selected)


def selections(profile: str, history_of=None) -> dict[str, dict]:
    """The tuning selections the study uses (``ersm.study.tuning.tune`` on its trials, validation accuracy)."""
    params = _params(profile)
    return tuning.tune(base_of(profile), params["TUNING_TRIALS"], families=TUNED[params["BACKBONE"]],
                       history_of=history_of)[0]


def validation_swapped_accuracy(config: TrainConfig) -> float:
    """Accuracy (%) of the trained model of ``config`` on its validation images with swapped
    backgrounds (held-out training digits, each on a background of another class)."""
    from ersm.data import load_split
    from ersm.training.inference import accuracy
    from ersm.training.cache import get_model

    images, labels, _ = load_split(config, "validation", background="swapped")
    return 100.0 * accuracy(get_model(config), images, labels)


def qualifies(dense_runs: list[TrainConfig], accuracy_of=None) -> tuple[bool, float]:
    """``(qualifies, mean accuracy)``: whether dense's mean swapped-background validation accuracy
    over its seeds is at least ``CHANCE + MARGIN`` (10 points above chance: 20% on the digits),
    decided by ``occlusion.background_rho``, the function the notebooks read the rho with."""
    accuracy_of = accuracy_of or validation_swapped_accuracy
    values = [accuracy_of(config) for config in dense_runs]
    return background_rho({0.0: {DENSE: values}}) is not None, sum(values) / len(values)


def phases(profile: str, accuracy_of=None) -> Iterator[tuple[str, list[TrainConfig]]]:
    """``(phase name, configs)`` in training order (module docstring)."""
    from ersm.data.sealed import check_not_opened
    from ersm.study.rules import check_v3_frozen

    check_v3_frozen()            # the study runs under the frozen text only
    check_not_opened(profile)    # and trains nothing once its test split was read
    params = _params(profile)
    base, trials, backbone = base_of(profile), params["TUNING_TRIALS"], params["BACKBONE"]
    exploratory = backbone == "small_cnn"  # the SmallCNN reads the exploratory trials and never retrains them
    dense_trials = tuning.trial_configs(base, "dense", trials)
    if exploratory:
        _require_cached(profile, dense_trials)
    yield "dense trials", dense_trials
    recipe = tuning.tune(base, trials, families=())[0]
    ersm_trials = [c for name, runs in tuning.trials_by_family(base, trials, recipe, TUNED[backbone]).items()
                   if name != "dense trials" for c in runs]
    if exploratory:
        _require_cached(profile, ersm_trials)
    yield "ERSM trials", ersm_trials
    selected = selections(profile)
    finals = families(profile, selected)
    yield "final models", [c for runs in finals.values() for c in runs]
    background, primary_rho = {}, None
    for rho in RHOS_DESCENDING:
        at_rho = common.family(base.replace(background_label_correlation=rho), list(SEEDS), [DENSE], selected)
        yield f"background dense, rho={rho}", at_rho[DENSE]
        background[f"{DENSE}, rho={rho}"] = at_rho[DENSE]
        if qualifies(at_rho[DENSE], accuracy_of)[0]:
            primary_rho = rho
            break
    if primary_rho is not None:
        ersm_runs = common.family(base.replace(background_label_correlation=primary_rho), list(SEEDS), BACKGROUND_ERSM, selected)
        yield "background ERSM", [c for runs in ersm_runs.values() for c in runs]
        background.update({f"{name}, rho={primary_rho}": runs for name, runs in ersm_runs.items()})
    fitting = {name: runs for name, runs in {**finals, **background}.items()
               if all(convergence.fits(config, _cached_history(config)[-1]) for config in runs)}
    yield "longer runs", [c for runs in convergence.longer_runs(fitting).values() for c in runs]


def _require_cached(profile: str, configs: list[TrainConfig]) -> None:
    from ersm.training.cache import is_cached

    missing = [config.digest() for config in configs if not is_cached(config)]
    if missing:
        raise ExploratoryTrialsMissing(
            f"{profile} takes the exploratory run's tuning selections (rules v3), but {len(missing)} of its trials are not "
            f"in the cache (first: {missing[0]}); run `python -m ersm models import models/full` into the same ERSM_CACHE, "
            f"with ERSM_KERNELS=native (the kernels they were trained with), first")


def _cached_history(config: TrainConfig) -> list[dict]:
    from ersm.training.cache import training_history
    return training_history(config)


def _params(profile: str) -> dict:
    if profile not in CONFIRM_PROFILES:
        raise ValueError(f"profile={profile!r} is not a confirmatory profile; those are {list(CONFIRM_PROFILES)}")
    return CONFIRM[profile]
