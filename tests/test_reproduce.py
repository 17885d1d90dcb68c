"""``ersm reproduce`` end to end on a fixture notebook, and the committed notebooks' parameters.

The fixture notebook runs in a real kernel through papermill (a few seconds), inside a
temporary ``ERSM_HOME``, so the repository's ``runs/`` and ``results/`` are never touched.
"""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from ersm.study.profiles import parameters
from ersm.study.reproduce import declared_parameters, profile_note, reproduce

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = "01_fixture"
INJECTED = {"PROFILE": "full", "SEEDS": [0, 1], "SCALE": 2.0}

PARAMETERS_CELL = 'PROFILE = "ci"\nSEEDS = [0]\nSCALE = 1.0'
CI_NOTE = "**Profile.** The outputs stored here are the `ci` profile."
# the claim's numbers are computed from the parameters, so the table shows whether they were injected
RESULTS_CELL = '''\
import ersm.study.results

value = len(SEEDS) * SCALE
ersm.study.results.Run("01_fixture", PROFILE, {"SEEDS": SEEDS, "SCALE": SCALE}).save({"claims": [dict(
    claim="fixture claim", metric="seeds times scale", baseline_name="one", baseline=1.0, ersm=value,
    difference=value - 1.0, lo=value - 1.5, hi=value - 0.5, rule="superiority", verdict="SUPPORTED")]})
print("value", value)
'''


@pytest.fixture
def notebooks(tmp_path, monkeypatch) -> Path:
    """``tmp_path/notebooks/01_fixture.ipynb`` with ERSM_HOME pointing at ``tmp_path``."""
    monkeypatch.setenv("ERSM_HOME", str(tmp_path))  # inherited by the kernel papermill starts
    folder = tmp_path / "notebooks"
    folder.mkdir()
    book = nbformat.v4.new_notebook()
    book.cells = [nbformat.v4.new_markdown_cell("# Fixture"), nbformat.v4.new_markdown_cell(CI_NOTE),
                  nbformat.v4.new_code_cell(PARAMETERS_CELL, metadata={"tags": ["parameters"]}),
                  nbformat.v4.new_code_cell(RESULTS_CELL)]
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(book, folder / f"{FIXTURE}.ipynb")
    return folder


def test_reproduce_runs_the_notebook_with_injected_parameters(notebooks, tmp_path):
    claims = reproduce("full", notebooks_dir=notebooks, parameters_for=lambda stem, profile: dict(INJECTED))

    executed = nbformat.read(tmp_path / "runs" / "full" / f"{FIXTURE}.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1
    assert "SEEDS = [0, 1]" in injected[0].source and "SCALE = 2.0" in injected[0].source
    outputs = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "value 4.0" in outputs  # 2 seeds x scale 2.0, not the defaults' 1 x 1.0

    record = json.loads((tmp_path / "results" / "full" / f"{FIXTURE}.json").read_text())
    assert record["profile"] == "full"
    assert record["parameters"] == {"SEEDS": [0, 1], "SCALE": 2.0}
    assert {"commit", "dirty", "versions", "device", "wall_seconds"} <= set(record["provenance"])
    assert record["provenance"]["versions"]["torch"]
    assert record["claims"][0]["ersm"] == 4.0
    # the executed notebook is kept beside its results, where a user opens it (and nbval never looks)
    kept = tmp_path / "results" / "full" / f"{FIXTURE}.ipynb"
    assert kept.read_bytes() == (tmp_path / "runs" / "full" / f"{FIXTURE}.ipynb").read_bytes()
    # its profile cell names the profile that ran; the notebook in notebooks/ keeps its ci note, and no copy is left
    assert executed.cells[1].source == profile_note("full", FIXTURE) and "`full` profile" in executed.cells[1].source
    assert nbformat.read(notebooks / f"{FIXTURE}.ipynb", as_version=4).cells[1].source == CI_NOTE
    assert sorted(p.name for p in (tmp_path / "runs" / "full").iterdir()) == [f"{FIXTURE}.ipynb", "results"]

    assert claims == tmp_path / "results" / "full" / "claims.md"
    table = claims.read_text()
    assert "profile `full`" in table
    row = next(line for line in table.splitlines() if "fixture claim" in line)
    assert "4.00" in row and "**SUPPORTED**" in row and "seeds times scale" in row


@pytest.mark.parametrize("given, name", [
    ({"SEEDZ": [0]}, "SEEDZ"),           # a typo papermill would only warn about
    ({"SEEDS": "0"}, "SEEDS"),           # a string where the notebook declares a list
    ({"SCALE": True}, "SCALE"),          # a bool is not a float
])
def test_bad_parameters_are_refused_before_any_notebook_runs(notebooks, tmp_path, given, name):
    with pytest.raises(ValueError, match=name):
        reproduce("full", notebooks_dir=notebooks, parameters_for=lambda stem, profile: given)
    assert not (tmp_path / "runs" / "full" / f"{FIXTURE}.ipynb").exists()


def test_int_is_accepted_for_a_float_parameter(notebooks):
    # must not raise: SCALE = 2 is a fine float (validation only; nothing is executed here)
    from ersm.study.profiles import validate

    validate(FIXTURE, {"SCALE": 2}, declared_parameters(notebooks / f"{FIXTURE}.ipynb"))


def test_unknown_profile_is_refused(notebooks):
    with pytest.raises(ValueError, match="huge"):
        reproduce("huge", notebooks_dir=notebooks, parameters_for=lambda stem, profile: {})


def test_inplace_is_refused_for_full(notebooks):
    before = (notebooks / f"{FIXTURE}.ipynb").read_bytes()
    with pytest.raises(ValueError, match="inplace"):
        reproduce("full", inplace=True, notebooks_dir=notebooks, parameters_for=lambda stem, profile: {})
    assert (notebooks / f"{FIXTURE}.ipynb").read_bytes() == before


def test_only_must_match_a_notebook(notebooks):
    with pytest.raises(ValueError, match="99"):
        reproduce("full", only="99", notebooks_dir=notebooks, parameters_for=lambda stem, profile: {})


def test_declared_parameters_reads_the_literal_defaults(notebooks):
    assert declared_parameters(notebooks / f"{FIXTURE}.ipynb") == {"PROFILE": "ci", "SEEDS": [0], "SCALE": 1.0}


COMMITTED = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.skipif(not COMMITTED, reason="no committed notebooks yet")
@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.stem)
def test_committed_notebook_defaults_equal_the_ci_profile(path):
    # nbval re-executes the committed notebooks with their own defaults: they must be the ci profile
    book = nbformat.read(path, as_version=4)
    first_code = next(c for c in book.cells if c.cell_type == "code")
    assert "parameters" in first_code.metadata.get("tags", []), "the first code cell must be tagged 'parameters'"
    assert declared_parameters(path) == parameters(path.stem, "ci")


