"""Data for the ERSM reproduction.

- :class:`ClutteredDigits`: the offline benchmark (real MNIST digits on real textures,
  clutter, a ground-truth mask per image); :data:`BACKGROUNDS` names its textures.
- :func:`occlude` / :func:`occlusion_mask`: structured occlusion for the robustness claim.
- :class:`CIFAR10Masked`, :class:`OxfordPetMasked`: real datasets in the same item format;
  :class:`DatasetNotAvailable` when their files are missing offline.
- :func:`capabilities`: which claims a dataset supports (object masks, background swap).
- ``registry.REGISTRY``: one entry per dataset (spec, loader, augmentation, capability flags),
  the only place that names the datasets; add a dataset there (``registry.py``).
- :func:`plot_examples`: a grid of items with their masks outlined.
- :func:`load_split`, :func:`training_set`, :func:`evaluation_set`, :func:`split_metadata`: the
  splits of a ``TrainConfig`` (any of its datasets), for training and for the notebooks
  (``splits.py``); :class:`SeededTransform` seeds per-item augmentation by (seed, epoch, index).

Every dataset yields ``(image float32 [C, H, W] in [0, 1], label int, mask bool [1, H, W])``.
"""

# Names are imported when first used (PEP 562): ``ersm.training.config`` imports ``ersm.data.registry``, and
# an eager import of ``splits`` here would import ``ersm.training.config`` back before it is defined.
from .capabilities import capabilities  # eager: the function, not its module of the same name (it imports the registry only)

_WHERE = {
    "ClutteredDigits": ".digits", "occlude": ".occlusion", "occlusion_mask": ".occlusion",
    "plot_examples": ".preview", "CIFAR10Masked": ".real", "DatasetNotAvailable": ".real", "OxfordPetMasked": ".real",
    "SeededTransform": ".splits", "evaluation_set": ".splits", "load_split": ".splits", "split_metadata": ".splits",
    "training_set": ".splits", "BACKGROUNDS": ".textures",
}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'ersm.data' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


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
