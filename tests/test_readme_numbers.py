"""Every result the README quotes comes from the results JSON (ersm/study/findings.py, ersm/study/reproduce.py).

The README's `full` and `ci` sections hold two rendered blocks per profile: the claims table and
the findings (headlines and controls). These tests re-render both from `results/<profile>/` and
fail, naming the README line, where the README differs. The prose around them may quote no
decimal number at all, so no result can be copied by hand."""
import re

import pytest

from ersm.study import findings
from ersm.paths import repo_root
from ersm.study.reproduce import claims_table

PROFILES = ("full", "ci")
SECTIONS = {"full": "### `full` profile", "ci": "### `ci` profile"}
RULE_CONSTANTS = {"1.5x"}  # the convergence rule's longer run: a parameter of the rule, not a result
DECIMAL = re.compile(r"(?<![\w.`/-])[-+]?\d+\.\d+x?(?![\w.`/])")


def readme() -> str:
    return (repo_root() / "README.md").read_text()


@pytest.mark.parametrize("profile", PROFILES)
def test_the_claims_table_is_what_the_results_give(profile):
    problems = findings.rendered_blocks_differ(readme(), profile, "claims", claims_table(profile))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("profile", PROFILES)
def test_the_findings_are_what_the_results_give(profile):
    problems = findings.rendered_blocks_differ(readme(), profile, "findings", findings.findings(profile))
    assert not problems, "\n".join(problems)


def prose_of(text: str, profile: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of the profile's README section, less its rendered blocks."""
    lines, inside, in_block, out = text.splitlines(), False, False, []
    for number, line in enumerate(lines, start=1):
        if line.startswith("### ") or line.startswith("## "):
            inside = line.startswith(SECTIONS[profile])
        if not inside:
            continue
        if re.match(r"<!-- (claims|findings):", line):
            in_block = True
        elif re.match(r"<!-- /(claims|findings):", line):
            in_block = False
        elif not in_block:
            out.append((number, line))
    return out


@pytest.mark.parametrize("profile", PROFILES)
def test_the_prose_quotes_no_result_by_hand(profile):
    prose = prose_of(readme(), profile)
    assert prose, f"the README has no section starting with {SECTIONS[profile]!r}"
    copied = [f"README line {n}: {m.group(0)!r} in {line.strip()!r}" for n, line in prose
              for m in DECIMAL.finditer(line) if m.group(0) not in RULE_CONSTANTS]
    assert not copied, "numbers quoted by hand (render them from the results JSON instead):\n" + "\n".join(copied)


def test_a_stale_number_is_reported_with_its_line():
    text = readme()
    block = findings.findings("full")
    first_number = DECIMAL.search(block).group(0)
    stale = text.replace(f"<!-- findings:full -->\n{block}", f"<!-- findings:full -->\n{block.replace(first_number, '99.99', 1)}")
    assert stale != text
    problems = findings.rendered_blocks_differ(stale, "full", "findings", block)
    assert len(problems) == 1 and problems[0].startswith("README line ") and "99.99" in problems[0]


def test_a_hand_copied_number_in_the_prose_is_caught():
    text = readme().replace("**The run.**", "**The run.** Dense reaches 92.2% test accuracy.", 1)
    assert any(m.group(0) == "92.2" for _, line in prose_of(text, "full") for m in DECIMAL.finditer(line))
