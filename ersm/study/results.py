"""Results JSON with provenance: git commit and dirty flag, versions, device, CPU kernels, profile, wall time.

Notebooks write to ``runs/<profile>/results/<notebook>.json`` (git-ignored, so tests never touch
committed files); ``ersm reproduce`` gathers them into ``results/<profile>/``.

Beside each JSON, ``<notebook>.npz`` (numpy's compressed archive) holds the per-seed, per-image
arrays the notebook's intervals were computed from (``Run.save(..., arrays=...)``): each key is
a ``|``-joined path such as ``correct|ERSM paper`` and each value an array whose first axis is
the seed, e.g. ``[S, N]``. A third party can recompute every image-level interval from them
(``load_arrays``; ``tests/test_results_arrays.py`` recomputes one).
"""
from __future__ import annotations

import io
import json
import math
import platform
import subprocess
import time
from importlib import metadata

import numpy as np
import torch

from ersm.paths import atomic_write_bytes, atomic_write_text, repo_root, runs_dir
from ersm.portability import numerics
from ersm.training.devices import resolve as resolve_device


# What a run itself rewrites (executed notebooks, results, figures, the README's table): changes there do not make
# the code a run used differ from its commit, so they do not count as dirty.
RUN_OUTPUTS = ("notebooks/*.ipynb", "results", "figures", "README.md")


def git_state() -> dict:
    """``commit`` (HEAD) and ``dirty``: whether tracked files other than ``RUN_OUTPUTS`` differ from it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=repo_root(), capture_output=True, text=True, check=False).stdout.strip()
    try:
        outputs = [f":(exclude,glob){pattern}" for pattern in RUN_OUTPUTS] + [":(exclude)results", ":(exclude)figures"]
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", *outputs)
        return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(dirty)}
    except OSError:  # no git on this machine: record that, do not lose the run
        return {"commit": None, "dirty": None}


def versions() -> dict:
    names = ("ersm", "torch", "torchvision", "numpy", "scikit-learn", "scikit-image", "mlxtend", "grad-cam", "papermill")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return {"python": platform.python_version(), **found}


def device_description(name: str = "auto") -> str:
    device = resolve_device(name)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


class Run:
    """Opened at a notebook's start; ``save(payload)`` writes the results JSON with provenance."""

    def __init__(self, notebook: str, profile: str, parameters: dict) -> None:
        self.notebook, self.profile, self.parameters = notebook, profile, parameters
        self.started = time.time()

    def save(self, payload: dict, arrays: dict[str, np.ndarray] | None = None) -> dict:
        """Write the results JSON and, with ``arrays`` (``{"a|b": array}``), the per-image archive beside it."""
        if arrays is not None:
            check_arrays(arrays)
        record = {
            "notebook": self.notebook, "profile": self.profile, "parameters": self.parameters,
            "provenance": {**git_state(), "versions": versions(), "device": device_description(self.parameters.get("DEVICE", "auto")), "cpu": numerics.describe(),
                           "wall_seconds": round(time.time() - self.started, 1)},
            **payload,
        }
        folder = runs_dir() / self.profile / "results"
        if arrays is not None:  # the archive first: a JSON never points at arrays that are not there
            buffer = io.BytesIO()
            np.savez_compressed(buffer, **arrays)
            atomic_write_bytes(folder / f"{self.notebook}.npz", buffer.getvalue())
        atomic_write_text(folder / f"{self.notebook}.json", json.dumps(json_safe(record), indent=1, sort_keys=True, allow_nan=False))
        return record


ARRAY_SEPARATOR = "|"


def check_arrays(arrays) -> None:
    """``arrays``: a non-empty dict of non-empty string keys to numpy arrays (not objects)."""
    if not isinstance(arrays, dict) or not arrays:
        raise ValueError(f"arrays must be a non-empty dict {{name: numpy array}}, got arrays={arrays!r:.80}")
    for key, value in arrays.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"arrays has the key {key!r}; keys must be non-empty strings")
        if not isinstance(value, np.ndarray) or value.dtype == object:
            raise ValueError(f"arrays[{key!r}] must be a numeric or boolean numpy array, got {type(value).__name__}")


def array_key(*parts) -> str:
    """``array_key("correct", "ERSM paper", 0)`` -> ``"correct|ERSM paper|0"``; a part may not hold ``|``."""
    texts = [str(part) for part in parts]
    for text in texts:
        if ARRAY_SEPARATOR in text:
            raise ValueError(f"array key part {text!r} contains {ARRAY_SEPARATOR!r}, which joins the parts")
    return ARRAY_SEPARATOR.join(texts)


def load_arrays(results_json) -> dict[str, np.ndarray]:
    """The per-image arrays saved beside ``results_json`` (a path to ``<notebook>.json``).

    A results folder written before the arrays existed has no archive: that is refused with a
    ``FileNotFoundError`` naming the file, not a ``KeyError`` later."""
    from pathlib import Path

    archive = Path(results_json).with_suffix(".npz")
    if not archive.exists():
        raise FileNotFoundError(f"no per-image arrays at {archive}: these results were written without them "
                                f"(re-run the notebook with `ersm reproduce` to write them)")
    with np.load(archive, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def json_safe(value):
    """numpy scalars to Python ones, NaN/inf to None (strict JSON), recursively."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
