"""Training with a model cache: ``get_model(config)`` returns the trained model, training it once.

The training loop itself is the engine's, :func:`ersm.training.engine.fit`; this module turns a
:class:`~ersm.training.config.TrainConfig` into the engine's arguments and keeps the cache. The data
comes from ``ersm.data`` (:func:`~ersm.data.load_split`), which callers use directly. The convergence rule's inputs
read from trained models live in ``ersm.study.convergence``. Started by
``torchrun`` (``ersm.training.distributed``), every worker runs the same call and rank 0 alone writes.

- One config -> one folder ``runs/cache/<config.digest()>/`` with ``config.json``,
  ``metrics.jsonl`` (one JSON line per epoch), a verified checkpoint (``ersm.training.checkpoint``) and
  ``sessions.jsonl``: one line when a training session starts (the epoch it resumes from, the
  device, the CPU model, the kernels in force, the UTC time) and one when it ends (its wall time).
  A long run that resumes across machines thus says which machine trained which epochs; a
  session killed before its end has no end line.
- A run stopped mid-way resumes from its last finished epoch and ends with the same weights as
  an uninterrupted run: every epoch's shuffling and augmentation come from a generator seeded
  by ``(seed, epoch)``, so nothing but the checkpoint has to be restored.
- A non-finite loss stops training with ``FloatingPointError`` naming epoch and step; the last
  good checkpoint stays on disk.
- Training reads the training and validation splits only, never the test split: the per-epoch
  records score the validation split (``val_accuracy`` and the ``val_`` mask statistics,
  ``ersm.training.engine``). The claim notebooks read the test split after training
  (``ersm.data.load_split(config, "test")``). Models trained before this rule keep their
  histories (with ``test_accuracy`` and test-split mask statistics) and their cache keys: what
  a model records never entered its config hash.
- ``config.device``: CUDA with AMP (bfloat16), or the CPU with deterministic, portable kernels
  (``ersm/portability/numerics.py``). The model stays on that device, so it is evaluated there too.
- Models are built in ``channels_last`` memory format: on our 2-core CPU the SmallCNN then
  took about 0.8x the time per training step and 0.56x per evaluation pass (measured side by
  side, 2026-11; README, Performance). The arithmetic is the same up to rounding;
  ``CACHE_VERSION`` 2 marks it.
"""
from __future__ import annotations

import datetime
import functools
import json
import os
import time

import torch
from torch import nn

from ersm.training.augment import cutout
from ersm.training import devices, distributed
from ersm.portability import numerics
from ersm.training.checkpoint import load_checkpoint
from ersm.training.config import TrainConfig
from ersm.data import evaluation_set, sealed, training_set
from ersm.data.registry import entry as dataset_entry
from ersm.training.engine import fit
from ersm.models import build_model
from ersm.paths import atomic_write_text, cache_dir
from ersm.training.seeding import seed_everything

SESSIONS = "sessions.jsonl"


def make_model(config: TrainConfig, load_pretrained: bool = True) -> nn.Module:
    """The untrained model of a config, initialised from ``config.seed`` (``channels_last``).

    Channels and classes come from the dataset; real datasets get their normalisation as the
    model's first stage (``ersm.models.Normalize``); ``pretrained`` loads ImageNet weights
    (unless ``load_pretrained=False``: a checkpoint is about to replace them anyway).
    """
    spec = config.spec
    torch.manual_seed(config.seed)
    model = build_model(config.backbone, in_channels=spec.channels, num_classes=spec.classes,
                        energy_mask=config.energy_mask_kwargs(), after=config.insert_after,
                        width=config.width if config.backbone == "small_cnn" else None,
                        pretrained=config.pretrained and load_pretrained,
                        normalize=None if spec.mean is None else (spec.mean, spec.std))
    return model.to(memory_format=torch.channels_last)


