"""Execute the notebooks through papermill for a profile and gather their results.

``reproduce("ci")`` runs every ``notebooks/NN_*.ipynb`` with the profile's parameters into
``runs/<profile>/``, copies each executed notebook and its results JSON into ``results/<profile>/``
(where the ``full`` notebooks are committed and open in JupyterLab; ``pytest --nbval notebooks/``
never collects them) and writes ``results/<profile>/claims.md``. It never edits the README: ``ersm table --profile P --readme``
renders the README's table from every results JSON of one profile, each row with the commit
its notebook ran at, so a partial rerun (``--only 03``) cannot silently mix commits. Every notebook's parameters are checked against its
``parameters`` cell before the first one starts (papermill itself only warns).
``inplace=True`` (``ci`` only) executes the committed notebooks where they are, with their own
defaults, which is how the committed outputs are made. Each notebook's ``**Profile.**`` cell
describes the committed ``ci`` outputs; a run of another profile replaces it, in the executed
copy only, by a note naming that profile (``profile_note``).
"""
from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from typing import Callable

from ersm.paths import atomic_write_bytes, atomic_write_text, repo_root, results_dir, runs_dir, write_between_markers
from ersm.study.profiles import PROFILE_NAMES, parameters, validate
from ersm.study.verdicts import claims_markdown


def notebook_paths(notebooks_dir: Path, only: str | None = None) -> list[Path]:
    paths = sorted(p for p in notebooks_dir.glob("[0-9][0-9]_*.ipynb"))
    if only is not None:
        paths = [p for p in paths if p.name.startswith(only)]
        if not paths:
            raise ValueError(f"only={only!r} matches no notebook in {notebooks_dir}")
    return paths


def declared_parameters(path: Path) -> dict:
    """name -> default value, read from the notebook's ``parameters`` cell."""
    import papermill

    declared = papermill.inspect_notebook(str(path))
    if not declared:
        raise ValueError(f"{path.name} has no cell tagged 'parameters'")
    return {name: ast.literal_eval(info["default"]) for name, info in declared.items()}


def reproduce(profile: str, only: str | None = None, inplace: bool = False, notebooks_dir: Path | None = None,
              parameters_for: Callable[[str, str], dict] = parameters) -> Path:
    """Run the notebooks of ``profile``; returns the path of the rendered claims table."""
    import papermill

    if profile not in PROFILE_NAMES:
        raise ValueError(f"profile={profile!r} is unknown; choose one of {list(PROFILE_NAMES)}")
    if inplace and profile != "ci":
        raise ValueError(f"inplace=True only re-executes the committed ci notebooks, not profile={profile!r}")
    notebooks_dir = notebooks_dir or repo_root() / "notebooks"
    plan = []
    for path in notebook_paths(notebooks_dir, only):
        given = parameters_for(path.stem, profile)
        validate(path.stem, given, declared_parameters(path))
        if not inplace and profile != "ci":
            profile_cell_index(path)  # refused here, before the first notebook runs, not when its turn comes
        plan.append((path, given))
    out_dir = runs_dir() / profile
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, given in plan:
        output = path if inplace else out_dir / path.name
        print(f"[ersm reproduce] {profile}: {path.name} -> {output}", flush=True)
        source = path if inplace or profile == "ci" else _with_profile_note(path, profile, out_dir)
        try:
            papermill.execute_notebook(str(source), str(output), parameters={} if inplace else given,
                                       cwd=str(notebooks_dir), kernel_name="python3", progress_bar=False)
        finally:
            if source != path:
                os.unlink(source)
    return gather(profile, [path.stem for path, _ in plan], executed=not inplace)


PROFILE_CELL = "**Profile.**"


def profile_note(profile: str, stem: str) -> str:
    """The ``**Profile.**`` cell of a notebook executed for ``profile`` (not ``ci``)."""
    return (f"{PROFILE_CELL} The outputs stored here are the `{profile}` profile, run by `ersm reproduce --profile "
            f"{profile}`: its parameters are in the cell tagged `injected-parameters` below (`ersm/study/profiles.py`), and "
            f"its provenance (commit, package versions, device, CPU kernels, wall time) in `results/{profile}/{stem}.json`. "
            f"The notebook in `notebooks/` holds the `ci` outputs, a smoke test that `pytest --nbval` re-executes.")


