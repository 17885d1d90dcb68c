"""docs/design.md's package layout names every module of ersm/ (issue 33: the layout had drifted)."""
import re

from ersm.paths import repo_root


def layout_block() -> str:
    text = (repo_root() / "docs" / "design.md").read_text()
    match = re.search(r"## Package layout\n+```\n(.*?)```", text, re.S)
    assert match, "docs/design.md has no '## Package layout' code block"
    return match.group(1)


def named(block: str) -> set[str]:
    return set(re.findall(r"[\w]+\.py|[\w]+/", block))


def test_every_module_and_subpackage_is_in_the_layout():
    package = repo_root() / "ersm"
    on_disk = {p.name for p in package.glob("*.py")} | {f"{p.name}/" for p in package.iterdir()
                                                           if p.is_dir() and not p.name.startswith("__")}
    missing = sorted(on_disk - named(layout_block()))
    assert not missing, f"docs/design.md's package layout does not name {missing}"


def test_a_module_missing_from_the_layout_is_caught():
    block = layout_block().replace("hardening.py", "")
    assert "hardening.py" not in named(block)
