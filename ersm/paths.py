"""Where runs, results and figures live, independent of the caller's working directory.

Notebooks run with their own folder as working directory (nbval, papermill), so every path is
resolved from the repository root: ``ERSM_HOME`` if set, else the folder holding ``ersm/``.
"""
from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    if os.environ.get("ERSM_HOME"):
        return Path(os.environ["ERSM_HOME"]).resolve()
    return Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """Where the real datasets live (or are downloaded to): ``ERSM_DATA`` if set, else ``data/`` under the root."""
    if os.environ.get("ERSM_DATA"):
        return Path(os.environ["ERSM_DATA"]).resolve()
    return repo_root() / "data"


def runs_dir() -> Path:
    return repo_root() / "runs"


def cache_dir() -> Path:
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
