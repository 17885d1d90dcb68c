"""Training with a model cache: ``get_model(config)`` returns the trained model, training it once.

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
import math
import sys
import time

import torch
from torch import nn
from tqdm import tqdm

from ersm.augment import cutout
from ersm.checkpoint import load_checkpoint, save_checkpoint
from ersm.config import TrainConfig
from ersm.data import ClutteredDigits
from ersm.inference import predict
from ersm.layer import energy_masks
from ersm.loss import ersm_objective
from ersm.models import build_model
from ersm.paths import atomic_write_text, cache_dir
from ersm.seeding import derived_seed, seed_everything

MASK_THRESHOLDS = (0.05, 0.1, 0.25)


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


def make_optimizer(config: TrainConfig, model: nn.Module, steps: int):
    if config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay, nesterov=True)
    return optimizer, torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps, pct_start=0.2)


def train(config: TrainConfig, run_dir=None, progress: bool | None = None, stop_after_epoch: int | None = None) -> nn.Module:
    """Train (or resume) the config's model in ``run_dir``; returns it in eval mode on its device.

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
    steps_per_epoch = math.ceil(len(images) / config.batch_size)
    optimizer, scheduler = make_optimizer(config, model, config.epochs * steps_per_epoch)
    state = load_checkpoint(run_dir)
    history: list[dict] = []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = state["history"]
    # per-epoch bars in a terminal only; notebooks print one summary line per cell (common.train_all)
    show = sys.stderr.isatty() if progress is None else progress
    for epoch in range(len(history), config.epochs):
        started = time.perf_counter()
        sums = train_one_epoch(config, model, optimizer, scheduler, images, labels, epoch, device, show)
        record = {"epoch": epoch + 1, **sums, "val_accuracy": accuracy_of(model, val_images, val_labels),
                  **evaluation_record(model, test_images, test_labels),
                  "seconds": round(time.perf_counter() - started, 2)}
        history.append(record)
        save_checkpoint(run_dir, {"epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                  "scheduler": scheduler.state_dict(), "history": history, "config": config.to_dict()})
        atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    return model.eval()


def train_one_epoch(config, model, optimizer, scheduler, images, labels, epoch, device, show) -> dict:
    """One pass over the shuffled training set; returns the epoch's mean loss terms and accuracy."""
    model.train()
    generator = torch.Generator().manual_seed(derived_seed(config.seed, epoch))
    order = torch.randperm(len(images), generator=generator)
    totals = {"loss": 0.0, "cross_entropy": 0.0, "l_reg": 0.0, "train_accuracy": 0.0}
    batches = order.split(config.batch_size)
    bar = tqdm(batches, desc=f"{config.model} seed {config.seed} epoch {epoch + 1}/{config.epochs}",
               disable=not show, leave=False, file=sys.stderr)
    use_amp = device.type == "cuda"
    for step, index in enumerate(bar):
        x, y = images[index], labels[index]
        if config.augmentation == "cutout":
            x = cutout(x, config.cutout_size, generator)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            try:
                logits = model(x)
            except ValueError as error:  # the EnergyMask refuses non-finite features: divergence
                raise FloatingPointError(f"non-finite features at epoch {epoch + 1}, step {step + 1} of config "
                                         f"{config.digest()} ({error}); the last good checkpoint (epoch {epoch}) is kept") from error
        objective = ersm_objective(logits, y, model, config.beta if config.is_ersm else 0.0)
        if not torch.isfinite(objective.total):
            raise FloatingPointError(
                f"non-finite loss ({objective.total.item()}) at epoch {epoch + 1}, step {step + 1} of config "
                f"{config.digest()}; the last good checkpoint (epoch {epoch}) is kept")
        optimizer.zero_grad(set_to_none=True)
        objective.total.backward()
        optimizer.step()
        scheduler.step()
        check_mask_offsets(model, config, epoch, step)
        n = len(index)
        totals["loss"] += objective.total.item() * n
        totals["cross_entropy"] += objective.cross_entropy.item() * n
        totals["l_reg"] += objective.regularizer.item() * n
        totals["train_accuracy"] += (logits.argmax(1) == y).sum().item()
    return {key: value / len(images) for key, value in totals.items()}


def check_mask_offsets(model, config: TrainConfig, epoch: int, step: int) -> None:
    """Stop when a learned mask offset became non-finite (it would silently turn every mask into NaN)."""
    for name, layer in energy_masks(model):
        offset = getattr(layer, "mask_offset", None)
        if offset is not None and not torch.isfinite(offset).item():
            raise FloatingPointError(
                f"{name}.mask_offset became {offset.item()} at epoch {epoch + 1}, step {step + 1} of config "
                f"{config.digest()}; the last good checkpoint (epoch {epoch}) is kept")


def accuracy_of(model, images, labels) -> float:
    """Share of ``images`` classified as ``labels``."""
    return (predict(model, images).logits.argmax(1) == labels).float().mean().item()


def evaluation_record(model, images, labels) -> dict:
    """Test accuracy and, for ERSM models, mask statistics at the fixed thresholds."""
    out = predict(model, images)
    record = {"test_accuracy": (out.logits.argmax(1) == labels).float().mean().item()}
    if out.mask is not None:
        record["mean_mask"] = out.mask.mean().item()
        for threshold in MASK_THRESHOLDS:
            record[f"share_mask_below_{threshold}"] = (out.mask < threshold).float().mean().item()
    return record


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
