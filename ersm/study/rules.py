"""Which verdict rules the ``full`` run applies, and how they came to be (``docs/rules.md``).

The notebooks print :func:`applied_text` beside their verdicts, so a reader sees at once which
version of the rules a verdict follows and that it is not the version first written.

Why this is needed: rules v2 was written on 2026-11-23 (``V2_DATE``; its text as the ``full``
run began is that of commit ``V2_COMMIT``). The training engine (``ersm/training/engine.py``) scored the
``test`` split after every epoch of every ``full`` model and wrote the test accuracy and, for
the ERSM models, the test-split mask statistics into ``models/full``. Every change to v2 since
was made after those test scores existed, whether or not anyone read them, and one of them
(v2.4) after claim 01's test verdicts had been read. ``docs/rules.md`` keeps v2 as it was
and records each change as a dated, numbered amendment: its date, commit, the text it changed,
why, and what had been seen. The ``full`` run applies v2 with all of them (``VERSION``), and it
is exploratory for that reason; a confirmatory run under frozen rules v3 is the next step
(issue 30).

**Rules v3** (``docs/rules.md#rules-v3-confirmatory``) governs the confirmatory ``confirm``
run. It was written and frozen on 2026-12-04 (``V3_DATE``), before any model of that run was
trained. The frozen text is everything from ``V3_BEGIN`` to ``V3_END`` in ``docs/rules.md``,
markers included, as UTF-8 bytes; its SHA-256 is ``V3_SHA256``. :func:`check_v3_frozen` refuses
any other text (``RulesChanged``, naming both hashes), and the ``confirm`` profile calls it
before a notebook runs and before the sealed test split opens. A change to v3 is an amendment
below ``V3_END`` (``V3_AMENDMENTS``), never an edit between the markers.

``AMENDMENTS`` lists the amendments in the order they were made, one
:class:`Amendment` ``(version, date, summary, after_test_data)`` each, where ``after_test_data``
says whether the amendment was made after test scores of the ``full`` models existed.
``tests/test_rules_history.py`` checks that every entry has a heading in ``docs/rules.md`` with
the same version and date, and the other way round.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

V3_DATE = "2026-12-04"
V3_COMMIT = "14228d8"  # the commit that froze the text (its own commit, before any confirm model trained)
V3_SHA256 = "195d6440f3f85985af904f40ef07915a188e9548e3a1211930c58cabc59b26ee"
V3_BEGIN, V3_END = "<!-- rules-v3:begin -->", "<!-- rules-v3:end -->"
V3_ANCHOR = "rules-v3-confirmatory"
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


# ------------------------------------------------------------------------------- rules v3
class RulesChanged(RuntimeError):
    """The text of rules v3 differs from the frozen one (or cannot be found)."""


V3_AMENDMENTS: tuple[Amendment, ...] = ()
V3_VERSION = V3_AMENDMENTS[-1].version if V3_AMENDMENTS else "v3"


def rules_page(root: Path | None = None) -> Path:
    """``docs/rules.md`` of the checkout at ``root``; by default the checkout this package runs
    from (the rules belong to the source, not to ``ERSM_HOME``), else ``ersm.paths.repo_root()``."""
    if root is None:
        from ersm.paths import PACKAGE_DIR, is_checkout, repo_root
        root = PACKAGE_DIR.parent if is_checkout(PACKAGE_DIR.parent) else repo_root()
    return Path(root) / RULES_PAGE


def v3_text(page_text: str) -> str:
    """The frozen part of rules v3 in ``page_text``: from ``V3_BEGIN`` to ``V3_END``, markers included."""
    if page_text.count(V3_BEGIN) != 1 or page_text.count(V3_END) != 1:
        raise RulesChanged(f"{RULES_PAGE} must hold each of the markers {V3_BEGIN} and {V3_END} exactly once; it holds "
                           f"them {page_text.count(V3_BEGIN)} and {page_text.count(V3_END)} times")
    begin, end = page_text.index(V3_BEGIN), page_text.index(V3_END)
    if end < begin:
        raise RulesChanged(f"{RULES_PAGE}: {V3_END} comes before {V3_BEGIN}")
    return page_text[begin:end + len(V3_END)]


def v3_digest(page_text: str) -> str:
    """SHA-256 (hex) of the frozen part of rules v3 in ``page_text``."""
    return hashlib.sha256(v3_text(page_text).encode("utf-8")).hexdigest()


def check_v3_frozen(root: Path | None = None) -> str:
    """Return ``V3_SHA256`` if ``docs/rules.md`` holds the frozen text of rules v3; else raise
    :class:`RulesChanged` naming the frozen hash and the one found."""
    page = rules_page(root)
    try:
        text = page.read_text(encoding="utf-8")
    except OSError as error:
        raise RulesChanged(f"the confirm profile needs {page} (rules v3, frozen with sha256 {V3_SHA256}) and cannot "
                           f"read it ({error}); run it from a checkout of the repository") from error
    found = v3_digest(text)
    if found != V3_SHA256:
        raise RulesChanged(f"rules v3 in {page} has sha256 {found}, but the text frozen on {V3_DATE} has sha256 "
                           f"{V3_SHA256}: the confirm profile runs only under the frozen rules. Restore the text "
                           f"between {V3_BEGIN} and {V3_END}, and write any change as an amendment below it")
    return found


def v3_applied_text() -> str:
    """One sentence naming the rules the ``confirm`` verdicts apply, for the notebooks to print."""
    amended = f", amended {_v3_span()}" if V3_AMENDMENTS else ", not amended"
    return f"rules {V3_VERSION} (frozen {V3_DATE} in commit {V3_COMMIT}, sha256 {V3_SHA256[:12]}{amended}; {RULES_PAGE}#{V3_ANCHOR})"


def _v3_span() -> str:
    return ", ".join(f"{a.version} of {a.date}" for a in V3_AMENDMENTS)
