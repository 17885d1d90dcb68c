"""The training engine: ``ersm.fit(model, data, *, epochs, beta, ...)``, one loop for every model.

``fit`` trains any ``nn.Module`` that maps ``x [B, C, H, W]`` to logits ``[B, K]``: one of the
package's backbones, or a model of one's own (a torchvision ResNet with
``ersm.insert_energy_mask``, say). The loss is ``cross_entropy + beta * L_reg`` with ``L_reg``
gathered through :func:`ersm.collect_terms` (``ersm.loss``), so it holds for DataParallel,
DistributedDataParallel and compiled models alike. ``ersm.training.cache`` (the config-driven model cache)
and ``ersm bench`` run on it; there is no second loop.

What one call does, in this order:

1. checks every argument (``ersm.training.arguments``: ``ValueError`` naming the argument and its value, before any work);
2. moves the model to ``device``, builds the optimizer and the learning-rate schedule;
3. with a ``run_dir``: resumes from its verified checkpoint (``ersm.training.checkpoint``), if any;
4. per epoch: draws the epoch's order (and the batch augmentation) from a generator seeded by
   ``(seed, epoch)``, takes one :func:`train_step` per batch, scores ``validation``, appends a
   record to the history and, with a ``run_dir``, writes the checkpoint and ``metrics.jsonl``.

The test split is sealed: ``fit`` takes no test data and scores none (a ``test=`` argument is
refused with ``ValueError``), so that nothing decided during training or tuning (convergence,
trial selection, a glance at the curves) can have seen it. The test split is read by the claim
notebooks only, after training.

Because each epoch's randomness comes from ``(seed, epoch)`` alone, a run stopped after an epoch
and resumed ends with the same weights as an uninterrupted one. The checkpoint also holds torch's
global random state, so layers that draw noise from it (``"hardconcrete"``) resume exactly too.

Data (``data``):

- a tuple ``(images [N, C, H, W] float, labels [N] int64[, masks])`` of tensors: shuffled per
  epoch by ``torch.randperm`` with the epoch's generator, cut into batches of ``batch_size``;
  ``augment(x [B, C, H, W], generator) -> [B, C, H, W]`` (e.g. Cutout) runs on each batch with
  the same generator, on the CPU, before the batch moves to ``device``;
- a map-style ``torch.utils.data.Dataset`` of ``(image [C, H, W], label, ...)`` items: the same
  per-epoch order, fetched through a ``DataLoader`` (``num_workers``). Per-item augmentation
  belongs to the dataset; if it has ``set_epoch(epoch)`` it is called first, which
  ``ersm.data.SeededTransform`` uses to seed each item's transforms by ``(seed, epoch, index)``;
- any other iterable with ``len()`` of ``(x, y, ...)`` batches (a ``DataLoader`` of one's own):
  iterated as it is, its sampler's ``set_epoch(epoch)`` called when present. Its order is then
  the caller's business.

Records (one per epoch): ``epoch``, the means over the epoch's training items of ``loss``,
``cross_entropy``, ``l_reg`` and ``train_accuracy`` (taken in training mode, as the batches
went by); with ``validation``: ``val_accuracy`` and, for a model with an Energy-Mask Layer,
``val_mean_mask`` and ``val_share_mask_below_<t>`` for ``t`` in :data:`MASK_THRESHOLDS` (the
model's first layer, on the validation images); and ``seconds``. Histories written before the
test split was sealed hold ``test_accuracy``, ``mean_mask`` and ``share_mask_below_<t>`` (on the
test split) instead of the ``val_`` mask statistics; they stay as they were, and readers such as
``ersm.study.plots`` take either (:data:`VALIDATION_PREFIX`).

Several processes: inside a ``torch.distributed`` process group of more than one process
(``torchrun``; ``ersm.training.distributed``) the model is wrapped in ``DistributedDataParallel``, each
process takes its share of every global batch, the epoch's loss terms are summed over all
processes, rank 0 alone scores ``validation`` (the record is sent to the others)
and writes ``run_dir``; every process returns the same model.

Numerics: on CUDA the forward pass runs under bfloat16 autocast (``amp=True``) and the loss in
float32; on the CPU everything is float32. The model's memory format is left as it is
(``ersm.training.cache`` builds its models ``channels_last``).

Failures: a non-finite loss, non-finite features (the EnergyMask's check, ``ersm.layer``) or a
non-finite learned ``mask_offset`` stop training with ``FloatingPointError`` naming the epoch
and step; the last good checkpoint stays on disk.

Decisions and deviations:

- ``beta`` is required. A model without any Energy-Mask Layer must get ``beta=0``: a positive
  ``beta`` there is refused (``ValueError``), because its regulariser is identically 0 and the
  call most likely forgot ``insert_energy_mask``. ``ersm.training.cache`` passes ``beta=0`` for dense
  configs.
- ``optimizer="adamw"`` / ``"sgd"`` and ``scheduler="onecycle"`` are the package's recipe
  (AdamW; SGD with Nesterov momentum 0.9; OneCycleLR over all steps with 20% warm-up, peak
  ``lr``). An optimizer of one's own is accepted as an instance over the model's parameters;
  ``"onecycle"`` then peaks at its groups' learning rates, and ``lr`` / ``weight_decay`` must
  be left out. A scheduler instance is stepped once per training step.
- ``train_accuracy`` is measured on the augmented batches in training mode, not in a separate
  evaluation pass.
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ersm.training import distributed
from ersm.training.checkpoint import load_checkpoint, save_checkpoint
from ersm.training.inference import predict
from ersm.collection import collect_terms
from ersm.layer import energy_masks
from ersm.loss import Objective, ersm_objective
from ersm.paths import atomic_write_text
from ersm.training.arguments import check_fit_arguments, describe
from ersm.training.seeding import derived_seed

MASK_THRESHOLDS = (0.05, 0.1, 0.25)
VALIDATION_PREFIX = "val_"  # history keys of the validation scores: val_accuracy, val_mean_mask, ...
DEFAULT_LR, DEFAULT_WEIGHT_DECAY = 3e-3, 5e-4
EVAL_BATCH = 500


class _Refused:
    """The default of ``fit(test=...)``: any value a caller passes is refused (the test split is sealed)."""

    def __repr__(self) -> str:
        return "<refused: training never scores the test split>"


_TEST_REFUSED = _Refused()


class Fitted(NamedTuple):
    """What :func:`fit` returns: the trained model (evaluation mode, on its device) and its records."""

    model: nn.Module
    history: list[dict]


class Step(NamedTuple):
    """One training step's objective (0-d tensors) and ``logits [B, K]``."""

    objective: Objective
    logits: torch.Tensor


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer, *,
               beta: float, scheduler=None, amp: bool = True) -> Step:
    """One optimisation step on ``x [B, C, H, W]`` and ``y [B]`` (both on the model's device).

    Forward (bfloat16 autocast on CUDA when ``amp``) with the Energy-Mask terms collected, the
    objective ``cross_entropy + beta * L_reg`` in float32, a finiteness check, then
    ``zero_grad``, ``backward``, ``optimizer.step()`` and ``scheduler.step()``. ``model`` may be
    wrapped (DataParallel, DistributedDataParallel, ``torch.compile``).

    Raises ``FloatingPointError`` for non-finite features or a non-finite loss, before the
    update (under DistributedDataParallel every process raises together).
    """
    device = x.device
    with collect_terms(model) as collected:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            try:
                logits = model(x)
            except ValueError as error:  # the EnergyMask refuses non-finite features: divergence
                if "non-finite" not in str(error):
                    raise
                raise FloatingPointError(f"non-finite features ({error})") from error
    objective = ersm_objective(logits, y, collected, beta)
    if not _finite_everywhere(model, objective.total):
        raise FloatingPointError(f"non-finite loss ({objective.total.item()})")
    optimizer.zero_grad(set_to_none=True)
    objective.total.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return Step(objective, logits)


