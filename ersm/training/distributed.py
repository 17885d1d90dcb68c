"""Several processes, one model: ``torchrun --nproc_per_node N -m ersm train ...`` (DDP).

``torchrun`` starts N copies of the command with ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in
their environment. ``ersm train`` then joins them into one process group (:func:`init_from_env`:
NCCL when the config trains on CUDA, one GPU per process, ``cuda:LOCAL_RANK``; gloo on the CPU)
and trains the config's one model with ``DistributedDataParallel`` (``ersm.training.engine.fit``):

- **Start-up check.** Every process sends its config to every other (:func:`check_same`); if
  they differ, every process raises ``ValueError`` naming the differing fields and their values
  per rank, before any data is read or any step taken.
- **Sharding.** Each epoch's order is the single-process one (``(seed, epoch)``); every global
  batch of ``batch_size`` items is dealt out like ``DistributedSampler`` does it: process ``r``
  takes items ``r, r + N, ...`` of the batch, and a batch smaller than ``N`` is padded by
  repeating its items. So every process takes the same number of steps, the learning-rate
  schedule is the single-process one, and an epoch still covers every item once (up to that
  padding). Tensor data is augmented (Cutout) on the whole batch before it is dealt out, and
  Dataset items are augmented with seeds of ``(seed, epoch, index)``: the N processes together
  see exactly the images one process would.
- **Gradients** are averaged by DDP, so the step is the single-process step on the whole batch,
  except that BatchNorm normalises each process's share of the batch with its own statistics
  (no SyncBatchNorm, as in plain DDP) and that unequal shares (the last batch) weigh equally.
  The weights therefore differ from a single-process run's; they do not depend on anything else.
- **Files.** Only rank 0 writes: ``config.json``, checkpoints, ``metrics.jsonl``. Every rank
  reads the same checkpoint to resume (so the run folder must be on a shared file system across
  machines); only rank 0 discards a corrupt one. Rank 0 scores validation (never the test split) after
  each epoch and sends the record to the others; the loss terms and training accuracy are summed
  over all processes. BatchNorm buffers are copied from rank 0 after every epoch, so every
  process returns the same model.
- **Downloads.** Rank 0 reads (and, if needed, downloads) the dataset first; the others wait.
- **Cache.** The world size is not part of the config's hash: a model trained on N GPUs is
  served to the notebooks' single-process ``get_model`` (the checkpoint records ``world_size``).

A process that fails alone (non-finite features in its share, say) leaves the others waiting in
a collective; ``torchrun`` then stops them all. A non-finite loss and a non-finite mask offset
are seen by all processes together (the loss's finiteness is all-reduced every step).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when unset)."""
    raw = os.environ.get("WORLD_SIZE", "1")
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"WORLD_SIZE={raw!r} must be an integer >= 1")
    return int(raw)


def init_from_env(device: torch.device) -> bool:
    """Join torchrun's process group when ``WORLD_SIZE > 1``; returns whether this call joined it.

    ``device`` is where the config trains: CUDA uses NCCL and ``cuda:LOCAL_RANK``, the CPU gloo.
    """
    if env_world_size() == 1 or dist.is_initialized():
        return False
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} CUDA device(s); "
                             "start at most that many processes per node")
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def local_device(device: torch.device) -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` for CUDA in a process group, else ``device``."""
    if device.type == "cuda" and world()[1] > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def check_same(values: dict, what: str = "config") -> None:
    """Raise ``ValueError`` on every rank unless every rank passed equal ``values`` (a flat dict)."""
    rank, size = world()
    if size == 1:
        return
    gathered: list = [None] * size
    dist.all_gather_object(gathered, values)
    differing = sorted({key for other in gathered[1:] for key in set(gathered[0]) | set(other)
                        if gathered[0].get(key) != other.get(key)})
    if differing:
        details = "; ".join(f"{key}: " + ", ".join(f"rank {r} {g.get(key)!r}" for r, g in enumerate(gathered))
                            for key in differing)
        raise ValueError(f"the {size} workers disagree on the {what} in field(s) {differing} ({details}); "
                         "start every worker with the same arguments")


def main_first(function):
    """``function()`` on rank 0 first, then (after a barrier) on the others: downloads, cache files."""
    rank, size = world()
    if size == 1:
        return function()
    if rank != 0:
        dist.barrier()
    result = function()
    if rank == 0:
        dist.barrier()
    return result


def shard(index: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    """Process ``rank``'s share of one global batch ``index [B]``: items ``rank, rank + size, ...``,
    the batch first padded by repeating it when ``B < size`` (as ``DistributedSampler`` pads)."""
    if size == 1:
        return index
    if len(index) < size:
        index = index.repeat(-(-size // len(index)))[:size]
    return index[rank::size]


def sum_over_ranks(values: list[float]) -> list[float]:
    """Element-wise sums over all ranks (float64 on the CPU for gloo, on this GPU for NCCL)."""
    if world()[1] == 1:
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast(value, src: int = 0):
    """``value`` of rank ``src`` on every rank (any picklable object)."""
    if world()[1] == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def sync_buffers(model: nn.Module, src: int = 0) -> None:
    """Copy every buffer (BatchNorm statistics) of rank ``src`` into this rank's ``model``."""
    if world()[1] == 1:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=src)
