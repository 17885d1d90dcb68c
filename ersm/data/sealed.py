"""The confirmatory run's sealed test split: composed with a seed no earlier run used, readable
only after the claim notebooks open it under the frozen rules v3 (``docs/rules.md``).

Rules v3 fixes the ``confirm`` run's test images before any of its models trains: the 1,000
held-out test digits of the cluttered-digits benchmark, composed anew (positions, scales,
backgrounds, clutter) with ``CONFIRM_TEST_SEED``. Every earlier test split was composed with
``data_seed + 1`` (seed 1); the digit identities are the same ones the exploratory run scored.

A config names this split with ``test_seed=CONFIRM_TEST_SEED`` (``ersm.training.config.TrainConfig``;
the field never enters the model's hash, since training never reads the test split). The
digit generator refuses to compose a test split with a sealed seed, however it is reached
(``ClutteredDigits("test", ..., seed=CONFIRM_TEST_SEED)``, or a config whose ``data_seed + 1``
is that seed), and the split functions refuse it too, naming the split and the seed
(:class:`SealedTestSplit`), until :func:`open_test_split` has run in the process. That call:

- accepts only the ``confirm`` profiles (``ersm.study.profiles.CONFIRM_PROFILES``);
- checks the text of rules v3 against its frozen hash first (``ersm.study.rules.check_v3_frozen``);
- checks that every phase of the study is trained (``ersm.study.plan.status``);
- appends a record (time, profile, notebook, rules hash, test seed) to the study's ledger,
  ``results/<profile>/test_split_openings.jsonl`` (:func:`ledger`), which is committed with the
  results, and returns it for the notebook's provenance.

From then on nothing trains: in the process, ``ersm.training.cache.get_model`` refuses to train; in any
later process, ``ersm warm`` refuses a study whose ledger exists (:func:`check_not_opened`). The training engine refuses a
test split of any kind (``ersm.training.engine.fit``), and ``tests/test_test_split_sealed.py`` shows
that no training, tuning or convergence path can read this one.
"""
from __future__ import annotations

import datetime
import json

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


def check_seed_readable(split: str, seed: int) -> None:
    """Raise :class:`SealedTestSplit` if a ``split="test"`` composed with ``seed`` is sealed and not open."""
    if split == "test" and seed in SEALED_TEST_SEEDS and not is_open():
        raise SealedTestSplit(_refusal(f"seed {seed}"))


def ledger(profile: str):
    """The study's record of test-split openings: ``results/<profile>/test_split_openings.jsonl``."""
    from ersm.paths import results_dir
    return results_dir(profile) / "test_split_openings.jsonl"


def check_not_opened(profile: str) -> None:
    """Raise :class:`SealedTestSplit` if the study's test split has been opened (its ledger exists):
    no model of a study may train after its test images were read."""
    path = ledger(profile)
    if path.exists():
        raise SealedTestSplit(f"{profile}: the sealed test split was opened ({path} records it), so no model of this "
                              f"study may train any more; a new study needs new rules and a new test seed")


def check_readable(config, split: str) -> None:
    """Raise :class:`SealedTestSplit` if ``split`` of ``config`` is the sealed test split and it is not open."""
    if split == "test" and is_sealed(config) and not is_open():
        raise SealedTestSplit(_refusal(f"test_seed={config.test_seed}"))


def _refusal(composed_with: str) -> str:
    return (f"split='test' with {composed_with} is the confirm run's sealed test split (rules v3): no training, tuning or "
            f"convergence code may read it. Only the claim notebooks open it, under a confirm profile, with "
            f"ersm.data.sealed.open_test_split(...), after every model of the run is trained")


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
    ``ersm.study.rules.RulesChanged`` when rules v3 differs from its frozen text.
    """
    global _opened
    from ersm.paths import atomic_write_text
    from ersm.study.plan import status
    from ersm.study.profiles import CONFIRM_PROFILES
    from ersm.study.rules import check_v3_frozen

    if profile not in CONFIRM_PROFILES:
        raise ValueError(f"profile={profile!r} may not open the sealed test split; only {sorted(CONFIRM_PROFILES)} may")
    if not isinstance(notebook, str) or not notebook:
        raise ValueError(f"notebook={notebook!r} must name the claim notebook that opens the split")
    digest = check_v3_frozen()
    phases = status(profile)
    unfinished = [f"{phase}: {done} of {total}" for phase, done, total in phases if done < total]
    if unfinished or not phases or phases[-1][0] != "longer runs":
        raise SealedTestSplit(f"{profile}: every model of the study must be trained before its test split opens; "
                              f"not yet: {unfinished or 'the later phases'} (run `python -m ersm warm --profile {profile}`)")
    record = {"opened_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "profile": profile, "notebook": notebook, "test_seed": CONFIRM_TEST_SEED, "rules_sha256": digest}
    path = ledger(profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = path.read_text() if path.exists() else ""
    atomic_write_text(path, previous + json.dumps(record, sort_keys=True) + "\n")
    _opened = record
    return dict(record)


def _reset_for_tests() -> None:
    """Seal the split again in this process; for the tests alone (an opened study stays opened on disk)."""
    global _opened
    _opened = None
