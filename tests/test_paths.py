"""``ersm.paths``: runs/, results/, figures/ and data/ under ERSM_HOME, the source checkout, or the
working directory of an installed package; never inside site-packages."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ersm import paths

CHECKOUT = Path(paths.__file__).resolve().parent.parent


def every_root() -> dict[str, Path]:
    return {"runs": paths.runs_dir(), "cache": paths.cache_dir().parent, "results": paths.results_dir("ci").parent,
            "figures": paths.figures_dir(), "data": paths.data_dir()}


def fake_clone(root: Path) -> Path:
    (root / "ersm").mkdir(parents=True)
    (root / "ersm" / "__init__.py").write_text("")
    (root / "notebooks").mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "ersm"\nversion = "0.1.0"\n')
    return root


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    monkeypatch.delenv("ERSM_HOME", raising=False)
    monkeypatch.delenv("ERSM_DATA", raising=False)
    monkeypatch.delenv("ERSM_CACHE", raising=False)


def test_ersm_home_holds_everything(tmp_path, monkeypatch):
    monkeypatch.setenv("ERSM_HOME", str(tmp_path))
    assert every_root() == {"runs": tmp_path / "runs", "cache": tmp_path / "runs", "results": tmp_path / "results",
                            "figures": tmp_path / "figures", "data": tmp_path / "data"}
    monkeypatch.setenv("ERSM_DATA", str(tmp_path / "datasets"))
    assert paths.data_dir() == tmp_path / "datasets" and paths.runs_dir() == tmp_path / "runs"


def test_ersm_cache_moves_the_model_cache_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("ERSM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ERSM_CACHE", str(tmp_path / "models"))
    assert paths.cache_dir() == tmp_path / "models"
    assert paths.runs_dir() == tmp_path / "home" / "runs" and paths.results_dir("full") == tmp_path / "home" / "results" / "full"
    monkeypatch.delenv("ERSM_HOME")
    assert paths.cache_dir() == tmp_path / "models" and paths.figures_dir() == CHECKOUT / "figures"


def test_a_source_checkout_is_the_root_whatever_the_working_directory(tmp_path, monkeypatch):
    assert paths.is_checkout(CHECKOUT)
    monkeypatch.chdir(tmp_path)  # e.g. notebooks/ under nbval, or anywhere else
    assert paths.repo_root() == CHECKOUT
    assert paths.results_dir("ci") == CHECKOUT / "results" / "ci" and paths.figures_dir() == CHECKOUT / "figures"


def test_an_installed_package_uses_the_working_directory_or_the_clone_around_it(tmp_path, monkeypatch):
    site = tmp_path / "site-packages"
    monkeypatch.setattr(paths, "PACKAGE_DIR", site / "ersm")  # as imported from a regular install
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert set(every_root().values()) <= {work / "runs", work / "results", work / "figures", work / "data"}
    clone = fake_clone(tmp_path / "clone")
    monkeypatch.chdir(clone / "notebooks")  # a notebook of a clone installed with `pip install .`
    assert paths.repo_root() == clone and paths.cache_dir() == clone / "runs" / "cache"
    (clone / "pyproject.toml").write_text('[project]\nname = "other"\n')  # another project is no clone of ours
    assert paths.repo_root() == clone / "notebooks"


def test_a_copy_in_site_packages_never_writes_there(tmp_path):
    site = tmp_path / "site-packages"
    shutil.copytree(CHECKOUT / "ersm", site / "ersm", ignore=shutil.ignore_patterns("__pycache__"))
    work = tmp_path / "work"
    work.mkdir()
    code = ("import json, ersm; from ersm import paths; print(json.dumps([ersm.__file__, str(paths.cache_dir()), "
            "str(paths.results_dir('ci')), str(paths.data_dir())]))")
    environment = {k: v for k, v in os.environ.items() if k not in ("ERSM_HOME", "ERSM_DATA")}
    environment["PYTHONPATH"] = str(site)
    done = subprocess.run([sys.executable, "-c", code], cwd=work, env=environment, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    module, cache, results, data = json.loads(done.stdout.splitlines()[-1])
    assert module.startswith(str(site))
    assert (cache, results, data) == (str(work / "runs" / "cache"), str(work / "results" / "ci"), str(work / "data"))
