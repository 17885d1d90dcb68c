"""The training configuration: one frozen dataclass, validated before any work starts.

A config names everything that decides the trained weights, so its hash names the cache entry
(``runs/cache/<hash>/``). Change a field and you get another model, never a stale one.

The hash also covers what the config does not say but the weights depend on: the torch version,
the device kind the config resolves to (CUDA trains in bfloat16 autocast, the CPU in float32),
and on the CPU the kernel mode (``ersm/portability/numerics.py``), so a GPU-trained model is never served on
the CPU, nor a natively trained one in portable mode. Fields that cannot change a model are left
out of it, so that equal models share one entry: the Energy-Mask fields of a dense model,
``cutout_size`` without Cutout, ``width`` of a ResNet, ``iterations`` of any variant but
meanfield, ``test_seed`` (the engine never reads the test split), the cluttered-digits fields (``canvas``, ``clutter``,
``background_label_correlation``) of a real dataset, and ``device`` itself (only what it
resolves to counts). ``dataset`` and ``pretrained`` are left out at their defaults
(``"cluttered_digits"``, ``False``), so every config written before they existed keeps its hash
and its cache entry; any other value enters the hash.

The dataset decides the input channels, the classes and the image size (:data:`DATASETS`):

- ``"cluttered_digits"``: the offline benchmark (1 channel, 10 classes, ``canvas`` px), no
  normalisation and no augmentation beyond ``augmentation``;
- ``"cifar10"``: 3 channels, 10 classes, 32 px; normalised by its per-channel mean and std,
  random crop (padding 4) and horizontal flip in training;
- ``"oxford_pet"``: 3 channels, 37 breeds, 224 px; ImageNet mean and std, random resized crop
  and flip in training, a centre crop in evaluation (``ersm.data.splits``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ersm.portability import numerics
from ersm.data.registry import DEFAULT_DATASET, IMAGENET_MEAN, IMAGENET_STD, REGISTRY, DatasetSpec  # noqa: F401
from ersm.layer import VARIANTS
from ersm.training.devices import DEVICES, resolve as resolve_device

MODELS = ("dense", *VARIANTS)  # a dense backbone, or its twin with one Energy-Mask variant (ersm.layer.VARIANTS)
BACKBONES = ("small_cnn", "resnet20", "resnet18", "resnet18_imagenet", "resnet50_imagenet")
PRETRAINABLE = ("resnet18_imagenet", "resnet50_imagenet")  # torchvision has ImageNet weights for these
AUGMENTATIONS = ("none", "cutout")
OPTIMIZERS = ("adamw", "sgd")
CACHE_VERSION = 4  # bump when training code changes what a config produces (2: channels_last; 3: kernel mode;
                   # 4: the validation split took 15% of the training digits, val_accuracy recorded per epoch)
ERSM_ONLY_FIELDS = ("insert_after", "proj_dim", "lambda_unary", "lambda_pair", "neighbourhood", "beta", "iterations")
DIGITS_ONLY_FIELDS = ("canvas", "clutter", "background_label_correlation")


class _Specs(Mapping):
    """``DATASETS[name]``: the spec of a dataset, read from its registry entry when asked (so an
    entry added to ``ersm.data.registry.REGISTRY`` is a dataset here too)."""

    def __getitem__(self, name: str) -> DatasetSpec:
        return REGISTRY[name].spec

    def __iter__(self):
        return iter(REGISTRY)

    def __len__(self) -> int:
        return len(REGISTRY)


DATASETS = _Specs()  # every dataset's spec comes from its registry entry (ersm/data/registry.py names them all)


@dataclass(frozen=True)
class TrainConfig:
    # --- model: a dense backbone or its ERSM twin ---
    backbone: str = "small_cnn"     # "small_cnn", "resnet20" (CIFAR ResNet-20), "resnet18" (CIFAR stem), or torchvision's "resnet18_imagenet" /
                                    # "resnet50_imagenet" (ImageNet stem, e.g. for oxford_pet)
    pretrained: bool = False        # ImageNet weights (the *_imagenet backbones only; downloaded by torchvision)
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
    # --- data ---
    dataset: str = "cluttered_digits"  # "cluttered_digits" (offline), "cifar10" or "oxford_pet" (downloaded)
    # the embedded cluttered-digits benchmark (ignored by the real datasets):
    canvas: int = 48
    n_train: int = 3000             # training images (real datasets: a seeded subset of the training split)
    n_test: int = 1000              # test images (real datasets: the whole test split when equal to its size)
    n_val: int = 500                # validation images (held-out training items) scored after every epoch
    clutter: int = 4                # up to this many distractor fragments per image
    background_label_correlation: float = 0.0  # rho of the spurious split (training set only)
    data_seed: int = 0
    test_seed: int | None = None    # composition seed of the digits' test split (None: data_seed + 1); the confirm
                                    # run's is sealed (ersm.data.sealed). Never in the hash: training never reads it
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
                   "backbone": BACKBONES, "neighbourhood": (4, 8), "device": DEVICES, "dataset": tuple(DATASETS)}
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
        if self.test_seed is not None and not 0 <= self.test_seed:
            raise ValueError(f"test_seed={self.test_seed!r} must be None or an integer >= 0")
        if self.test_seed is not None and not REGISTRY[self.dataset].composed:
            raise ValueError(f"test_seed={self.test_seed!r} applies to a composed dataset (cluttered_digits) only, not "
                             f"dataset={self.dataset!r}, whose test split is the official one")
        if not REGISTRY[self.dataset].background_swap and self.background_label_correlation != 0.0:
            raise ValueError(f"background_label_correlation={self.background_label_correlation!r} applies to a dataset "
                             f"with background swaps (cluttered_digits) only, not dataset={self.dataset!r}")
        if self.pretrained and self.backbone not in PRETRAINABLE:
            raise ValueError(f"pretrained=True needs one of the backbones {PRETRAINABLE}; backbone={self.backbone!r} "
                             "has no pretrained weights")
        if self.pretrained and self.in_channels != 3:
            raise ValueError(f"pretrained=True: the ImageNet weights take 3 input channels, but dataset={self.dataset!r} "
                             f"has {self.in_channels}")

    @property
    def is_ersm(self) -> bool:
        return self.model != "dense"

    @property
    def spec(self) -> DatasetSpec:
        """The dataset's channels, classes, image size and normalisation."""
        return DATASETS[self.dataset]

    @property
    def in_channels(self) -> int:
        return self.spec.channels

    @property
    def num_classes(self) -> int:
        return self.spec.classes

    @property
    def image_size(self) -> int:
        """The side of the (square) training and evaluation images in px."""
        return self.canvas if self.spec.image_size is None else self.spec.image_size

    def energy_mask_kwargs(self) -> dict | None:
        """EnergyMask arguments for an ERSM model, ``None`` for a dense one."""
        if not self.is_ersm:
            return None
        return dict(proj_dim=self.proj_dim, lambda_unary=self.lambda_unary, lambda_pair=self.lambda_pair,
                    neighbourhood=self.neighbourhood, variant=self.model, iterations=self.iterations)

    def to_dict(self) -> dict:
        """Every field, less ``test_seed`` at its default (``None``): the config files and checkpoints
        written before the field existed keep their exact content."""
        values = dataclasses.asdict(self)
        if values["test_seed"] is None:
            del values["test_seed"]
        return values

    def weight_fields(self) -> dict:
        """The fields that can change this config's trained model (see the module docstring)."""
        fields = self.to_dict()
        unused = (("device", "test_seed") + (ERSM_ONLY_FIELDS if not self.is_ersm else ())
                  + (("cutout_size",) if self.augmentation != "cutout" else ())
                  + (("width",) if self.backbone != "small_cnn" else ())
                  + (("iterations",) if self.model != "meanfield" else ())
                  + (("dataset",) if self.dataset == DEFAULT_DATASET else DIGITS_ONLY_FIELDS)
                  + (("pretrained",) if not self.pretrained else ()))
        return {name: value for name, value in fields.items() if name not in unused}

    def torch_device(self):
        """The device this config trains and evaluates on (``device`` resolved on this machine)."""
        return resolve_device(self.device)

    def digest(self, machine: tuple[str, str | None] | None = None) -> str:
        """Short stable hash of the weight fields, CACHE_VERSION, torch version, device kind and CPU kernels.

        ``machine``: ``(device kind, CPU kernels)`` of another machine, e.g. ``("cpu", "native")``
        or ``("cuda", None)``: the key this config has there (default: this machine's).
        """
        if machine is None:
            device = self.torch_device().type
            kernels = numerics.kernel_mode() if device == "cpu" else None
        else:
            device, kernels = machine
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
        elif not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            name = getattr(expected, "__name__", str(expected))
            raise ValueError(f"{field.name}={value!r} has type {type(value).__name__}; expected {name}")


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
