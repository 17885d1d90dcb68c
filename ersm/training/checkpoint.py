"""Checkpoints that are written atomically and verified before use.

A checkpoint is ``checkpoint.pt`` plus ``checkpoint.json`` holding its SHA-256 and epoch. The
manifest is written after the payload, so a crash between the two leaves a mismatch that reads
as corrupt: the run is then retrained, never loaded from a half-written or altered file.
"""
from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import Path

import torch

from ersm.paths import atomic_write_bytes, atomic_write_text

PAYLOAD, MANIFEST = "checkpoint.pt", "checkpoint.json"


def save_checkpoint(run_dir: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    atomic_write_bytes(run_dir / PAYLOAD, data)
    manifest = {"sha256": hashlib.sha256(data).hexdigest(), "epoch": state["epoch"]}
    atomic_write_text(run_dir / MANIFEST, json.dumps(manifest))


def load_checkpoint(run_dir: Path, discard: bool = True) -> dict | None:
    """The verified checkpoint state, or ``None`` if there is none; a corrupt one warns and is
    removed (left in place with ``discard=False``: the non-zero ranks of a DDP run, which never write)."""
    payload, manifest = run_dir / PAYLOAD, run_dir / MANIFEST
    if not payload.exists() and not manifest.exists():
        return None
    try:
        expected = json.loads(manifest.read_text())["sha256"]
        data = payload.read_bytes()
        if hashlib.sha256(data).hexdigest() != expected:
            raise ValueError("SHA-256 does not match the manifest")
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as error:  # any unreadable checkpoint is treated the same: discard and retrain
        warnings.warn(f"corrupt checkpoint in {run_dir} ({error}); discarding it and training again", stacklevel=2)
        if discard:
            payload.unlink(missing_ok=True)
            manifest.unlink(missing_ok=True)
        return None
