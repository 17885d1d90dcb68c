"""The data of a :class:`~ersm.training.config.TrainConfig`, split by split: what training and the notebooks read.

- :func:`load_split` ``(config, split)``: ``(images [N, C, H, W] float32 in [0, 1], labels [N]
  int64, masks [N, 1, H, W] bool)`` of ``split`` (``"train"``, ``"validation"`` or ``"test"``),
  un-augmented, at the config's image size. The notebooks' datasets.
- :func:`training_set` / :func:`evaluation_set`: what ``ersm.training.cache`` hands to ``ersm.fit``:
  tensors for the cluttered digits (generated in memory), Datasets for the real ones (decoded
  item by item, so that nothing like Pets' 2 GB of float pixels has to sit in memory).
- :func:`split_metadata`: per-item facts of a cluttered-digits split.

Splits:

- ``cluttered_digits``: generated (``ClutteredDigits``). Training: ``data_seed`` with the
  spurious correlation ``background_label_correlation``; validation: held-out training digits,
  ``data_seed + 2``, drawn like the training set; test: the test digits, ``data_seed + 1``,
  without correlation (``background`` picks the aligned/swapped test sets), composed with
  ``test_seed`` instead when the config sets one: the ``confirm`` run's sealed test split,
  which these functions refuse to compose until a claim notebook opens it
  (``ersm.data.sealed``). ``background`` also picks aligned/swapped validation sets (the
  validation digits; rules v3 chooses the background rho on them).
- ``cifar10`` and ``oxford_pet``: the official training split (CIFAR-10's 50,000 images, Pets'
  ``trainval`` 3,680) is cut by a permutation drawn from ``numpy.random.default_rng([data_seed,
  1])``: its first ``n_val`` items are the validation split, the next ``n_train`` the training
  split (disjoint; not stratified). The test split is the official one, whole when ``n_test``
  equals its size, else ``n_test`` items drawn with ``default_rng([data_seed, 2])``. Indices
  are kept in ascending order. Asking for more items than a split holds is a ``ValueError``.
  The files come from ``ersm.paths.data_dir()`` (``ERSM_DATA``, else ``data/``); missing files
  are downloaded once, else :class:`~ersm.data.DatasetNotAvailable` names what to put where.

Augmentation (training split only; torchvision ``transforms.v2`` on ``[C, H, W]`` tensors),
then Cutout when ``augmentation="cutout"``:

- ``cifar10``: ``RandomCrop(32, padding=4)`` (zero padding) and ``RandomHorizontalFlip()``, the
  standard recipe (He et al. 2016; DeVries and Taylor 2017);
- ``oxford_pet``: images are read squashed to 256 x 256 px (``OxfordPetMasked``; the aspect
  ratio is not kept), then ``RandomResizedCrop(224)`` and ``RandomHorizontalFlip()`` in
  training, ``CenterCrop(224)`` of image and mask alike in evaluation;
- ``cluttered_digits``: nothing but Cutout (applied by the engine per batch, as before).

Each item's random transform is drawn from torch's generator seeded by ``(seed, epoch, index)``
(:class:`SeededTransform`), so an epoch's images do not depend on the DataLoader's worker count,
on the process that fetches them (``torchrun``) or on an interruption.

Normalisation is not applied here: it is the model's first stage (``ersm.models.Normalize``,
built by ``ersm.training.cache.make_model`` from :data:`ersm.training.config.DATASETS`), so every tensor here
stays in ``[0, 1]``.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ersm.training.augment import Cutout
from ersm.training.config import TrainConfig
from ersm.paths import data_dir
from ersm.training.seeding import derived_seed

from .digits import ClutteredDigits
from .sealed import check_readable
from .registry import entry

SPLITS = ("train", "validation", "test")


# --- cluttered digits ------------------------------------------------------------------------

def _dataset(split: str, n: int, canvas: int, clutter: int, rho: float, seed: int, background: str) -> ClutteredDigits:
    return ClutteredDigits(split, n, canvas=canvas, seed=seed, clutter=(0, clutter), background=background,
                           background_label_correlation=rho)


@functools.lru_cache(maxsize=8)
def _digits(*args):
    return _dataset(*args).tensors()


def _digit_args(config: TrainConfig, split: str, background: str) -> tuple:
    """A split's ``ClutteredDigits`` arguments (the test split: no spurious correlation, its own seed)."""
    if split == "train":
        return ("train", config.n_train, config.canvas, config.clutter, config.background_label_correlation,
                config.data_seed, "random")
    if split == "validation":  # another background mode replaces the drawn one (rho then plays no part)
        rho = config.background_label_correlation if background == "random" else 0.0
        return ("validation", config.n_val, config.canvas, config.clutter, rho, config.data_seed + 2, background)
    seed = config.data_seed + 1 if config.test_seed is None else config.test_seed
    return ("test", config.n_test, config.canvas, config.clutter, 0.0, seed, background)


# --- real datasets ---------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _base(dataset: str, root: str, part: str, download: bool) -> Dataset:
    """The whole official split ``part`` ("train" or "test") of a file-based dataset, read once per process."""
    return entry(dataset).open_part(root, part, download)


def _real_base(config: TrainConfig, split: str, download: bool) -> Dataset:
    return _base(config.dataset, str(data_dir()), "test" if split == "test" else "train", download)


