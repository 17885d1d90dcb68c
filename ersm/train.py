"""Training with a model cache: ``get_model(config)`` returns the trained model, training it once.

The training loop itself is the engine's, :func:`ersm.engine.fit`; this module turns a
:class:`~ersm.config.TrainConfig` into the engine's arguments and keeps the cache.

- One config -> one folder ``runs/cache/<config.digest()>/`` with ``config.json``,
  ``metrics.jsonl`` (one JSON line per epoch) and a verified checkpoint (``ersm.checkpoint``).
- A run stopped mid-way resumes from its last finished epoch and ends with the same weights as
  an uninterrupted run: every epoch's shuffling and augmentation come from a generator seeded
  by ``(seed, epoch)``, so nothing but the checkpoint has to be restored.
- A non-finite loss stops training with ``FloatingPointError`` naming epoch and step; the last
  good checkpoint stays on disk.
- ``config.device``: CUDA with AMP (bfloat16), or the CPU with deterministic, portable kernels
  (``ersm/numerics.py``). The model stays on that device, so it is evaluated there too.
- Models are built in ``channels_last`` memory format: on our 2-core CPU the SmallCNN then
  took about 0.8x the time per training step and 0.56x per evaluation pass (measured side by
  side, 2026-11; README, Performance). The arithmetic is the same up to rounding;
  ``CACHE_VERSION`` 2 marks it.
"""
from __future__ import annotations

import functools
import json

import torch
from torch import nn

from ersm.augment import cutout
from ersm.checkpoint import load_checkpoint
from ersm.config import TrainConfig
from ersm.data import ClutteredDigits
from ersm.engine import fit
from ersm.models import build_model
from ersm.paths import atomic_write_text, cache_dir
from ersm.seeding import seed_everything


def _dataset(split: str, n: int, canvas: int, clutter: int, rho: float, seed: int, background: str) -> ClutteredDigits:
    return ClutteredDigits(split, n, canvas=canvas, seed=seed, clutter=(0, clutter), background=background,
                           background_label_correlation=rho)


@functools.lru_cache(maxsize=8)
def _digits(*args):
    return _dataset(*args).tensors()


def _test_args(config: TrainConfig, background: str) -> tuple:
    """The test split's dataset arguments: no spurious correlation, its own seed."""
    return ("test", config.n_test, config.canvas, config.clutter, 0.0, config.data_seed + 1, background)


def training_data(config: TrainConfig):
    """``(images [N,1,H,W], labels [N], masks [N,1,H,W])`` of the config's training split."""
    return _digits("train", config.n_train, config.canvas, config.clutter,
                   config.background_label_correlation, config.data_seed, "random")


def validation_data(config: TrainConfig):
    """The config's validation split: held-out training digits, drawn like the training set
    (the same spurious correlation ``rho``), so it measures in-distribution generalisation.
    Tuning and convergence decisions read this split only."""
    return _digits("validation", config.n_val, config.canvas, config.clutter,
                   config.background_label_correlation, config.data_seed + 2, "random")


def test_data(config: TrainConfig, background: str = "random"):
    """The config's test split (no spurious correlation; ``background`` picks aligned/swapped sets)."""
    return _digits(*_test_args(config, background))


def make_model(config: TrainConfig) -> nn.Module:
    """The untrained model of a config, initialised from ``config.seed``."""
    torch.manual_seed(config.seed)
    model = build_model(config.backbone, in_channels=1, num_classes=10, energy_mask=config.energy_mask_kwargs(),
                        after=config.insert_after, width=config.width if config.backbone == "small_cnn" else None)
    return model.to(memory_format=torch.channels_last)


def train(config: TrainConfig, run_dir=None, progress: bool | None = None, stop_after_epoch: int | None = None) -> nn.Module:
    """Train (or resume) the config's model in ``run_dir``; returns it in eval mode on its device.

    The loop is :func:`ersm.engine.fit`; this function only turns the config into its arguments.
    ``stop_after_epoch`` ends the run early (as if killed) after that epoch's checkpoint: for tests.
    """
    run_dir = run_dir or cache_dir() / config.digest()
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps(config.to_dict(), indent=1, sort_keys=True))
    seed_everything(config.seed)
    device = config.torch_device()
    images, labels, _ = training_data(config)
    val_images, val_labels, _ = validation_data(config)
    test_images, test_labels, _ = test_data(config)
    model = make_model(config).to(device)
    augment = functools.partial(_cutout, size=config.cutout_size) if config.augmentation == "cutout" else None
    fitted = fit(model, (images, labels), epochs=config.epochs, beta=config.beta if config.is_ersm else 0.0,
                 batch_size=config.batch_size, optimizer=config.optimizer, lr=config.lr,
                 weight_decay=config.weight_decay, scheduler="onecycle", augment=augment, seed=config.seed,
                 device=device, validation=(val_images, val_labels), test=(test_images, test_labels), run_dir=run_dir,
                 checkpoint_extra={"config": config.to_dict()}, name=f"{config.model} seed {config.seed} "
                 f"(config {config.digest()})", progress=progress, stop_after_epoch=stop_after_epoch)
    return fitted.model


def _cutout(images: torch.Tensor, generator: torch.Generator, size: int) -> torch.Tensor:
    return cutout(images, size, generator)


def get_model(config: TrainConfig, progress: bool | None = None) -> nn.Module:
    """The trained model of ``config`` from the cache, training (or resuming) it only if needed."""
    run_dir = cache_dir() / config.digest()
    state = load_checkpoint(run_dir)
    seed_everything(config.seed)  # the same threads and kernels whether trained or loaded
    if state is not None and state["epoch"] >= config.epochs:
        model = make_model(config)
        model.load_state_dict(state["model"])
        return model.to(config.torch_device()).eval()
    return train(config, run_dir, progress=progress)


def is_cached(config: TrainConfig) -> bool:
    """Whether the cache holds a finished checkpoint of ``config`` (its manifest says so; verified on load)."""
    manifest = cache_dir() / config.digest() / "checkpoint.json"
    try:
        return json.loads(manifest.read_text())["epoch"] >= config.epochs
    except (OSError, ValueError, KeyError):
        return False


def training_history(config: TrainConfig) -> list[dict]:
    """The per-epoch records of a trained config (trains it if needed)."""
    get_model(config)
    return load_checkpoint(cache_dir() / config.digest())["history"]  # the verified copy



def test_metadata(config: TrainConfig, background: str = "random") -> dict:
    """Per-item facts of the config's test split (clutter count, digit area, background, ...)."""
    return _dataset(*_test_args(config, background)).metadata()
