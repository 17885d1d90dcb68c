"""Data for the ERSM reproduction.

- :class:`ClutteredDigits`: the offline benchmark (real MNIST digits on real textures,
  clutter, a ground-truth mask per image); :data:`BACKGROUNDS` names its textures.
- :func:`occlude` / :func:`occlusion_mask`: structured occlusion for the robustness claim.
- :class:`CIFAR10Masked`, :class:`OxfordPetMasked`: real datasets in the same item format;
  :class:`DatasetNotAvailable` when their files are missing offline.
- :func:`capabilities`: which claims a dataset supports (object masks, background swap).
- :func:`plot_examples`: a grid of items with their masks outlined.
- :func:`load_split`, :func:`training_set`, :func:`evaluation_set`, :func:`split_metadata`: the
  splits of a ``TrainConfig`` (any of its datasets), for training and for the notebooks
  (``splits.py``); :class:`SeededTransform` seeds per-item augmentation by (seed, epoch, index).

Every dataset yields ``(image float32 [C, H, W] in [0, 1], label int, mask bool [1, H, W])``.
"""

from .capabilities import capabilities
from .digits import ClutteredDigits
from .occlusion import occlude, occlusion_mask
from .preview import plot_examples
from .real import CIFAR10Masked, DatasetNotAvailable, OxfordPetMasked
from .splits import SeededTransform, evaluation_set, load_split, split_metadata, training_set
from .textures import BACKGROUNDS

__all__ = [
    "BACKGROUNDS",
    "CIFAR10Masked",
    "ClutteredDigits",
    "DatasetNotAvailable",
    "OxfordPetMasked",
    "SeededTransform",
    "capabilities",
    "evaluation_set",
    "load_split",
    "occlude",
    "occlusion_mask",
    "plot_examples",
    "split_metadata",
    "training_set",
]
