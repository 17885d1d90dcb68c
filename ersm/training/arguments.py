"""The argument checks of :func:`ersm.fit`: every argument checked before any work starts.

One job, apart from the training loop (``ersm.training.engine``): ``check_fit_arguments`` refuses
a bad argument with a ``ValueError`` that names it and its value, and returns what the loop needs
to know of them (``FitPlan``: the device and the steps per epoch). ``check_data`` knows the three
forms of data ``fit`` takes: ``(images [N, C, H, W], labels [N][, masks])`` tensors, a map-style
Dataset of ``(image [C, H, W], label, ...)`` items, or an iterable of batches with a length.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.data import Dataset

from ersm.checks import is_integer, is_number
from ersm.layer import energy_masks
from ersm.training import devices

OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("onecycle", None)


class FitPlan(NamedTuple):
    device: torch.device
    steps_per_epoch: int


def describe(value) -> str:
    """A short description of an argument's value for an error message (never a tensor's contents)."""
    if isinstance(value, torch.Tensor):
        return f"Tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of {len(value)} item(s)"
    if value is None or isinstance(value, (str, int, float, bool)):
        return repr(value)
    return type(value).__name__


def check_fit_arguments(model, data, *, epochs, beta, batch_size, optimizer, lr, weight_decay, scheduler, augment, seed,
                     device, amp, validation, run_dir, name, progress, stop_after_epoch, num_workers,
                     draws_after_scoring) -> FitPlan:
    """Every argument of :func:`fit`, checked before any work; returns the device and steps per epoch."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model={type(model).__name__} must be a torch.nn.Module")
    for argument, value, low in (("epochs", epochs, 1), ("batch_size", batch_size, 1), ("seed", seed, 0),
                                 ("num_workers", num_workers, 0), ("draws_after_scoring", draws_after_scoring, 0)):
        if not is_integer(value, numpy=False) or value < low:
            raise ValueError(f"{argument}={value!r} must be an integer >= {low}")
    if stop_after_epoch is not None and (not is_integer(stop_after_epoch, numpy=False) or stop_after_epoch < 1):
        raise ValueError(f"stop_after_epoch={stop_after_epoch!r} must be None or an integer >= 1")
    if not is_number(beta, numpy=False) or beta < 0:
        raise ValueError(f"beta={beta!r} must be a finite number >= 0")
    if beta > 0 and not energy_masks(model):
        raise ValueError(f"beta={beta!r} but the model holds no EnergyMask, so there is no regulariser to weigh; "
                         "pass beta=0 for a dense model, or add the layer with ersm.insert_energy_mask")
    if isinstance(optimizer, torch.optim.Optimizer):
        if lr is not None or weight_decay is not None:
            given = "lr" if lr is not None else "weight_decay"
            raise ValueError(f"{given}={lr if lr is not None else weight_decay!r} applies to optimizer='adamw' or 'sgd'; "
                             "set it in the optimizer instance instead")
        owned = {id(p) for p in model.parameters()}
        if not any(id(p) in owned for group in optimizer.param_groups for p in group["params"]):
            raise ValueError("optimizer holds none of the model's parameters")
    elif optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r} must be one of {OPTIMIZERS} or a torch.optim.Optimizer")
    if lr is not None and (not is_number(lr, numpy=False) or lr <= 0):
        raise ValueError(f"lr={lr!r} must be a finite number > 0")
    if weight_decay is not None and (not is_number(weight_decay, numpy=False) or weight_decay < 0):
        raise ValueError(f"weight_decay={weight_decay!r} must be a finite number >= 0")
    if scheduler not in SCHEDULERS and not hasattr(scheduler, "step"):
        raise ValueError(f"scheduler={scheduler!r} must be 'onecycle', None or a learning-rate scheduler")
    if augment is not None and not callable(augment):
        raise ValueError(f"augment={augment!r} must be callable: augment(x, generator) -> x")
    for argument, value in (("amp", amp), ("progress", progress)):
        if not isinstance(value, bool) and not (argument == "progress" and value is None):
            raise ValueError(f"{argument}={value!r} must be a bool")
    if not isinstance(name, str):
        raise ValueError(f"name={name!r} must be a str")
    if run_dir is not None and not isinstance(run_dir, (str, Path)):
        raise ValueError(f"run_dir={run_dir!r} must be a path or None")
    device = devices.parse(device, model)
    steps = check_data("data", data, model, batch_size, training=True)
    if augment is not None and not isinstance(data, (tuple, list)):
        raise ValueError(f"augment={augment!r} applies to tensor data only; put per-item augmentation into the "
                         f"Dataset (data={type(data).__name__}), e.g. ersm.data.SeededTransform")
    if validation is not None:
        check_data("validation", validation, model, batch_size, training=False)
    return FitPlan(device, steps)