def loader_workers(device: torch.device) -> int:
    """DataLoader workers for the real datasets: ``ERSM_WORKERS`` if set, else 0 on the CPU (its
    cores train) and up to 8 per process on CUDA. The images do not depend on it (``SeededTransform``)."""
    raw = os.environ.get("ERSM_WORKERS")
    if raw is not None:
        if not raw.isdigit():
            raise ValueError(f"ERSM_WORKERS={raw!r} must be an integer >= 0")
        return int(raw)
    if device.type != "cuda":
        return 0
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(0, min(8, (os.cpu_count() or 1) // per_node - 1))


def train(config: TrainConfig, run_dir=None, progress: bool | None = None, stop_after_epoch: int | None = None) -> nn.Module:
    """Train (or resume) the config's model in ``run_dir``; returns it in eval mode on its device.

    The loop is :func:`ersm.training.engine.fit`; this function only turns the config into its arguments.
    The data (and any missing download) is ready before the first step; ``ValueError`` or
    ``DatasetNotAvailable`` come before any training. Only the training and validation splits
    are loaded: the test split is not read here (module docstring). ``stop_after_epoch`` ends the run early
    (as if killed) after that epoch's checkpoint: for tests.
    """
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config={config!r} must be a TrainConfig")
    distributed.check_same(config.to_dict())  # under torchrun: every worker, the same config
    run_dir = run_dir or cache_dir() / config.digest()
    seed_everything(config.seed)
    device = devices.for_process(config.device)
    data, validation = distributed.main_first(  # rank 0 downloads, the others wait; the test split is never read
        lambda: (training_set(config), evaluation_set(config, "validation")))
    model = make_model(config).to(device)
    digits = dataset_entry(config.dataset).composed  # tensors in memory, Cutout per batch; else a Dataset
    augment = functools.partial(_cutout, size=config.cutout_size) if digits and config.augmentation == "cutout" else None
    if distributed.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.json", json.dumps(config.to_dict(), indent=1, sort_keys=True))
        _log_session(run_dir, event="start", from_epoch=_finished_epochs(run_dir), **machine_facts(device))
    started = time.perf_counter()
    fitted = fit(model, data, epochs=config.epochs, beta=config.beta if config.is_ersm else 0.0,
                 batch_size=config.batch_size, optimizer=config.optimizer, lr=config.lr,
                 weight_decay=config.weight_decay, scheduler="onecycle", augment=augment, seed=config.seed,
                 device=device, validation=validation, run_dir=run_dir,
                 checkpoint_extra={"config": config.to_dict()}, name=f"{config.model} seed {config.seed} "
                 f"(config {config.digest()})", progress=progress, stop_after_epoch=stop_after_epoch,
                 num_workers=0 if digits else loader_workers(device),
                 # Until training stopped scoring the test split (issue 29), scoring it as a Dataset (the
                 # real datasets) drew one number per epoch from torch's global generator, which the
                 # hard-concrete gate's training noise also draws from; drawing it still keeps such a
                 # model's weights the ones its unchanged config hash names. The digits are tensors: no draw.
                 draws_after_scoring=0 if digits else 1)
    if distributed.is_main():
        _log_session(run_dir, event="end", epoch=_finished_epochs(run_dir), wall_seconds=round(time.perf_counter() - started, 1))
    return fitted.model


def machine_facts(device: torch.device) -> dict:
    """What trains: the device, the CPU model, the kernel mode and ATen's capability, threads and processes."""
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "cpu_model": numerics.cpu_model(), "kernels": numerics.kernel_mode() if device.type == "cpu" else None,
            "aten_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "world_size": distributed.world()[1]}


def training_sessions(config: TrainConfig) -> list[dict]:
    """The ``sessions.jsonl`` records of ``config``'s cache entry (``[]`` for a model trained before they existed)."""
    path = cache_dir() / config.digest() / SESSIONS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _finished_epochs(run_dir) -> int:
    try:
        return int(json.loads((run_dir / "checkpoint.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def _log_session(run_dir, **record) -> None:
    record = {"utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **record}
    path = run_dir / SESSIONS
    previous = path.read_text() if path.exists() else ""
    atomic_write_text(path, previous + json.dumps(record, sort_keys=True) + "\n")


def _cutout(images: torch.Tensor, generator: torch.Generator, size: int) -> torch.Tensor:
    return cutout(images, size, generator)


def get_model(config: TrainConfig, progress: bool | None = None) -> nn.Module:
    """The trained model of ``config`` from the cache, training (or resuming) it only if needed.

    Under ``torchrun`` (a process group is up) every worker calls it and trains one model with
    DDP (``ersm.training.distributed``); only rank 0 writes to the cache.
    """
    distributed.check_same(config.to_dict())
    run_dir = cache_dir() / config.digest()
    state = load_checkpoint(run_dir, discard=distributed.is_main())
    seed_everything(config.seed)  # the same threads and kernels whether trained or loaded
    if state is not None and state["epoch"] >= config.epochs:
        model = make_model(config, load_pretrained=False)
        model.load_state_dict(state["model"])
        return model.to(devices.for_process(config.device)).eval()
    sealed.check_may_train(config)  # a process that opened the confirm run's test split trains nothing
    return train(config, run_dir, progress=progress)


def is_cached(config: TrainConfig) -> bool:
    """Whether the cache holds a finished checkpoint of ``config`` (its manifest says so; verified on load)."""
    manifest = cache_dir() / config.digest() / "checkpoint.json"
    try:
        return json.loads(manifest.read_text())["epoch"] >= config.epochs
    except (OSError, ValueError, KeyError):
        return False


def training_history(config: TrainConfig) -> list[dict]:
    """The per-epoch records of a trained config (trains it if needed).

    A finished cache entry is verified and read once, and no model is built for it; otherwise
    the model is trained (``get_model``) and its new checkpoint read. Under ``torchrun`` every
    rank meets here first (``check_same``), so no rank reads the checkpoint before rank 0 has
    written it."""
    distributed.check_same(config.to_dict())
    run_dir = cache_dir() / config.digest()
    state = load_checkpoint(run_dir, discard=distributed.is_main())
    if state is None or state["epoch"] < config.epochs:
        get_model(config)
        state = load_checkpoint(run_dir)
    return state["history"]  # the verified copy