def test_update_readme_replaces_only_its_profile_block(tmp_path, monkeypatch):
    from ersm.study.reproduce import update_readme

    monkeypatch.setenv("ERSM_HOME", str(tmp_path))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- claims:ci -->\nold ci\n<!-- /claims:ci -->\nmid\n<!-- claims:full -->\nold full\n<!-- /claims:full -->\nend\n")
    update_readme("ci", "| new table |\n")
    text = readme.read_text()
    assert "| new table |" in text and "old ci" not in text
    assert "old full" in text and text.startswith("intro\n") and text.endswith("end\n")
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="lacks the markers <!-- claims:ci -->"):
        update_readme("ci", "| t |\n")


def test_reproduce_leaves_the_readme_and_the_table_names_each_commit(notebooks, tmp_path):
    from ersm.study.reproduce import claims_table

    readme = tmp_path / "README.md"
    readme.write_text("<!-- claims:full -->\nold\n<!-- /claims:full -->\n")
    reproduce("full", notebooks_dir=notebooks, parameters_for=lambda stem, profile: dict(INJECTED))
    assert "old" in readme.read_text()  # only `ersm table --readme` writes it
    record = tmp_path / "results" / "full" / f"{FIXTURE}.json"
    other = json.loads(record.read_text())
    other["provenance"].update(commit="abcdef0123", dirty=True)
    (tmp_path / "results" / "full" / "02_other.json").write_text(json.dumps(other))
    table = claims_table("full")
    assert "2 different commits" in table and "`02_other` abcdef0+dirty" in table
    assert table.count("fixture claim") == 2


def test_dirty_means_changed_code_not_the_outputs_a_run_writes(tmp_path, monkeypatch):
    import subprocess

    from ersm.study.results import git_state

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    for name in ("notebooks/01_x.ipynb", "results/ci/01_x.json", "figures/ci/a.png", "README.md", "ersm/code.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("v1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    monkeypatch.setenv("ERSM_HOME", str(tmp_path))
    assert git_state()["dirty"] is False
    for name in ("notebooks/01_x.ipynb", "results/ci/01_x.json", "figures/ci/a.png", "README.md"):
        (tmp_path / name).write_text("executed\n")
    assert git_state()["dirty"] is False
    (tmp_path / "ersm/code.py").write_text("changed\n")
    assert git_state()["dirty"] is True


@pytest.mark.skipif(not COMMITTED, reason="no committed notebooks yet")
@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.stem)
def test_every_notebook_imports_ersm_before_numpy_or_pandas(path):
    """A kernel that loads numpy before ``import ersm`` runs unpinned (ersm/portability/numerics.py): in JupyterLab,
    and under nbval, whose kernels do not inherit the pins. The first import must be from ersm."""
    import ast

    book = nbformat.read(path, as_version=4)
    for cell in book.cells:
        if cell.cell_type != "code":
            continue
        imports = [node for node in ast.walk(ast.parse(cell.source)) if isinstance(node, (ast.Import, ast.ImportFrom))]
        if imports:
            first = min(imports, key=lambda node: (node.lineno, node.col_offset))
            module = first.module if isinstance(first, ast.ImportFrom) else first.names[0].name
            assert module.split(".")[0] == "ersm", f"{path.name}: the first import is {module!r}, not ersm"
            return
    pytest.fail(f"{path.name} imports nothing")


def test_a_notebook_without_its_profile_cell_is_refused_by_name(notebooks):
    book = nbformat.read(notebooks / f"{FIXTURE}.ipynb", as_version=4)
    del book.cells[1]
    nbformat.write(book, notebooks / f"{FIXTURE}.ipynb")
    with pytest.raises(ValueError, match=f"{FIXTURE}.ipynb has 0 markdown cells starting with '\\*\\*Profile.\\*\\*'"):
        reproduce("full", notebooks_dir=notebooks, parameters_for=lambda stem, profile: dict(INJECTED))



def test_a_notebook_without_its_profile_cell_is_refused_before_the_first_notebook_runs(notebooks, tmp_path):
    book = nbformat.read(notebooks / f"{FIXTURE}.ipynb", as_version=4)
    book.cells = [cell for cell in book.cells if not cell.source.startswith("**Profile.**")]
    nbformat.write(book, notebooks / "02_fixture.ipynb")  # the second notebook lacks the cell; the first has it
    with pytest.raises(ValueError, match="02_fixture.ipynb has 0 markdown cells starting with"):
        reproduce("full", notebooks_dir=notebooks, parameters_for=lambda stem, profile: dict(INJECTED))
    assert not (tmp_path / "runs" / "full" / f"{FIXTURE}.ipynb").exists(), "the first notebook ran before the refusal"
