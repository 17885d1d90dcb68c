"""Finished models out of the model cache and back in: a compact, verified copy that outlives a machine.

A CPU run of the ``full`` profile trains a few hundred models, about a day on 2 cores: longer
than a working session and than the machine it runs on. ``export_models`` copies every finished
cache entry to a folder that can be committed (the repository keeps the ``full`` models under
``models/full/``); ``import_models`` copies them back into the cache (``ersm.paths.cache_dir``),
so that a new machine resumes the run, or runs the notebooks, without training them again.

An exported entry is the cache entry (``<digest>/`` with ``config.json``, ``metrics.jsonl``,
``sessions.jsonl`` and a checkpoint with its manifest, ``ersm.training.checkpoint``) whose checkpoint
keeps only the weights, the per-epoch history and the config: the optimizer, scheduler and
random-number states serve only to resume an unfinished run, and dropping them makes it a third
of the size. Loading it gives the same model and history as the original entry.

Both directions verify every entry before it is copied, and copy it whole or not at all
(written beside the destination, then renamed):

- the checkpoint matches its manifest's SHA-256 and has finished (its epoch reaches the config's
  ``epochs``);
- the config in the checkpoint equals ``config.json``;
- the folder's name is the config's digest on some machine (CPU with portable or native
  kernels, or CUDA: ``TrainConfig.digest(machine=...)``), so an entry cannot be served under
  another config's key.

An entry that fails is skipped with a warning that names it (a model the cache lacks is then
simply trained again); an unfinished cache entry (a model still training) is not exported. A
finished entry already in the destination is kept as it is.
"""
from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ersm.training.checkpoint import MANIFEST, PAYLOAD, load_checkpoint, save_checkpoint
from ersm.training.config import from_dict
from ersm.paths import cache_dir

KEPT_STATE = ("epoch", "model", "history", "config", "world_size")
TEXT_FILES = ("config.json", "metrics.jsonl", "sessions.jsonl")
MACHINES = (("cpu", "portable"), ("cpu", "native"), ("cuda", None))


@dataclass
class Copied:
    """What one export or import did: the digests copied, already there, unfinished, and refused."""
    copied: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{len(self.copied)} copied, {len(self.present)} already there, {len(self.unfinished)} unfinished "
                f"(not copied), {len(self.refused)} refused" + (f", {len(self.excluded)} excluded" if self.excluded else ""))


def export_models(destination: Path, cache: Path | None = None, exclude=()) -> Copied:
    """Copy every finished entry of ``cache`` (default: the model cache) into ``destination``, compacted.

    ``exclude``: folders of exported models (e.g. ``models/full``) whose entries are left out
    (listed in ``Copied.excluded``), so that a cache that also holds another run's models
    exports only its own. Each must exist.
    """
    excluded = set()
    for folder in map(Path, exclude):
        if not folder.is_dir():
            raise FileNotFoundError(f"exclude={str(folder)!r} is not a folder of exported models")
        excluded |= {path.name for path in folder.iterdir() if path.is_dir() and not path.name.startswith(".")}
    return _copy_all(Path(cache) if cache is not None else cache_dir(), Path(destination), compact=True, skip=excluded)


def import_models(source: Path, cache: Path | None = None) -> Copied:
    """Copy every finished entry of ``source`` (e.g. ``models/full``) that the cache lacks into it."""
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"source={str(source)!r} is not a folder of exported models")
    return _copy_all(source, Path(cache) if cache is not None else cache_dir(), compact=False)


def _copy_all(source: Path, destination: Path, compact: bool, skip=frozenset()) -> Copied:
    if not source.is_dir():
        raise FileNotFoundError(f"the model cache {str(source)!r} does not exist")
    try:
        destination.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"destination={str(destination)!r} cannot be written: {error}") from error
    outcome = Copied()
    for entry in sorted(path for path in source.iterdir() if path.is_dir() and not path.name.startswith(".")):
        if entry.name in skip:
            outcome.excluded.append(entry.name)
            continue
        problem, state = _verify(entry)
        if problem == "unfinished":
            outcome.unfinished.append(entry.name)
        elif problem is not None:
            warnings.warn(f"model entry {entry} is not copied: {problem}", stacklevel=2)
            outcome.refused.append(entry.name)
        elif _verify(destination / entry.name)[0] is None:
            outcome.present.append(entry.name)
        else:
            _copy_entry(entry, destination, {key: state[key] for key in KEPT_STATE if key in state} if compact else None)
            outcome.copied.append(entry.name)
    return outcome


def _verify(entry: Path) -> tuple[str | None, dict | None]:
    """``(None, state)`` for a finished, consistent entry, else ``(why not, None)``."""
    if not (entry / MANIFEST).exists() or not (entry / "config.json").exists():
        return "unfinished" if entry.exists() else "missing", None
    try:
        config = from_dict(json.loads((entry / "config.json").read_text()))
    except (OSError, ValueError, TypeError) as error:
        return f"config.json is unreadable ({error})", None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # load_checkpoint's own warning; the caller names the entry
        state = load_checkpoint(entry, discard=False)
    if state is None:
        return "its checkpoint does not match its manifest", None
    if state.get("epoch", 0) < config.epochs:
        return "unfinished", None
    try:
        same = isinstance(state.get("config"), dict) and from_dict(state["config"]) == config
    except (ValueError, TypeError):
        same = False
    if not same:
        return "the config in its checkpoint differs from config.json", None
    if entry.name not in {config.digest(machine=machine) for machine in MACHINES}:
        return f"its name is not the digest of its config on any machine {MACHINES}", None
    return None, state


def _copy_entry(entry: Path, destination: Path, compact_state: dict | None) -> None:
    staging = destination / f".{entry.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for name in TEXT_FILES:
        if (entry / name).exists():
            shutil.copyfile(entry / name, staging / name)
    if compact_state is None:
        for name in (PAYLOAD, MANIFEST):
            shutil.copyfile(entry / name, staging / name)
    else:
        save_checkpoint(staging, compact_state)
    target = destination / entry.name
    if target.exists():  # an unfinished or corrupt entry: the verified copy replaces it
        shutil.rmtree(target)
    staging.rename(target)
