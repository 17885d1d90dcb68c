"""Data for the ERSM reproduction.

- :class:`ClutteredDigits`: the offline benchmark (real MNIST digits on real textures,
  clutter, a ground-truth mask per image); :data:`BACKGROUNDS` names its textures.
- :func:`occlude` / :func:`occlusion_mask`: structured occlusion for the robustness claim.
- :class:`CIFAR10Masked`, :class:`OxfordPetMasked`: real datasets in the same item format;
  :class:`DatasetNotAvailable` when their files are missing offline.
- :func:`plot_examples`: a grid of items with their masks outlined.

Every dataset yields ``(image float32 [C, H, W] in [0, 1], label int, mask bool [1, H, W])``.
"""

from .digits import ClutteredDigits
from .occlusion import occlude, occlusion_mask
from .preview import plot_examples
from .real import CIFAR10Masked, DatasetNotAvailable, OxfordPetMasked
from .textures import BACKGROUNDS

__all__ = [
    "BACKGROUNDS",
    "CIFAR10Masked",
    "ClutteredDigits",
    "DatasetNotAvailable",
    "OxfordPetMasked",
    "occlude",
    "occlusion_mask",
    "plot_examples",
]
