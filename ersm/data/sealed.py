"""The confirmatory run's sealed test split: composed with a seed no earlier run used, readable
only after the claim notebooks open it under the frozen rules v3 (``docs/rules.md``).

Rules v3 fixes the ``confirm`` run's test images before any of its models trains: the 1,000
held-out test digits of the cluttered-digits benchmark, composed anew (positions, scales,
backgrounds, clutter) with ``CONFIRM_TEST_SEED``. Every earlier test split was composed with
``data_seed + 1`` (seed 1); the digit identities are the same ones the exploratory run scored.

A config names this split with ``test_seed=CONFIRM_TEST_SEED`` (``ersm.config.TrainConfig``;
the field never enters the model's hash, since training never reads the test split). The
split functions of ``ersm.data.splits`` refuse to compose it (:class:`SealedTestSplit`, naming
the split and the seed) until :func:`open_test_split` has run in the process. That call:

- accepts only the ``confirm`` profiles (``ersm.profiles.CONFIRM_PROFILES``);
- checks the text of rules v3 against its frozen hash first (``ersm.rules.check_v3_frozen``);
- returns a record (time, notebook, rules hash, test seed) for the notebook's provenance.

Once the split is open in a process, ``ersm.train.get_model`` trains nothing more: the
``confirm`` run trains every model (``ersm warm``) before its test images are read, so a
missing model is an error there, not a silent training run. The training engine refuses a
test split of any kind (``ersm.engine.fit``), and ``tests/test_test_split_sealed.py`` shows
that no training, tuning or convergence path can read this one.
"""
from __future__ import annotations

import datetime

CONFIRM_TEST_SEED = 20261204
SEALED_TEST_SEEDS = frozenset({CONFIRM_TEST_SEED})

_opened: dict | None = None


class SealedTestSplit(PermissionError):
    """Something asked for a sealed test split that no claim notebook has opened in this process,
    or asked to train after it was opened."""


def is_sealed(config) -> bool:
    """Whether ``config``'s test split is a sealed one (its ``test_seed`` is in :data:`SEALED_TEST_SEEDS`)."""
    return getattr(config, "test_seed", None) in SEALED_TEST_SEEDS


def is_open() -> bool:
    """Whether :func:`open_test_split` has run in this process."""
    return _opened is not None


def check_readable(config, split: str) -> None:
    """Raise :class:`SealedTestSplit` if ``split`` of ``config`` is the sealed test split and it is not open."""
    if split == "test" and is_sealed(config) and not is_open():
        raise SealedTestSplit(
            f"split='test' with test_seed={config.test_seed} is the confirm run's sealed test split (rules v3): no "
            f"training, tuning or convergence code may read it. Only the claim notebooks open it, under a confirm "
            f"profile, with ersm.data.sealed.open_test_split(...), after every model of the run is trained")


def check_may_train(config) -> None:
    """Raise :class:`SealedTestSplit` if the sealed test split is open in this process: training ends before it opens."""
    if is_open():
        raise SealedTestSplit(
            f"the sealed test split is open in this process ({_opened['notebook']}), so no model may train here, but "
            f"{config.model} seed {config.seed} (config {config.digest()}) is not in the cache. The confirm run trains "
            f"every model before its test split opens: run `python -m ersm warm --profile {_opened['profile']}` first")


def open_test_split(profile: str, notebook: str) -> dict:
    """Open the sealed test split in this process for ``notebook`` under ``profile``; returns the
    record for the provenance: ``{"opened_utc", "profile", "notebook", "test_seed", "rules_sha256"}``.

    Raises ``ValueError`` for a profile that is not a confirm profile, and
    ``ersm.rules.RulesChanged`` when rules v3 differs from its frozen text.
    """
    global _opened
    from ersm.profiles import CONFIRM_PROFILES
    from ersm.rules import check_v3_frozen

    if profile not in CONFIRM_PROFILES:
        raise ValueError(f"profile={profile!r} may not open the sealed test split; only {sorted(CONFIRM_PROFILES)} may")
    if not isinstance(notebook, str) or not notebook:
        raise ValueError(f"notebook={notebook!r} must name the claim notebook that opens the split")
    digest = check_v3_frozen()
    record = {"opened_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "profile": profile, "notebook": notebook, "test_seed": CONFIRM_TEST_SEED, "rules_sha256": digest}
    _opened = record
    return dict(record)


def close_test_split() -> None:
    """Seal the split again in this process (for tests)."""
    global _opened
    _opened = None
