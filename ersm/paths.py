"""Where runs, results, figures and data live, independent of the caller's working directory.

One root holds ``runs/`` (the model cache and executed notebooks), ``results/``, ``figures/`` and
``data/``. :func:`repo_root` picks it, first match wins:

1. ``ERSM_HOME``, when set;
2. the source checkout the package is imported from (an editable install, or Python started
   in the repository): the folder above ``ersm/`` when it holds the ``pyproject.toml`` of the
   ``ersm`` project. Notebooks run with ``notebooks/`` as their working directory (nbval,
   papermill), so they and the command line share one ``runs/``, and ``results/`` and
   ``figures/`` land in the repository;
3. otherwise the package was installed (site-packages, never written to): the ``ersm``
   checkout that contains the current working directory, if any (a clone installed with
   ``pip install .`` whose notebooks run from ``notebooks/``), else the current working
   directory itself.

``ERSM_DATA`` moves only the datasets (:func:`data_dir`), ``ERSM_CACHE`` only the model cache
(:func:`cache_dir`): a long run keeps its trained models there when the work tree around
``runs/`` may be laid afresh between sessions, while its results and figures still land in the
repository.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent  # .../ersm


def is_checkout(folder: Path) -> bool:
    """Whether ``folder`` is a source checkout of this project: ``ersm/__init__.py`` beside a
    ``pyproject.toml`` whose ``[project]`` is named ``ersm``."""
    try:
        text = (folder / "pyproject.toml").read_text()
    except OSError:
        return False
    return (folder / "ersm" / "__init__.py").is_file() and re.search(r'^name\s*=\s*"ersm"\s*$', text, re.M) is not None


def repo_root() -> Path:
    """The root of ``runs/``, ``results/``, ``figures/`` and ``data/`` (module docstring)."""
    if os.environ.get("ERSM_HOME"):
        return Path(os.environ["ERSM_HOME"]).resolve()
    source = PACKAGE_DIR.parent
    if is_checkout(source):
        return source
    here = Path.cwd().resolve()
    return next((folder for folder in (here, *here.parents) if is_checkout(folder)), here)


def data_dir() -> Path:
    """Where the real datasets live (or are downloaded to): ``ERSM_DATA`` if set, else ``data/`` under the root."""
    if os.environ.get("ERSM_DATA"):
        return Path(os.environ["ERSM_DATA"]).resolve()
    return repo_root() / "data"


def runs_dir() -> Path:
    return repo_root() / "runs"


def cache_dir() -> Path:
    """The model cache: ``ERSM_CACHE`` if set, else ``runs/cache`` under the root."""
    if os.environ.get("ERSM_CACHE"):
        return Path(os.environ["ERSM_CACHE"]).resolve()
    return runs_dir() / "cache"


def results_dir(profile: str) -> Path:
    return repo_root() / "results" / profile


def figures_dir() -> Path:
    return repo_root() / "figures"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, then rename: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_between_markers(path: Path, start: str, end: str, block: str) -> None:
    """Replace what lies between the lines ``start`` and ``end`` of the text file ``path`` with
    ``block`` (atomically); ValueError naming the file and the markers when either is missing."""
    text = path.read_text()
    if start not in text or end not in text:
        raise ValueError(f"{path} lacks the markers {start} ... {end}")
    head, rest = text.split(start, 1)
    atomic_write_text(path, f"{head}{start}\n{block}{end}{rest.split(end, 1)[1]}")
