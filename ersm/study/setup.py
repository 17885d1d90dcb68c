"""The opening of every claim notebook in one call: its parameters, its results record, its base config.

The five notebooks used to copy the same block: a ``Run(...)`` with a dict of a dozen names and a
nine-argument ``base_config(...)`` (issue 33). ``setup(notebook, globals())`` reads the names
that ``ersm.study.profiles`` gives the notebook from its parameters cell, checks their types
against the ``ci`` defaults, and returns the record and the config built from them.
``base_of`` is the same config for ``ersm warm`` (``ersm.study.plan``, ``ersm.study.confirm``),
so a notebook and the plan cannot disagree about which models a profile trains.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple

from ersm.experiments.common import base_config
from ersm.study import profiles
from ersm.study.results import Run
from ersm.training.config import TrainConfig

BASE_NAMES = ("CANVAS", "N_TRAIN", "N_TEST", "EPOCHS", "DATASET", "BACKBONE", "N_VAL", "WIDTH", "DEVICE")


class Setup(NamedTuple):
    run: Run             # the results record (``run.save(payload)`` at the notebook's end)
    base: TrainConfig    # the profile's shared config; families replace fields of it
    params: dict         # the notebook's parameters by name (PROFILE included)


def base_of(params: Mapping) -> TrainConfig:
    """The base config of a profile's parameters (``BASE_NAMES``, and ``TEST_SEED`` when the profile
    seals a test split: rules v3)."""
    missing = [name for name in BASE_NAMES if name not in params]
    if params.get("PROFILE") in profiles.CONFIRM_PROFILES and "TEST_SEED" not in params:
        missing.append("TEST_SEED")  # a confirmatory base without its sealed split would score the old test images
    if missing:
        raise ValueError(f"params lacks {missing}; a base config needs {list(BASE_NAMES)} (and TEST_SEED under a "
                         f"confirm profile)")
    return base_config(params["CANVAS"], params["N_TRAIN"], params["N_TEST"], params["EPOCHS"], dataset=params["DATASET"],
                       backbone=params["BACKBONE"], n_val=params["N_VAL"], width=params["WIDTH"], device=params["DEVICE"],
                       test_seed=params.get("TEST_SEED"))


def setup(notebook: str, namespace: Mapping) -> Setup:
    """``(run, base, params)`` of ``notebook`` (its stem, e.g. ``"01_training"``) from ``namespace``,
    the notebook's ``globals()`` after its parameters cell. Refuses a missing name or a value of
    the wrong type (``ValueError``, naming both) before anything is built."""
    if namespace.get("PROFILE") in profiles.CONFIRM_PROFILES:
        raise ValueError(f"PROFILE={namespace['PROFILE']!r}: the notebooks do not take the confirmatory profiles yet "
                         f"(issue 30: the sealed test split, rules v3's families and rows); `ersm warm` trains them")
    declared = profiles.parameters(notebook, "ci")  # every profile gives a notebook the same names
    missing = [name for name in declared if name not in namespace]
    if missing:
        raise ValueError(f"{notebook}: the parameters cell lacks {missing}; the notebook's profile entries "
                         f"(ersm/study/profiles.py) name {sorted(declared)}")
    params = {name: namespace[name] for name in declared}
    profiles.validate(notebook, params, declared)
    run = Run(notebook, params["PROFILE"], {name: value for name, value in params.items() if name != "PROFILE"})
    return Setup(run, base_of(params), params)
