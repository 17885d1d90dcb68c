"""Where a model trains and runs: every device name is resolved here, and nowhere else.

- :func:`resolve` turns a config's ``device`` (``"auto"``, ``"cpu"`` or ``"cuda"``; :data:`DEVICES`)
  into a ``torch.device``: ``"auto"`` is CUDA when torch sees a GPU, else the CPU; ``"cuda"``
  without a GPU is refused by name.
- :func:`parse` is what ``ersm.fit`` accepts: ``None`` (where the model's parameters are), a
  ``torch.device``, one of :data:`DEVICES`, or any device string torch knows (``"cuda:1"``).
- :func:`for_process` is the device of this process: under ``torchrun`` with CUDA, the GPU of
  its ``LOCAL_RANK`` (``ersm.training.distributed.local_device``), else :func:`resolve`'s answer.
"""
from __future__ import annotations

import torch
from torch import nn

DEVICES = ("auto", "cpu", "cuda")


def resolve(name: str = "auto") -> torch.device:
    """``"auto"``: CUDA when present, else the CPU; ``"cuda"`` without a GPU is refused."""
    if name not in DEVICES:
        raise ValueError(f"device={name!r} must be one of {DEVICES}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for, but torch sees no CUDA device on this machine")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def parse(device, model: nn.Module | None = None) -> torch.device:
    """``device`` as ``ersm.fit`` takes it (module docstring); ``None`` reads ``model``'s parameters."""
    if device is None:
        parameter = next(model.parameters(), None) if model is not None else None
        if parameter is None:
            raise ValueError("model has no parameters to train")
        return parameter.device
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise ValueError(f"device={device!r} must be None, a str or a torch.device")
    if device in DEVICES:
        return resolve(device)
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device={device!r} is not a device ({error})") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for, but torch sees no CUDA device on this machine")
    return resolved


def for_process(name: str = "auto") -> torch.device:
    """This process's device for a config's ``device`` name (module docstring)."""
    from ersm.training.distributed import local_device
    return local_device(resolve(name))