def profile_cell_index(path: Path, book: dict | None = None) -> int:
    """The index of the one markdown cell of ``path`` that starts with ``PROFILE_CELL``; ValueError otherwise."""
    book = json.loads(path.read_text()) if book is None else book
    found = [i for i, cell in enumerate(book["cells"])
             if cell["cell_type"] == "markdown" and "".join(cell["source"]).startswith(PROFILE_CELL)]
    if len(found) != 1:
        raise ValueError(f"{path.name} has {len(found)} markdown cells starting with {PROFILE_CELL!r}; expected 1")
    return found[0]


def _with_profile_note(path: Path, profile: str, out_dir: Path) -> Path:
    """A copy of ``path`` in ``out_dir`` whose ``**Profile.**`` markdown cell is ``profile_note``."""
    book = json.loads(path.read_text())
    book["cells"][profile_cell_index(path, book)]["source"] = profile_note(profile, path.stem)
    prepared = out_dir / f".{path.stem}.input.ipynb"
    atomic_write_text(prepared, json.dumps(book, indent=1, ensure_ascii=False))
    return prepared


def gather(profile: str, notebooks: list[str], executed: bool = True) -> Path:
    """Copy the results JSON of the ``notebooks`` just executed (and, with ``executed``, the
    executed notebooks of ``runs/<profile>/``) into ``results/<profile>/``, then
    render ``claims.md`` from every results JSON there (stale files of other notebooks stay as
    they were; they carry their own commit in their provenance)."""
    source, target = runs_dir() / profile / "results", results_dir(profile)
    target.mkdir(parents=True, exist_ok=True)
    for stem in notebooks:
        path = source / f"{stem}.json"
        if not path.exists():
            raise FileNotFoundError(f"{stem} ran but wrote no results JSON at {path}")
        atomic_write_bytes(target / path.name, path.read_bytes())
        arrays = path.with_suffix(".npz")  # the per-image arrays (ersm.study.results), where the notebook wrote them
        if arrays.exists():
            atomic_write_bytes(target / arrays.name, arrays.read_bytes())
        if executed:
            notebook = source.parent / f"{stem}.ipynb"
            atomic_write_bytes(target / notebook.name, notebook.read_bytes())
    claims = target / "claims.md"
    atomic_write_text(claims, f"# Claims, profile `{profile}`\n\nGenerated by `ersm reproduce --profile {profile}`.\n\n"
                              f"{claims_table(profile)}")
    return claims


def claims_table(profile: str) -> str:
    """The claims of every results JSON in ``results/<profile>/`` as one Markdown table, followed
    by the commit each notebook ran at (``+dirty`` when its tree had uncommitted changes)."""
    if profile not in PROFILE_NAMES:
        raise ValueError(f"profile={profile!r} is unknown; choose one of {list(PROFILE_NAMES)}")
    rows, commits = [], []
    for path in sorted(results_dir(profile).glob("[0-9][0-9]_*.json")):
        record = json.loads(path.read_text())
        rows.extend(record.get("claims", []))
        provenance = record.get("provenance", {})
        commit = (provenance.get("commit") or "unknown")[:7] + ("+dirty" if provenance.get("dirty") else "")
        commits.append(f"`{path.stem}` {commit}")
    if not rows:
        return "No claims recorded yet.\n"
    distinct = {c.split()[-1] for c in commits}
    note = "one commit" if len(distinct) == 1 else f"{len(distinct)} different commits"
    return f"{claims_markdown(rows)}\nResults from {note}: {', '.join(commits)}.\n"


def update_readme(profile: str, table: str | None = None) -> Path:
    """Put ``table`` (default: ``claims_table(profile)``) between the README's
    ``<!-- claims:<profile> -->`` markers; ValueError when the README or a marker is missing."""
    table = claims_table(profile) if table is None else table
    readme = repo_root() / "README.md"
    if not readme.exists():
        raise ValueError(f"no README.md at {readme}")
    write_between_markers(readme, f"<!-- claims:{profile} -->", f"<!-- /claims:{profile} -->", table)
    return readme
