"""Per-seed, per-image arrays of each claim, flattened for the results archive (``ersm.study.results``).

Every image-level interval of a claim notebook is computed from arrays whose first axis is the
seed and whose last is the test image. They are saved beside the results JSON
(``<notebook>.npz``) under ``|``-joined keys, so that anyone can recompute an interval without
the models. Each function below maps one notebook's in-memory layout to those keys, and
``occlusion_correct`` maps the archive back to the layout ``occlusion.occlusion_claim`` reads.

Keys (``S`` seeds in the notebook's order, ``N`` test images, ``F`` occluded shares):

- 01 ``correct|<family>``: bool ``[S, N]``, the family's top-1 correctness on the test split;
- 02 ``sparsity|<family>``: float ``[S, N]``, per-image sparsity ``1 - k`` (emergence);
- 03 ``correct|<family>|<seed>|<kind>|<fill>``: bool ``[F, N]`` (the layout of
  ``occlusion.occlusion_correctness``), and ``gap|<rho>|<family>``: float ``[S, N]``;
- 04 ``area|<family>|<space> <order> <mode> <fill>|<ranking>``: float ``[S, N]``;
- 05 ``score|<map>|<metric>``: float ``[S, N]`` (NaN where a map has no value for an image).
"""
from __future__ import annotations

import numpy as np

from ersm.study.results import ARRAY_SEPARATOR, array_key


def accuracy_arrays(correct: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """01: ``{family: bool [S, N]}`` -> ``correct|<family>``."""
    return {array_key("correct", name): np.asarray(value, dtype=bool) for name, value in correct.items()}


def sparsity_arrays(per_image: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """02: ``{family: [S, N]}`` (``sparsity.mask_frame``'s ``per_image``) -> ``sparsity|<family>``."""
    return {array_key("sparsity", name): np.asarray(value, dtype=np.float32) for name, value in per_image.items()}


def occlusion_arrays(correct: dict, gaps: dict | None = None) -> dict[str, np.ndarray]:
    """03: ``{(family, seed, kind, fill): bool [F, N]}`` and ``{rho: {family: gap [S, N]}}``."""
    out = {array_key("correct", *key): np.asarray(value, dtype=bool) for key, value in correct.items()}
    for rho, by_model in (gaps or {}).items():
        out |= {array_key("gap", rho, name): np.asarray(value, dtype=np.float32) for name, value in by_model.items()}
    return out


def occlusion_correct(arrays: dict[str, np.ndarray]) -> dict:
    """03, back from the archive: ``{(family, seed, kind, fill): bool [F, N]}`` (seed as an int)."""
    out = {}
    for key, value in arrays.items():
        parts = key.split(ARRAY_SEPARATOR)
        if parts[0] == "correct" and len(parts) == 5:
            out[parts[1], int(parts[2]), parts[3], parts[4]] = value
    if not out:
        raise ValueError("arrays hold no occlusion correctness (keys correct|<family>|<seed>|<kind>|<fill>); "
                         f"they hold {sorted(arrays)[:5]}")
    return out


def deletion_arrays(per_seed: dict[str, list[dict]]) -> dict[str, np.ndarray]:
    """04: ``{family: [ {(protocol, ranking): area [N]} per seed ]}`` -> ``area|<family>|<protocol>|<ranking>``.

    A key some seeds lack is not stored (every family is scored the same way in every seed)."""
    out = {}
    for name, seeds in per_seed.items():
        for protocol, ranking in seeds[0]:
            if all((protocol, ranking) in s for s in seeds):
                stacked = np.stack([np.asarray(s[protocol, ranking], dtype=np.float32) for s in seeds])
                out[array_key("area", name, " ".join(protocol), ranking)] = stacked
    return out


def mask_quality_arrays(scores: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """05: ``{map: {metric: [S, N]}}`` -> ``score|<map>|<metric>``."""
    return {array_key("score", label, metric): np.asarray(value, dtype=np.float32)
            for label, by_metric in scores.items() for metric, value in by_metric.items()}
