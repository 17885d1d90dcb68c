"""The training configuration: one frozen dataclass, validated before any work starts.

A config names everything that decides the trained weights, so its hash names the cache entry
(``runs/cache/<hash>/``). Change a field and you get another model, never a stale one.

The hash also covers what the config does not say but the weights depend on: the torch version,
the device kind the config resolves to (CUDA trains in bfloat16 autocast, the CPU in float32),
and on the CPU the kernel mode (``ersm/numerics.py``), so a GPU-trained model is never served on
the CPU, nor a natively trained one in portable mode. Fields that cannot change a model are left
out of it, so that equal models share one entry: the Energy-Mask fields of a dense model,
``cutout_size`` without Cutout, ``width`` of a ResNet, ``iterations`` of any variant but
meanfield, and ``device`` itself (only what it
resolves to counts).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass

import torch

from ersm import numerics
from ersm.seeding import DEVICES, resolve_device

MODELS = ("dense", "paper", "calibrated", "meanfield", "hardconcrete")
AUGMENTATIONS = ("none", "cutout")
OPTIMIZERS = ("adamw", "sgd")
CACHE_VERSION = 4  # bump when training code changes what a config produces (2: channels_last; 3: kernel mode;
                   # 4: the validation split took 15% of the training digits, val_accuracy recorded per epoch)
ERSM_ONLY_FIELDS = ("insert_after", "proj_dim", "lambda_unary", "lambda_pair", "neighbourhood", "beta", "iterations")


@dataclass(frozen=True)
class TrainConfig:
    # --- model: a dense backbone or its ERSM twin ---
    backbone: str = "small_cnn"     # "small_cnn" (1-channel digits) or "resnet18" (CIFAR stem)
    width: int = 32                 # SmallCNN stem channels (the ci smoke profile uses 16)
    model: str = "dense"            # "dense", "paper" (ERSM as written), or the variants "calibrated" (mask in (0, 1)),
                                    # "meanfield" (pairwise term shapes the mask), "hardconcrete" (gates with exact zeros)
    insert_after: str = "layer2"    # stage after which the Energy-Mask Layer sits
    proj_dim: int = 16              # d, width of the projection P
    lambda_unary: float = 1.0
    lambda_pair: float = 1.0
    neighbourhood: int = 8
    iterations: int = 3             # mean-field updates T (meanfield only)
    beta: float = 1.0               # weight of L_reg in the loss (ignored by dense models)
    # --- data: the embedded cluttered-digits benchmark ---
    canvas: int = 48
    n_train: int = 3000
    n_test: int = 1000
    n_val: int = 500                # validation images (held-out training digits) scored after every epoch
    clutter: int = 4                # up to this many distractor fragments per image
    background_label_correlation: float = 0.0  # rho of the spurious split (training set only)
    data_seed: int = 0
    # --- recipe ---
    augmentation: str = "none"      # "none" or "cutout"
    cutout_size: int = 16
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 5e-4
    epochs: int = 6
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"            # "auto" (CUDA when present), "cpu" or "cuda"

    def __post_init__(self) -> None:
        check_types(self)
        choices = {"model": MODELS, "augmentation": AUGMENTATIONS, "optimizer": OPTIMIZERS,
                   "backbone": ("small_cnn", "resnet18"), "neighbourhood": (4, 8),
                   "device": DEVICES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} must be one of {allowed}")
        if self.iterations < 0:
            raise ValueError(f"iterations={self.iterations!r} must be >= 0")
        for name in ("width", "proj_dim", "n_train", "n_test", "n_val", "epochs", "batch_size", "cutout_size", "canvas"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 1")
        for name in ("lambda_unary", "lambda_pair", "beta", "lr", "weight_decay", "clutter", "seed", "data_seed"):
            value = getattr(self, name)
            if not 0 <= value < float("inf"):
                raise ValueError(f"{name}={value!r} must be finite and >= 0")
        if self.insert_after not in ("layer1", "layer2", "layer3", "layer4"):
            raise ValueError(f"insert_after={self.insert_after!r} must be one of layer1..layer4")
        if not 0.0 <= self.background_label_correlation <= 1.0:
            raise ValueError(f"background_label_correlation={self.background_label_correlation!r} must lie in [0, 1]")

    @property
    def is_ersm(self) -> bool:
        return self.model != "dense"

    def energy_mask_kwargs(self) -> dict | None:
        """EnergyMask arguments for an ERSM model, ``None`` for a dense one."""
        if not self.is_ersm:
            return None
        return dict(proj_dim=self.proj_dim, lambda_unary=self.lambda_unary, lambda_pair=self.lambda_pair,
                    neighbourhood=self.neighbourhood, variant=self.model, iterations=self.iterations)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def weight_fields(self) -> dict:
        """The fields that can change this config's trained model (see the module docstring)."""
        fields = self.to_dict()
        unused = (("device",) + (ERSM_ONLY_FIELDS if not self.is_ersm else ())
                  + (("cutout_size",) if self.augmentation != "cutout" else ())
                  + (("width",) if self.backbone != "small_cnn" else ())
                  + (("iterations",) if self.model != "meanfield" else ()))
        return {name: value for name, value in fields.items() if name not in unused}

    def torch_device(self):
        """The device this config trains and evaluates on (``device`` resolved on this machine)."""
        return resolve_device(self.device)

    def digest(self) -> str:
        """Short stable hash of the weight fields, CACHE_VERSION, torch version, device kind and CPU kernels."""
        device = self.torch_device().type
        kernels = numerics.kernel_mode() if device == "cpu" else None
        payload = json.dumps({"version": CACHE_VERSION, "torch": torch.__version__, "device": device, "kernels": kernels,
                              **self.weight_fields()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def replace(self, **changes) -> "TrainConfig":
        return from_dict({**self.to_dict(), **changes})


def from_dict(values: dict) -> TrainConfig:
    """A config from a mapping; unknown keys are refused with the list of known ones."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; known keys are {sorted(known)}")
    return TrainConfig(**values)


def check_types(config: TrainConfig) -> None:
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(config):
        value, expected = getattr(config, field.name), hints[field.name]
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(config, field.name, float(value))  # 1 is a fine float
        elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ValueError(f"{field.name}={value!r} has type {type(value).__name__}; expected {expected.__name__}")


def parse_assignment(text: str) -> tuple[str, object]:
    """``"key=value"`` from the command line, the value parsed as JSON when it parses."""
    if "=" not in text:
        raise ValueError(f"--set {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value
