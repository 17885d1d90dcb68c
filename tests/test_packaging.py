"""The environment files agree with pyproject.toml, and the CLI refuses bad input clearly."""
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from ersm.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_environment_yml_does_not_drift_from_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = [d for d in env["dependencies"] if isinstance(d, dict)]
    assert sorted(name.split("=")[0] for name in conda) == ["pip", "python"], "only python and pip come from conda"
    python = next(d for d in conda if d.startswith("python=")).split("=")[1]
    assert f"{python}.0" in SpecifierSet(project["requires-python"])
    assert pip == [{"pip": ["-e .[dev]"]}], "every other dependency must come from pyproject.toml"
    assert set(project["optional-dependencies"]) >= {"dev"}
    names = {d.split("==")[0] for d in project["dependencies"]}
    assert {"torch", "torchvision", "papermill", "seaborn", "scikit-learn", "jupyterlab", "mlxtend", "scikit-image"} <= names
    assert "torch==2.14.1" in project["dependencies"] and "torchvision==0.29.1" in project["dependencies"]
    assert all("==" in d for d in project["dependencies"]), "every dependency is pinned exactly"
    assert {d.split("==")[0] for d in project["optional-dependencies"]["dev"]} >= {"pytest", "nbval"}


def test_ci_runs_make_test():
    assert "make test" in (ROOT / ".ci/run").read_text()


@pytest.mark.parametrize("argv, words", [
    (["train", "--set", "epochs=0"], "epochs=0"),
    (["train", "--set", "colour=red"], "unknown config key"),
    (["train", "--set", "model=sparse"], "model='sparse'"),
    (["train", "--set", "lr=fast"], "lr='fast'"),
    (["reproduce", "--profile", "huge"], "profile='huge'"),
])
def test_cli_refuses_bad_input(argv, words, capsys):
    assert main(argv) == 2
    assert words in capsys.readouterr().err