def _finite_everywhere(model: nn.Module, total: torch.Tensor) -> bool:
    finite = torch.isfinite(total)
    if isinstance(model, nn.parallel.DistributedDataParallel):  # all processes stop together
        flag = finite.to(torch.float32).reshape(1)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item())
    return bool(finite)


def fit(model: nn.Module, data, *, epochs: int, beta: float, batch_size: int = 64,
        optimizer: str | torch.optim.Optimizer = "adamw", lr: float | None = None, weight_decay: float | None = None,
        scheduler="onecycle", augment: Callable | None = None, seed: int = 0, device=None, amp: bool = True,
        validation=None, test=_TEST_REFUSED, run_dir=None, checkpoint_extra: dict | None = None, name: str = "model",
        progress: bool | None = None, stop_after_epoch: int | None = None, num_workers: int = 0,
        draws_after_scoring: int = 0) -> Fitted:
    """Train ``model`` on ``data`` for ``epochs`` epochs; returns :class:`Fitted` ``(model, history)``.

    Args:
        model: maps ``x [B, C, H, W]`` to logits ``[B, K]``; trained in place.
        data: ``(images [N, C, H, W], labels [N][, masks])`` tensors, a map-style Dataset of
            ``(image [C, H, W], label, ...)`` items, or an iterable of ``(x, y, ...)`` batches
            (module docstring).
        epochs: epochs to train in total (a resumed run trains the missing ones).
        beta: weight of the Energy-Mask regulariser; must be 0 for a model without the layer.
        batch_size: items per step (tensor and Dataset data).
        optimizer, lr, weight_decay, scheduler: the recipe (module docstring); ``lr`` defaults
            to 3e-3 and ``weight_decay`` to 5e-4.
        augment: ``augment(x [B, C, H, W], generator) -> x`` for tensor data (e.g.
            ``functools.partial(ersm.training.augment.cutout, size=16)``-like callables).
        seed: seeds each epoch's order and augmentation, ``(seed, epoch)``. Weights are
            initialised by the caller; for bit-reproducible runs call
            ``ersm.training.seeding.seed_everything`` before building the model.
        device: where to train; ``None`` keeps the model's device, else ``"auto"``, ``"cpu"``,
            ``"cuda"`` or a ``torch.device``.
        amp: bfloat16 autocast on CUDA.
        validation: ``(images, labels[, masks])`` or a Dataset scored after every epoch
            (``val_accuracy`` and, with an Energy-Mask Layer, the ``val_`` mask statistics).
        test: refused, whatever its value (``ValueError``): training never scores the test
            split, so that no training or tuning decision can see it; the test split is for
            the claim notebooks only. Kept in the signature to say so clearly to older callers.
        run_dir: folder for the resumable checkpoint and ``metrics.jsonl``; ``None`` writes nothing.
        checkpoint_extra: more entries for the checkpoint (``ersm.training.cache`` stores its config).
        name: names the run in progress bars and error messages.
        progress: per-epoch progress bars (default: when stderr is a terminal).
        stop_after_epoch: end after this epoch's checkpoint, as if killed (for tests).
        num_workers: DataLoader workers for Dataset data.
        draws_after_scoring: numbers drawn from torch's global CPU generator, and discarded,
            after each epoch's scoring (by the process that scores), in place of evaluations
            that no longer run. ``ersm.training.cache`` passes 1 for Dataset data: there it used to
            score the test split too, whose DataLoader drew one number per epoch, and layers
            that draw training noise from that generator (``"hardconcrete"``) would otherwise
            train to other weights than the ones their config hash names.
    """
    if test is not _TEST_REFUSED:
        raise ValueError(f"test={describe(test)}: fit never scores the test split, so that no training or tuning "
                         "decision (convergence, trial selection, the training curves) can have seen it; the test "
                         "split is for the claim notebooks only, after training. Pass validation=... for per-epoch "
                         "scores (val_accuracy and the val_ mask statistics)")
    plan = check_fit_arguments(model, data, epochs=epochs, beta=beta, batch_size=batch_size, optimizer=optimizer, lr=lr,
                            weight_decay=weight_decay, scheduler=scheduler, augment=augment, seed=seed, device=device,
                            amp=amp, validation=validation, run_dir=run_dir, name=name, progress=progress,
                            stop_after_epoch=stop_after_epoch, num_workers=num_workers,
                            draws_after_scoring=draws_after_scoring)
    device = plan.device
    model.to(device)
    rank, size = distributed.world()
    steps_per_epoch = plan.steps_per_epoch
    optimizer = _optimizer(optimizer, model, lr, weight_decay)
    scheduler = _scheduler(scheduler, optimizer, epochs * steps_per_epoch)
    run_dir = None if run_dir is None else Path(run_dir)
    history: list[dict] = []
    state = load_checkpoint(run_dir, discard=rank == 0) if run_dir is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        history = state["history"]
        _restore_rng(state.get("rng"), device)
    distributed.check_same({"resumed_epochs": len(history)}, what="checkpoint in run_dir")
    trained = model
    if size > 1:
        trained = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    run = _Run(model=model, trained=trained, optimizer=optimizer, scheduler=scheduler, data=data, augment=augment,
               seed=seed, batch_size=batch_size, device=device, amp=amp, beta=float(beta), name=name,
               epochs=epochs, num_workers=num_workers, run_dir=run_dir, rank=rank, world_size=size,
               show=(sys.stderr.isatty() if progress is None else progress) and rank == 0)
    for epoch in range(len(history), epochs):
        started = time.perf_counter()
        record = {"epoch": epoch + 1, **train_one_epoch(run, epoch)}
        distributed.sync_buffers(model)  # every process holds rank 0's model
        if rank == 0:
            if validation is not None:  # accuracy and, with the layer, the mask statistics: val_<key>
                scored = evaluate(model, validation, num_workers)
                record.update({VALIDATION_PREFIX + key: value for key, value in scored.items()})
            for _ in range(draws_after_scoring):  # what a DataLoader's iterator draws for its base seed
                torch.empty((), dtype=torch.int64).random_()
            record["seconds"] = round(time.perf_counter() - started, 2)
        record = distributed.broadcast(record)
        history.append(record)
        if run_dir is not None and rank == 0:
            save_checkpoint(run_dir, {"epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                      "scheduler": None if scheduler is None else scheduler.state_dict(),
                                      "history": history, **(checkpoint_extra or {}), "rng": _rng_state(device),
                                      "world_size": size})
            atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    return Fitted(model.eval(), history)


