"""Which verdict rules the ``full`` run applies, and how they came to be (``docs/rules.md``).

The notebooks print :func:`applied_text` beside their verdicts, so a reader sees at once which
version of the rules a verdict follows and that it is not the version first written.

Why this is needed: rules v2 was written on 2026-11-23 (``V2_DATE``; its text as the ``full``
run began is that of commit ``V2_COMMIT``). The training engine (``ersm/engine.py``) scored the
``test`` split after every epoch of every ``full`` model and wrote the test accuracy and, for
the ERSM models, the test-split mask statistics into ``models/full``. Every change to v2 since
was made after those test scores existed, whether or not anyone read them, and one of them
(v2.4) after claim 01's test verdicts had been read. ``docs/rules.md`` keeps v2 as it was
and records each change as a dated, numbered amendment: its date, commit, the text it changed,
why, and what had been seen. The ``full`` run applies v2 with all of them (``VERSION``), and it
is exploratory for that reason; a confirmatory run under frozen rules v3 is the next step
(issue 30).

``AMENDMENTS`` lists the amendments in the order they were made, one
:class:`Amendment` ``(version, date, summary, after_test_data)`` each, where ``after_test_data``
says whether the amendment was made after test scores of the ``full`` models existed.
``tests/test_rules_history.py`` checks that every entry has a heading in ``docs/rules.md`` with
the same version and date, and the other way round.
"""
from __future__ import annotations

from typing import NamedTuple

V2_DATE = "2026-11-23"
V2_COMMIT = "63b4115"
RULES_PAGE = "docs/rules.md"


class Amendment(NamedTuple):
    version: str
    date: str
    summary: str
    after_test_data: bool


AMENDMENTS: tuple[Amendment, ...] = (
    Amendment("v2.1", "2026-12-01",
              "convergence condition 1 reads a Cutout model's cross-entropy on its training images "
              "without augmentation", True),
    Amendment("v2.2", "2026-12-01",
              "convergence condition 2 read strictly, in whole validation images (a change of exactly "
              "5 of 1,000 is not stable)", True),
    Amendment("v2.3", "2026-12-01",
              "convergence condition 2 becomes an exact McNemar test (p >= 0.001) of seed 1's 1.5x-longer "
              "run, replacing the 0.5-point bar on seed 0", True),
    Amendment("v2.4", "2026-12-01",
              "claim 01: dense and the ERSM variants at seeds 0-9 (ACCURACY_SEEDS), set once from the "
              "5-seed run's s after its verdicts were seen", True),
)

VERSION = AMENDMENTS[-1].version


def applied_text() -> str:
    """One sentence naming the rules the ``full`` verdicts apply, for the notebooks to print.

    >>> applied_text()
    'rules v2.4 (v2 of 2026-11-23, amended v2.1-v2.4 after test scores existed; docs/rules.md)'
    """
    after = [a.version for a in AMENDMENTS if a.after_test_data]
    before = [a.version for a in AMENDMENTS if not a.after_test_data]
    parts = [f"v2 of {V2_DATE}"]
    if before:
        parts.append(f"amended {_span(before)} before test scores existed")
    if after:
        parts.append(f"amended {_span(after)} after test scores existed")
    return f"rules {VERSION} ({', '.join(parts)}; {RULES_PAGE})"


def _span(versions: list[str]) -> str:
    """``"v2.1-v2.4"`` for a run of consecutive amendments, else the versions listed."""
    order = [a.version for a in AMENDMENTS]
    first = order.index(versions[0])
    if len(versions) > 1 and order[first:first + len(versions)] == versions:
        return f"{versions[0]}-{versions[-1]}"
    return ", ".join(versions)