def split_indices(config: TrainConfig, split: str, total: int) -> np.ndarray:
    """The indices (ascending) of ``split`` in the official split of ``total`` items (module docstring)."""
    if split == "test":
        if config.n_test > total:
            raise ValueError(f"n_test={config.n_test} exceeds the {total} images of the {config.dataset} test split")
        if config.n_test == total:
            return np.arange(total)
        return np.sort(np.random.default_rng([config.data_seed, 2]).permutation(total)[:config.n_test])
    if config.n_val + config.n_train > total:
        raise ValueError(f"n_train={config.n_train} and n_val={config.n_val} exceed the {total} images of the "
                         f"{config.dataset} training split")
    order = np.random.default_rng([config.data_seed, 1]).permutation(total)
    chosen = order[:config.n_val] if split == "validation" else order[config.n_val:config.n_val + config.n_train]
    return np.sort(chosen)


def train_transform(config: TrainConfig):
    """The training split's per-item augmentation of a file-based dataset, ``[C, H, W] -> [C, S, S]``:
    its registry entry's steps, then Cutout when the config asks for it."""
    steps = list(entry(config.dataset).train_steps(config.image_size))
    if config.augmentation == "cutout":
        steps.append(Cutout(config.cutout_size))
    return v2.Compose(steps) if steps else v2.Identity()   # a dataset may have no augmentation of its own


def eval_transform(config: TrainConfig):
    """The evaluation view of a file-based dataset (applied to image and mask alike; ``None``: as they are)."""
    return entry(config.dataset).eval_view(config.image_size)


class SeededTransform(Dataset):
    """``(transform(image) [C, S, S], label)`` for the items of ``base`` at ``indices``.

    The transform draws from torch's global generator, seeded by ``(seed, epoch, index)`` (the
    index into ``base``) for each item and restored afterwards; ``set_epoch`` picks the epoch
    (``ersm.fit`` calls it before every epoch).
    """

    def __init__(self, base: Dataset, indices, transform, seed: int) -> None:
        self.base, self.indices, self.transform, self.seed = base, [int(i) for i in indices], transform, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        index = self.indices[k]
        image, label = self.base[index][:2]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_seed(self.seed, self.epoch, index))
            image = self.transform(image)
        return image, label


class EvaluationView(Dataset):
    """``(image [C, S, S], label, mask [1, S, S])`` of ``base`` at ``indices``, through a deterministic
    ``transform`` applied to image and mask alike (``None``: as they are)."""

    def __init__(self, base: Dataset, indices, transform=None) -> None:
        self.base, self.indices, self.transform = base, [int(i) for i in indices], transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        image, label, mask = self.base[self.indices[k]]
        if self.transform is not None:
            image, mask = self.transform(image), self.transform(mask)
        return image, label, mask


# --- the public functions ------------------------------------------------------------------------

def _check(config: TrainConfig, split: str, background: str) -> None:
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config={config!r} must be a TrainConfig")
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {SPLITS}")
    if background != "random" and (not entry(config.dataset).background_swap or split == "train"):
        raise ValueError(f"background={background!r} applies to the validation and test splits of "
                         f"dataset='cluttered_digits' only, not split={split!r} of dataset={config.dataset!r}")
    check_readable(config, split)


def training_set(config: TrainConfig, download: bool = True):
    """The training split as ``ersm.fit`` takes it: ``(images, labels)`` tensors for the cluttered
    digits (Cutout then runs per batch in the engine), else a :class:`SeededTransform` Dataset."""
    _check(config, "train", "random")
    if entry(config.dataset).composed:
        images, labels, _ = _digits(*_digit_args(config, "train", "random"))
        return images, labels
    base = _real_base(config, "train", download)
    return SeededTransform(base, split_indices(config, "train", len(base)), train_transform(config), config.seed)


def evaluation_set(config: TrainConfig, split: str, download: bool = True):
    """``split`` for scoring: ``(images, labels, masks)`` tensors (digits) or an :class:`EvaluationView`."""
    _check(config, split, "random")
    if entry(config.dataset).composed:
        return _digits(*_digit_args(config, split, "random"))
    base = _real_base(config, split, download)
    return EvaluationView(base, split_indices(config, split, len(base)), eval_transform(config))


def load_split(config: TrainConfig, split: str, background: str = "random", download: bool = True):
    """``(images [N, C, S, S] float32 in [0, 1], labels [N] int64, masks [N, 1, S, S] bool)`` of ``split``.

    Un-augmented. ``background`` (``"random"``, ``"aligned"``, ``"swapped"`` or a texture name)
    picks a cluttered-digits validation or test set. Digit splits are cached in memory (8 most recent).
    """
    _check(config, split, background)
    if entry(config.dataset).composed:
        return _digits(*_digit_args(config, split, background))
    view = evaluation_set(config, split, download)
    items = [view[k] for k in range(len(view))]
    return (torch.stack([image for image, _, _ in items]), torch.tensor([label for _, label, _ in items]),
            torch.stack([mask for _, _, mask in items]))


def split_metadata(config: TrainConfig, split: str = "test", background: str = "random") -> dict:
    """Per-item facts of a cluttered-digits split (clutter count, digit area, background, ...)."""
    _check(config, split, background)
    if not entry(config.dataset).scene_metadata:
        raise ValueError(f"dataset={config.dataset!r} has no per-item metadata; only 'cluttered_digits' has")
    return _dataset(*_digit_args(config, split, background)).metadata()
