"""What each dataset can support: the claims that need more than images and labels.

- ``object_masks``: per-pixel object masks (the digits' ground truth, the Pet trimaps), needed by
  mask quality (notebook 05) and object-targeted occlusion (notebook 03). CIFAR-10 has none.
- ``background_swap``: the same scene with an aligned and a swapped background texture, and the
  spurious splits (``background_label_correlation``) of the background-reliance claim. Only the
  cluttered digits have them.
- ``scene_metadata``: per-item scene facts (digit size, clutter, texture) that notebook 02's
  "what the mask tracks" table reads. Only the cluttered digits have them.

The flags come from the dataset's registry entry (``ersm.data.registry``). A claim whose capability is missing is reported as "not applicable on <dataset>", never as a
verdict.
"""
from __future__ import annotations

from .registry import entry

CAPABILITIES = ("object_masks", "background_swap", "scene_metadata")


def capabilities(dataset: str) -> dict[str, bool]:
    """``{"object_masks": bool, "background_swap": bool, "scene_metadata": bool}`` for ``dataset``."""
    found = entry(dataset)   # ValueError naming an unknown dataset
    return {"object_masks": found.spec.has_object_masks, "background_swap": found.background_swap,
            "scene_metadata": found.scene_metadata}