class _Run(NamedTuple):
    model: nn.Module      # the bare model (checkpoints, mask offsets, evaluation)
    trained: nn.Module    # what the steps call: the model or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: object
    data: object
    augment: Callable | None
    seed: int
    batch_size: int
    device: torch.device
    amp: bool
    beta: float
    name: str
    epochs: int
    num_workers: int
    run_dir: Path | None
    rank: int
    world_size: int
    show: bool


def train_one_epoch(run: _Run, epoch: int) -> dict:
    """One pass over the epoch's batches; returns the means of the loss terms and the accuracy."""
    run.trained.train()
    totals = {"loss": 0.0, "cross_entropy": 0.0, "l_reg": 0.0, "train_accuracy": 0.0}
    seen = 0
    batches = epoch_batches(run.data, epoch, seed=run.seed, batch_size=run.batch_size, augment=run.augment,
                            num_workers=run.num_workers, rank=run.rank, world_size=run.world_size)
    bar = tqdm(batches, desc=f"{run.name} epoch {epoch + 1}/{run.epochs}", disable=not run.show, leave=False,
               file=sys.stderr)
    for step, (x, y) in enumerate(bar):
        x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
        try:
            done = train_step(run.trained, x, y, run.optimizer, beta=run.beta, scheduler=run.scheduler, amp=run.amp)
        except FloatingPointError as error:
            raise FloatingPointError(f"{error} at epoch {epoch + 1}, step {step + 1} of {run.name}; "
                                     f"{_kept(run, epoch)}") from error
        check_mask_offsets(run, epoch, step)
        n = len(y)
        totals["loss"] += done.objective.total.item() * n
        totals["cross_entropy"] += done.objective.cross_entropy.item() * n
        totals["l_reg"] += done.objective.regularizer.item() * n
        totals["train_accuracy"] += (done.logits.argmax(1) == y).sum().item()
        seen += n
    if run.world_size > 1:  # the means over every process's items
        *sums, seen = distributed.sum_over_ranks([*totals.values(), float(seen)])
        totals = dict(zip(totals, sums))
    if seen == 0:
        raise ValueError(f"data gave no batch in epoch {epoch + 1}")
    return {key: value / seen for key, value in totals.items()}


