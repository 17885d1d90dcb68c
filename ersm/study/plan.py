"""Every model a profile's notebooks train, phase by phase, and ``warm``: train them ahead of the notebooks.

The notebooks train what they need through the cache (``ersm.training.cache.get_model``), one model at a
time. ``ersm warm --profile P`` trains the same models first, several at once with ``--jobs N``
(on a GPU, where small CNNs are bound by kernel launches and several processes share the card),
so that ``ersm reproduce --profile P`` afterwards only loads them. A test runs ``warm`` and then
the notebooks on fixture data and checks that the notebooks trained nothing more.

The phases follow the notebooks and build their configs with the same functions:

1. ``dense trials``: the tuning trials of dense (``ersm.study.tuning``), which choose the shared recipe;
2. ``ERSM trials``: every ERSM family's trials with that recipe;
3. ``final models``: every family at its selection and every seed (notebook 01, with dense and
   the ERSM variants at its ``ACCURACY_SEEDS``; 02-05 use subsets of them), notebook 02's sweep, and notebook 03's spurious-split families at each rho
   where the dataset has backgrounds to swap, and notebook 05's (``RHO``, dense and the paper's
   layer; in every profile one of 03's);
4. ``longer runs``: the convergence rule's 1.5x-longer run of each family whose seeds all fit
   (``ersm.study.convergence.fit_cross_entropy``; ``ersm.study.convergence.assess`` trains it in notebooks 01
   and 03; families that do not fit get none).

A phase reads the cache that the phases before it filled, so it is built only when they are
done. ``jobs > 1`` trains in worker processes (spawned, so CUDA works); each keeps the fixed
thread count of ``ersm.training.seeding`` (so weights do not depend on ``jobs``), which oversubscribes a
small CPU: on the CPU use one job.
"""
from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Callable, Iterator

from ersm.study import convergence, tuning
from ersm.checks import check_count
from ersm.training.config import TrainConfig, from_dict
from ersm.experiments import accuracy, deletion, mask_quality, occlusion, sparsity
from ersm.study.setup import base_of
from ersm.training.cache import get_model, is_cached, training_history
from ersm.study.profiles import CONFIRM_PROFILES, PROFILE_NAMES, parameters

NOTEBOOK_PARAMETERS = ("01_training", "02_emergent_sparsity", "03_occlusion_robustness", "04_deletion_vs_magnitude",
                       "05_mask_quality")


def phases(profile: str, parameters_for: Callable[[str, str], dict] = parameters) -> Iterator[tuple[str, list[TrainConfig]]]:
    """``(phase name, configs)`` in training order; each phase is built after the previous one is trained.
    The final models are the union of the five claim modules' ``configs`` (what each notebook trains).
    A confirmatory profile's phases are rules v3's (``ersm.study.confirm.phases``)."""
    if profile in CONFIRM_PROFILES:
        from ersm.study import confirm
        yield from confirm.phases(profile)
        return
    if profile not in PROFILE_NAMES:
        raise ValueError(f"profile={profile!r} is unknown; choose one of {list(PROFILE_NAMES) + list(CONFIRM_PROFILES)}")
    params = {stem: parameters_for(stem, profile) for stem in NOTEBOOK_PARAMETERS}
    first = params["01_training"]
    base, trials = base_of(first), first["TUNING_TRIALS"]
    for stem, given in params.items():
        if base_of(given) != base or given["SEEDS"] != first["SEEDS"] or given["TUNING_TRIALS"] != trials:
            raise ValueError(f"{stem} has other base parameters than 01_training for profile={profile!r}; "
                             f"the notebooks must share their models")
    yield "dense trials", tuning.trial_configs(base, "dense", trials)
    dense, _ = tuning.tune(base, trials, families=())
    yield "ERSM trials", [c for name, runs in tuning.trials_by_family(base, trials, dense).items() if name != "dense trials"
                          for c in runs]
    selected, _ = tuning.tune(base, trials)
    finals = accuracy.configs(base, first, selected)
    sparsity_families, sweep = sparsity.configs(base, params["02_emergent_sparsity"], selected)
    occlusion_families, spurious_by_rho = occlusion.configs(base, params["03_occlusion_robustness"], selected)
    deletion_families = deletion.configs(base, params["04_deletion_vs_magnitude"], selected)
    quality_families, quality_spurious = mask_quality.configs(base, params["05_mask_quality"], selected)
    rho = params["05_mask_quality"]["RHO"]
    spurious = {f"{name}, rho={r}": runs for r, group in spurious_by_rho.items() for name, runs in group.items()}
    spurious |= {f"{name}, rho={rho}": runs for name, runs in quality_spurious.items()}
    every = [c for group in (finals, sparsity_families, sweep, occlusion_families, deletion_families, quality_families, spurious)
             for runs in group.values() for c in runs]
    yield "final models", list({c.digest(): c for c in every}.values())
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

