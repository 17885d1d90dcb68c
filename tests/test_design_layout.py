"""docs/design.md's package layout names every module of ersm/ (issue 33: the layout had drifted).

The layout is a tree: a line's indent (two spaces a level) puts it under the folder above it.
A subpackage whose layout lists children must list every module in it; one listed alone
(``data/``, ``metrics/``, ``experiments/``) is described in prose instead.
"""
import re

from ersm.paths import repo_root

ENTRY = re.compile(r"[\w]+\.py|[\w]+/")


def layout_block() -> str:
    text = (repo_root() / "docs" / "design.md").read_text()
    match = re.search(r"## Package layout\n+```\n(.*?)```", text, re.S)
    assert match, "docs/design.md has no '## Package layout' code block"
    return match.group(1)


def named(block: str) -> set[str]:
    """Every path the layout names, relative to the repository (``ersm/study/tuning.py``)."""
    paths, parents = set(), {}
    for line in block.splitlines():
        stripped = line.lstrip(" ")
        level = (len(line) - len(stripped)) // 2
        head = re.match(r"((?:[\w.]+/?(?:, )?)+)", stripped)   # the names before the description
        if not stripped or not head or line.startswith(" " * (2 * level + 1)):
            continue                                              # a wrapped description line
        parent = parents.get(level - 1, "") if level else ""
        for name in ENTRY.findall(head.group(1)):
            paths.add(parent + name)
            if name.endswith("/"):
                parents[level] = parent + name
    return paths


def on_disk() -> set[str]:
    """Every module of ersm/ the layout must name: top-level modules and folders, and the modules of
    each subpackage whose layout lists its children."""
    package = repo_root() / "ersm"
    wanted = {f"ersm/{p.name}" for p in package.glob("*.py")}
    wanted |= {f"ersm/{p.name}/" for p in package.iterdir() if p.is_dir() and not p.name.startswith("__")}
    listed = named(layout_block())
    for folder in sorted(w for w in wanted if w.endswith("/")):
        if any(path.startswith(folder) and path != folder for path in listed):
            wanted |= {f"{folder}{p.name}" for p in (repo_root() / folder).glob("*.py") if p.name != "__init__.py"}
            wanted |= {f"{folder}{p.name}/" for p in (repo_root() / folder).iterdir()
                       if p.is_dir() and not p.name.startswith("__")}
    return wanted


def test_every_module_and_subpackage_is_in_the_layout():
    missing = sorted(on_disk() - named(layout_block()))
    assert not missing, f"docs/design.md's package layout does not name {missing}"


def test_the_layout_names_no_module_that_is_gone():
    gone = sorted(path for path in named(layout_block()) if path.startswith("ersm/")
                  and not (repo_root() / path).exists())
    assert not gone, f"docs/design.md's package layout names {gone}, which ersm/ does not have"


def test_a_module_missing_from_the_layout_is_caught():
    block = layout_block().replace("hardening.py", "")
    assert "ersm/compute/hardening.py" in named(layout_block())
    assert "ersm/compute/hardening.py" not in named(block)


def test_a_module_listed_under_the_wrong_folder_is_caught():
    block = layout_block().replace("    tuning.py ", "  tuning.py   ")
    assert "ersm/tuning.py" in named(block) and "ersm/study/tuning.py" not in named(block)
