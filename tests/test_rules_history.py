"""docs/rules.md tells its own history: one heading per amendment in ersm/study/rules.py, and back.

Rules v2 is kept as it was when the ``full`` run began; every later change is a dated, numbered
amendment (``ersm.study.rules.AMENDMENTS``). These tests parse the page's Markdown headings and check
that the page and the module agree, that the false sentence about the test split is gone, and
that every link into the page from the repository lands on a heading that exists.
"""
import json
import re
from pathlib import Path

import pytest

from ersm.study import rules

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "rules.md"
FALSE_SENTENCE = "before any `full` model was scored on the test split"
AMENDMENT_HEADING = re.compile(r"^(v2\.\d+)\b")
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def headings(text: str) -> list[str]:
    """The text of every ATX heading (``#`` to ``######``) outside fenced code blocks."""
    found, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match and not fenced:
            found.append(match.group(1))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in headings(text):
        base = slug(heading)
        count = seen.get(base, 0)
        out.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return out


def amendment_headings(text: str) -> list[tuple[str, list[str]]]:
    """``(version, dates)`` of every heading that starts with an amendment number, in order."""
    out = []
    for heading in headings(text):
        match = AMENDMENT_HEADING.match(heading)
        if match:
            out.append((match.group(1), DATE.findall(heading)))
    return out


@pytest.fixture(scope="module")
def page() -> str:
    return PAGE.read_text(encoding="utf-8")


def test_every_amendment_has_a_heading_with_its_version_and_date(page):
    found = amendment_headings(page)
    for amendment in rules.AMENDMENTS:
        matching = [dates for version, dates in found if version == amendment.version]
        assert len(matching) == 1, f"{amendment.version}: {len(matching)} headings in docs/rules.md, expected 1"
        assert matching[0] == [amendment.date], \
            f"{amendment.version}: heading dates {matching[0]}, ersm/study/rules.py says {amendment.date}"


def test_every_amendment_heading_is_in_the_module_in_the_same_order(page):
    assert [version for version, _ in amendment_headings(page)] == [a.version for a in rules.AMENDMENTS]


def test_amendments_are_numbered_in_order_and_dated_in_order():
    versions = [a.version for a in rules.AMENDMENTS]
    assert versions == [f"v2.{i}" for i in range(1, len(versions) + 1)]
    dates = [a.date for a in rules.AMENDMENTS]
    assert all(DATE.fullmatch(d) for d in dates) and dates == sorted(dates)
    assert all(d > rules.V2_DATE for d in dates)
    assert rules.VERSION == versions[-1]


def test_the_false_sentence_is_gone(page):
    assert FALSE_SENTENCE not in page


def test_applied_text_names_the_version_v2_and_the_page():
    text = rules.applied_text()
    assert text.startswith(f"rules {rules.VERSION} (v2 of {rules.V2_DATE}")
    assert "after test scores existed" in text and text.endswith("docs/rules.md)")
    assert f"{rules.AMENDMENTS[0].version}-{rules.VERSION}" in text


def _linking_files():
    yield ROOT / "README.md"
    yield from sorted((ROOT / "docs").glob("*.md"))
    yield from sorted((ROOT / "ersm").rglob("*.py"))
    yield from sorted((ROOT / "notebooks").glob("*.ipynb"))
    yield from sorted((ROOT / "results").glob("*/*.ipynb"))


def test_links_into_the_rules_page_land_on_a_heading(page):
    targets = anchors(page)
    broken = []
    for path in _linking_files():
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".ipynb":  # the cells' text, unescaped
            text = "\n".join("".join(cell.get("source", [])) + "".join(
                "".join(out.get("text", [])) for out in cell.get("outputs", []))
                for cell in json.loads(text)["cells"])
        pattern = r"\(#([\w\-]+)\)" if path == PAGE else r"rules\.md#([\w\-]+)"
        for anchor in re.findall(pattern, text):
            if anchor not in targets:
                broken.append(f"{path.relative_to(ROOT)}: #{anchor}")
    assert not broken, "links to missing headings of docs/rules.md:\n" + "\n".join(broken)


# ------------------------------------------------------------------------------- rules v3
def test_rules_v3_is_the_frozen_text(page):
    assert rules.v3_digest(page) == rules.V3_SHA256
    assert rules.check_v3_frozen(ROOT) == rules.V3_SHA256


@pytest.mark.parametrize("edit", [
    lambda t: t.replace("margin 1 point", "margin 1.5 points", 1),      # a rule changed
    lambda t: t.replace("9 seeds", "9 seeds ", 1),                      # one space
    lambda t: t.replace(rules.V3_END, "", 1),                           # a marker lost
    lambda t: t.replace(rules.V3_BEGIN, rules.V3_BEGIN + rules.V3_BEGIN, 1),  # a marker doubled
])
def test_an_edited_rules_v3_is_refused_naming_both_hashes(page, tmp_path, edit):
    edited = edit(page)
    assert edited != page
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "rules.md").write_text(edited, encoding="utf-8")
    with pytest.raises(rules.RulesChanged) as raised:
        rules.check_v3_frozen(tmp_path)
    message = str(raised.value)
    assert rules.V3_SHA256 in message or "exactly once" in message
    if edited.count(rules.V3_BEGIN) == 1 and edited.count(rules.V3_END) == 1:
        assert rules.v3_digest(edited) in message


def test_an_amendment_below_the_end_marker_keeps_the_frozen_text(page, tmp_path):
    (tmp_path / "docs").mkdir()
    amended = page.replace("## Amendments to v3\n\nNone.", "## Amendments to v3\n\n### v3.1 (2027-01-01): an example")
    (tmp_path / "docs" / "rules.md").write_text(amended, encoding="utf-8")
    assert rules.check_v3_frozen(tmp_path) == rules.V3_SHA256


def test_a_checkout_without_the_rules_page_is_refused_with_the_path(tmp_path):
    with pytest.raises(rules.RulesChanged, match="rules.md"):
        rules.check_v3_frozen(tmp_path)


def test_v3_applied_text_names_version_date_hash_and_anchor(page):
    text = rules.v3_applied_text()
    assert text.startswith(f"rules {rules.V3_VERSION} (frozen {rules.V3_DATE} in commit {rules.V3_COMMIT}, "
                           f"sha256 {rules.V3_SHA256[:12]}")
    assert text.endswith(f"docs/rules.md#{rules.V3_ANCHOR})") and rules.V3_ANCHOR in anchors(page)


def test_the_freezing_commit_holds_the_frozen_text_and_no_confirm_model():
    """V3_COMMIT froze v3: its docs/rules.md has the frozen hash, and it is an ancestor of HEAD."""
    import subprocess
    try:
        page = subprocess.run(["git", "show", f"{rules.V3_COMMIT}:docs/rules.md"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout
        ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", rules.V3_COMMIT, "HEAD"], cwd=ROOT).returncode
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout with its history")
    assert rules.v3_digest(page) == rules.V3_SHA256 and ancestor == 0
    tree = subprocess.run(["git", "ls-tree", "-r", "--name-only", rules.V3_COMMIT], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.split()
    assert not any(path.startswith("models/confirm/") for path in tree)
