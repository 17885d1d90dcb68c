"""Results JSON with provenance: git commit and dirty flag, versions, device, CPU kernels, profile, wall time.

Notebooks write to ``runs/<profile>/results/<notebook>.json`` (git-ignored, so tests never touch
committed files); ``ersm reproduce`` gathers them into ``results/<profile>/``.
"""
from __future__ import annotations

import json
import math
import platform
import subprocess
import time
from importlib import metadata

import numpy as np
import torch

from ersm.paths import atomic_write_text, repo_root, runs_dir
from ersm import numerics
from ersm.seeding import resolve_device


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

    def save(self, payload: dict) -> dict:
        record = {
            "notebook": self.notebook, "profile": self.profile, "parameters": self.parameters,
            "provenance": {**git_state(), "versions": versions(), "device": device_description(self.parameters.get("DEVICE", "auto")), "cpu": numerics.describe(),
                           "wall_seconds": round(time.time() - self.started, 1)},
            **payload,
        }
        atomic_write_text(runs_dir() / self.profile / "results" / f"{self.notebook}.json",
                          json.dumps(json_safe(record), indent=1, sort_keys=True, allow_nan=False))
        return record


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
