"""Every model a profile's notebooks train, phase by phase, and ``warm``: train them ahead of the notebooks.

The notebooks train what they need through the cache (``ersm.train.get_model``), one model at a
time. ``ersm warm --profile P`` trains the same models first, several at once with ``--jobs N``
(on a GPU, where small CNNs are bound by kernel launches and several processes share the card),
so that ``ersm reproduce --profile P`` afterwards only loads them. A test runs ``warm`` and then
the notebooks on fixture data and checks that the notebooks trained nothing more.

The phases follow the notebooks and build their configs with the same functions:

1. ``dense trials``: the tuning trials of dense (``ersm.tuning``), which choose the shared recipe;
2. ``ERSM trials``: every ERSM family's trials with that recipe;
3. ``final models``: every family at its selection and every seed (notebook 01, with dense and
   the ERSM variants at its ``ACCURACY_SEEDS``; 02-05 use subsets of them), notebook 02's sweep, and notebook 03's spurious-split families at each rho
   where the dataset has backgrounds to swap, and notebook 05's (``RHO``, dense and the paper's
   layer; in every profile one of 03's);
4. ``longer runs``: the convergence rule's 1.5x-longer run of each family whose seeds all fit
   (``ersm.convergence.fit_cross_entropy``; ``ersm.convergence.assess`` trains it in notebooks 01
   and 03; families that do not fit get none).

A phase reads the cache that the phases before it filled, so it is built only when they are
done. ``jobs > 1`` trains in worker processes (spawned, so CUDA works); each keeps the fixed
thread count of ``ersm.seeding`` (so weights do not depend on ``jobs``), which oversubscribes a
small CPU: on the CPU use one job.
"""
from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Callable, Iterator

from ersm import convergence, tuning
from ersm.checks import check_count
from ersm.config import TrainConfig, from_dict
from ersm.data import capabilities
from ersm.experiments import accuracy, common, sparsity
from ersm.train import get_model, is_cached, training_history
from ersm.profiles import CONFIRM_PROFILES, PROFILE_NAMES, parameters

NOTEBOOK_PARAMETERS = ("01_training", "02_emergent_sparsity", "03_occlusion_robustness", "05_mask_quality")


def base_of(params: dict) -> TrainConfig:
    """The base config every notebook builds from its parameters."""
    return common.base_config(params["CANVAS"], params["N_TRAIN"], params["N_TEST"], params["EPOCHS"], dataset=params["DATASET"],
                              backbone=params["BACKBONE"], n_val=params["N_VAL"], width=params["WIDTH"], device=params["DEVICE"])


def phases(profile: str, parameters_for: Callable[[str, str], dict] = parameters) -> Iterator[tuple[str, list[TrainConfig]]]:
    """``(phase name, configs)`` in training order; each phase is built after the previous one is trained.
    A confirmatory profile's phases are rules v3's (``ersm.confirm.phases``)."""
    if profile in CONFIRM_PROFILES:
        from ersm import confirm
        yield from confirm.phases(profile)
        return
    if profile not in PROFILE_NAMES:
        raise ValueError(f"profile={profile!r} is unknown; choose one of {list(PROFILE_NAMES) + list(CONFIRM_PROFILES)}")
    first, sweep_params, occlusion_params, quality_params = (parameters_for(stem, profile) for stem in NOTEBOOK_PARAMETERS)
    base, seeds, trials = base_of(first), first["SEEDS"], first["TUNING_TRIALS"]
    for stem, params in zip(NOTEBOOK_PARAMETERS[1:], (sweep_params, occlusion_params, quality_params)):
        if base_of(params) != base or params["SEEDS"] != seeds or params["TUNING_TRIALS"] != trials:
            raise ValueError(f"{stem} has other base parameters than 01_training for profile={profile!r}; "
                             f"the notebooks must share their models")
    yield "dense trials", tuning.trial_configs(base, "dense", trials)
    dense, _ = tuning.tune(base, trials, families=())
    yield "ERSM trials", [c for name, runs in tuning.trials_by_family(base, trials, dense).items() if name != "dense trials"
                          for c in runs]
    selected, _ = tuning.tune(base, trials)
    finals = accuracy.claim_families(base, seeds, first["ACCURACY_SEEDS"], selected)
    spurious = {}
    if capabilities(first["DATASET"])["background_swap"]:
        wanted = [(rho, name) for rho in occlusion_params["RHOS"] for name in occlusion_params["BACKGROUND_MODELS"]]
        wanted += [(quality_params["RHO"], name) for name in (common.DENSE, common.PAPER)]   # notebook 05's spurious split
        for rho, name in dict.fromkeys(wanted):
            spurious[f"{name}, rho={rho}"] = common.family(base.replace(background_label_correlation=rho), seeds, [name],
                                                          selected)[name]
    sweep = sparsity.sweep_configs(base, sweep_params["SWEEP"], sweep_params["SWEEP_SEED"], recipe=selected["dense"])
    yield "final models", [c for group in (finals, sweep, spurious) for runs in group.values() for c in runs]
    fitting = {name: runs for name, runs in {**finals, **spurious}.items()
               if all(convergence.fits(config, training_history(config)[-1]) for config in runs)}
    yield "longer runs", [c for runs in convergence.longer_runs(fitting).values() for c in runs]


def warm(profile: str, jobs: int = 1, parameters_for: Callable[[str, str], dict] = parameters) -> int:
    """Train every model of ``profile`` that the cache lacks (``phases``), ``jobs`` at a time;
    returns how many were trained. Prints one line per phase and per model trained."""
    check_count("jobs", jobs, 1)
    trained = 0
    for phase, configs in phases(profile, parameters_for):
        unique = list({config.digest(): config for config in configs}.values())
        missing = [config for config in unique if not is_cached(config)]
        print(f"[ersm warm] {profile}: {phase}: {len(unique)} models, {len(unique) - len(missing)} in the cache, "
              f"training {len(missing)} with {jobs} job(s)", flush=True)
        started = time.perf_counter()
        for done, line in enumerate(_train(missing, jobs), start=1):
            print(f"[ersm warm]   {done}/{len(missing)} {line} ({(time.perf_counter() - started) / 60:.1f} min)", flush=True)
        trained += len(missing)
    return trained


def status(profile: str, parameters_for: Callable[[str, str], dict] = parameters) -> list[tuple[str, int, int]]:
    """``(phase, models in the cache, models)`` for each phase of ``profile`` up to the first one
    that is not complete; trains nothing (a later phase is built only from a complete one)."""
    rows = []
    for phase, configs in phases(profile, parameters_for):
        unique = list({config.digest(): config for config in configs}.values())
        done = sum(map(is_cached, unique))
        rows.append((phase, done, len(unique)))
        if done < len(unique):
            break
    return rows


def _train(configs: list[TrainConfig], jobs: int) -> Iterator[str]:
    if jobs == 1 or len(configs) <= 1:
        yield from map(_train_one, [config.to_dict() for config in configs])
        return
    with ProcessPoolExecutor(max_workers=min(jobs, len(configs)), mp_context=get_context("spawn")) as pool:
        yield from pool.map(_train_one, [config.to_dict() for config in configs])


def _train_one(values: dict) -> str:
    config = from_dict(values)
    get_model(config, progress=False)
    return f"{config.model} seed {config.seed} (config {config.digest()})"