def check_channels(what: str, found: int, shape: str, channels: int | None) -> None:
    """Refuse images whose channel count differs from the model's first convolution (``None``: unknown)."""
    if channels is not None and found != channels:
        raise ValueError(f"{what} have {found} channels{shape}, but the model's first convolution expects {channels}")


def input_channels(model: nn.Module) -> int | None:
    """The channels the model's first convolution expects (``None`` without a Conv2d)."""
    first = next((module for module in model.modules() if isinstance(module, nn.Conv2d)), None)
    return None if first is None else first.in_channels


def _output_classes(model: nn.Module) -> int | None:
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    return None if last is None else last.out_features


def check_data(argument: str, data, model: nn.Module, batch_size: int, training: bool) -> int:
    """Shapes, dtypes, channels and labels of ``data``; returns its steps per epoch."""
    channels = input_channels(model)
    if isinstance(data, torch.Tensor):
        raise ValueError(f"{argument}=Tensor of shape {tuple(data.shape)}: pass (images, labels) tensors, a Dataset "
                         "or an iterable of (x, y) batches")
    if isinstance(data, (tuple, list)):
        if len(data) not in (2, 3) or not all(isinstance(t, torch.Tensor) for t in data[:2]):
            raise ValueError(f"{argument} must be (images [N, C, H, W], labels [N][, masks]) tensors, a Dataset or "
                             f"an iterable of batches; got a {type(data).__name__} of {len(data)} item(s)")
        images, labels = data[0], data[1]
        if images.dim() != 4 or not images.is_floating_point():
            raise ValueError(f"{argument}: images must be a float tensor [N, C, H, W], got {images.dtype} of shape "
                             f"{tuple(images.shape)}")
        if labels.dim() != 1 or labels.dtype != torch.int64 or len(labels) != len(images):
            raise ValueError(f"{argument}: labels must be an int64 tensor [N] with N={len(images)}, got {labels.dtype} "
                             f"of shape {tuple(labels.shape)}")
        if len(images) == 0:
            raise ValueError(f"{argument} holds no images")
        classes = _output_classes(model)
        if classes is not None and (labels.min() < 0 or labels.max() >= classes):
            raise ValueError(f"{argument}: labels run from {labels.min().item()} to {labels.max().item()}, but the "
                             f"model has {classes} outputs")
        check_channels(f"{argument}: images", images.shape[1], f" (shape {tuple(images.shape)})", channels)
        return math.ceil(len(images) / batch_size)
    if isinstance(data, Dataset):
        if not hasattr(data, "__len__"):
            raise ValueError(f"{argument}={type(data).__name__} must be a map-style Dataset with a length")
        if len(data) == 0:
            raise ValueError(f"{argument}={type(data).__name__} holds no items")
        image = data[0][0]
        if not isinstance(image, torch.Tensor) or image.dim() != 3:
            raise ValueError(f"{argument}={type(data).__name__}: items must start with an image tensor [C, H, W], "
                             f"got {type(image).__name__}")
        check_channels(f"{argument}={type(data).__name__}: images", image.shape[0], "", channels)
        return math.ceil(len(data) / batch_size)
    if not training or not isinstance(data, Iterable) or not hasattr(data, "__len__"):
        kinds = "tensors or a Dataset" if not training else "tensors, a Dataset or an iterable of batches with len()"
        raise ValueError(f"{argument}={type(data).__name__} must be {kinds}")
    if len(data) == 0:
        raise ValueError(f"{argument}={type(data).__name__} gives no batches")
    return len(data)