def _kept(run: _Run, epoch: int) -> str:
    if run.run_dir is None:
        return "nothing is kept (run_dir=None)"
    return f"the last good checkpoint (epoch {epoch}) is kept"


def check_mask_offsets(run: _Run, epoch: int, step: int) -> None:
    """Stop when a learned mask offset became non-finite (it would silently turn every mask into NaN)."""
    for name, layer in energy_masks(run.model):
        offset = getattr(layer, "mask_offset", None)
        if offset is not None and not torch.isfinite(offset).item():
            raise FloatingPointError(f"{name}.mask_offset became {offset.item()} at epoch {epoch + 1}, step {step + 1} "
                                     f"of {run.name}; {_kept(run, epoch)}")


def epoch_batches(data, epoch: int, *, seed: int, batch_size: int, augment: Callable | None = None,
                  num_workers: int = 0, rank: int = 0, world_size: int = 1) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """The epoch's ``(x [B, C, H, W], y [B])`` batches on the CPU, in the engine's order (module
    docstring); with ``world_size > 1``, process ``rank``'s share of each (``ersm.training.distributed.shard``)."""
    if isinstance(data, (tuple, list)):
        return _tensor_batches(data[0], data[1], epoch, seed, batch_size, augment, rank, world_size)
    if isinstance(data, Dataset):
        generator = torch.Generator().manual_seed(derived_seed(seed, epoch))
        order = torch.randperm(len(data), generator=generator)
        if hasattr(data, "set_epoch"):
            data.set_epoch(epoch)
        shares = [distributed.shard(batch, rank, world_size).tolist() for batch in order.split(batch_size)]
        loader = DataLoader(data, batch_sampler=shares, num_workers=num_workers)
        return ((items[0], items[1]) for items in loader)
    sampler = getattr(data, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    return ((items[0], items[1]) for items in data)


def _tensor_batches(images, labels, epoch, seed, batch_size, augment, rank, world_size):
    generator = torch.Generator().manual_seed(derived_seed(seed, epoch))
    order = torch.randperm(len(images), generator=generator)
    for index in order.split(batch_size):
        x, y = images[index], labels[index]
        if augment is not None:
            x = augment(x, generator)  # on the whole batch: every process draws the same
        if world_size > 1:
            share = distributed.shard(torch.arange(len(index)), rank, world_size)
            x, y = x[share], y[share]
        yield x, y


@torch.no_grad()
def evaluate(model: nn.Module, data, num_workers: int = 0) -> dict:
    """``accuracy`` of ``model`` on ``(images, labels[, masks])`` or a Dataset of ``(image, label, ...)``
    and, for a model with an Energy-Mask Layer, ``mean_mask`` and ``share_mask_below_<t>`` of its
    first layer's masks ``[N, 1, h, w]``. Runs in evaluation mode on the model's device."""
    if isinstance(data, (tuple, list)):
        out = predict(model, data[0])
        logits, mask, labels = out.logits, out.mask, data[1]
    else:
        parts = [(predict(model, items[0], batch_size=EVAL_BATCH), items[1])
                 for items in DataLoader(data, batch_size=EVAL_BATCH, num_workers=num_workers)]
        logits = torch.cat([out.logits for out, _ in parts])
        labels = torch.cat([torch.as_tensor(y) for _, y in parts])
        mask = None if parts[0][0].mask is None else torch.cat([out.mask for out, _ in parts])
    record = {"accuracy": (logits.argmax(1) == labels).float().mean().item()}
    if mask is not None:
        record["mean_mask"] = mask.mean().item()
        for threshold in MASK_THRESHOLDS:
            record[f"share_mask_below_{threshold}"] = (mask < threshold).float().mean().item()
    return record


# --- recipe ------------------------------------------------------------------------------------

def _optimizer(optimizer, model: nn.Module, lr: float | None, weight_decay: float | None) -> torch.optim.Optimizer:
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    lr = DEFAULT_LR if lr is None else lr
    weight_decay = DEFAULT_WEIGHT_DECAY if weight_decay is None else weight_decay
    if optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)


def _scheduler(scheduler, optimizer: torch.optim.Optimizer, total_steps: int):
    if scheduler != "onecycle":
        return scheduler  # None or the caller's instance
    peaks = [group["lr"] for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks[0] if len(peaks) == 1 else peaks,
                                               total_steps=total_steps, pct_start=0.2)


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore_rng(state: dict | None, device: torch.device) -> None:
    if state is None:  # a checkpoint from before the state was saved
        return
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
