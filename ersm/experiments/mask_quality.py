"""Claim 5: the masks isolate the object without pixel-level supervision.

Protocols (`docs/protocols.md#localisation`): each token map is upsampled bilinearly to the image
and scored against the digit's ground-truth mask with the pointing game (argmax inside the
mask; Zhang et al. 2016, as in Quantus, plus a tolerance of ``TOLERANCE`` pixels, the
15-of-224 convention scaled to the canvas), the energy-based pointing game (share of the map's
mass inside the object; Score-CAM, Wang et al. 2020), per-pixel AUROC, and the IoU of the
top-k pixels with k = the object's area. A constant offset carries no location, so every map
is shifted to a minimum of 0 per image before the mass share (the other three metrics do not
change under such a shift).

Rule, fixed before the run. Primary metric: per-pixel AUROC. For each strong baseline map
(magnitude and Grad-CAM, in the dense model and in the ERSM model), the paired bootstrap over
test images (seed-averaged) of AUROC(ERSM mask) - AUROC(baseline). The claim is SUPPORTED if
every interval lies above 0, NOT SUPPORTED if any lies below 0, else INCONCLUSIVE.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ersm.metrics.localisation import background_mass, energy_pointing, pixel_auroc, pointing_game, topk_iou
from ersm.metrics.stats import paired_bootstrap
from ersm.verdicts import (INCONCLUSIVE, MIN_UNITS, NOT_SUPPORTED, SUPPORTED, Claim, check_distinct, check_member, check_units,
                           superiority)

METRICS = ("pointing game", "pointing game (tolerance)", "mass inside object", "pixel AUROC", "top-k IoU")
PRIMARY_METRIC = "pixel AUROC"


def shifted(maps: torch.Tensor) -> torch.Tensor:
    """Each map minus its own minimum: ``[N, h, w]``."""
    return maps - maps.flatten(1).amin(1).view(-1, 1, 1)


def localisation_scores(maps: torch.Tensor, masks: torch.Tensor, tolerance: int) -> dict[str, np.ndarray]:
    """Every localisation metric per image for ``maps [N, h, w]`` against ``masks [N, 1, H, W]``."""
    maps = shifted(maps.float())
    return {
        "pointing game": pointing_game(maps, masks).float().numpy(),
        "pointing game (tolerance)": pointing_game(maps, masks, tolerance=tolerance).float().numpy(),
        "mass inside object": energy_pointing(maps, masks).numpy(),
        "pixel AUROC": pixel_auroc(maps, masks).numpy(),
        "top-k IoU": topk_iou(maps, masks).numpy(),
    }


def seed_averaged(per_seed: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {metric: np.nanmean([scores[metric] for scores in per_seed], axis=0) for metric in per_seed[0]}


def quality_frame(scores: dict[str, dict[str, np.ndarray]]) -> pd.DataFrame:
    """Mean of each metric (rows: map; columns: metric)."""
    return pd.DataFrame({name: {metric: np.nanmean(v) for metric, v in s.items()} for name, s in scores.items()}).T


def quality_claims(scores: dict[str, dict[str, np.ndarray]], ersm_name: str, baselines: list[str], n_boot: int) -> tuple[list[Claim], str]:
    """One row per baseline (primary metric: pixel AUROC) and the overall verdict.

    Images where either map's AUROC is NaN are left out of that comparison. Refuses
    (``ValueError``) an empty ``scores`` or ``baselines``, a map it lacks or without pixel
    AUROC, a baseline equal to ``ersm_name``, unpaired images, inf scores, and fewer than two
    images with both scores (NaN-only scores).
    """
    check_quality_scores(scores, ersm_name, baselines)
    claims = []
    a = scores[ersm_name]["pixel AUROC"]
    for baseline in baselines:
        b = scores[baseline]["pixel AUROC"]
        keep = ~(np.isnan(a) | np.isnan(b))
        diff, lo, hi = paired_bootstrap(a[keep], b[keep], n_boot=n_boot, seed=0)
        claims.append(Claim(
            claim=f"masks isolate the object ({ersm_name} vs {baseline})", metric="per-pixel AUROC against the digit mask",
            baseline_name=baseline, baseline=b[keep].mean(), ersm=a[keep].mean(), difference=diff, lo=lo, hi=hi,
            rule="superiority over every strong baseline: paired bootstrap over test images (seed-averaged; conditional on these trained models); "
                 "overall SUPPORTED if every interval lies above 0, NOT SUPPORTED if any lies below 0",
            verdict=superiority(lo, hi)))
    verdicts = {c.verdict for c in claims}
    overall = NOT_SUPPORTED if NOT_SUPPORTED in verdicts else SUPPORTED if verdicts == {SUPPORTED} else INCONCLUSIVE
    return claims, overall


def check_quality_scores(scores, ersm_name: str, baselines) -> None:
    if not isinstance(scores, dict) or not scores:
        raise ValueError(f"scores must be a non-empty dict {{map: {{metric: per-image scores}}}}, got scores={scores!r:.80}")
    if isinstance(baselines, str) or not isinstance(baselines, (list, tuple)) or not baselines:
        raise ValueError(f"baselines={baselines!r} must be a non-empty list of map names in scores")
    for arg, name in [("ersm_name", ersm_name)] + [(f"baselines[{i}]", b) for i, b in enumerate(baselines)]:
        check_member(arg, name, scores, "scores", what="map")
        if not isinstance(scores[name], dict) or PRIMARY_METRIC not in scores[name]:
            raise ValueError(f"scores[{name!r}] has no {PRIMARY_METRIC!r} scores (the primary metric)")
        if arg != "ersm_name":
            check_distinct("ersm_name", ersm_name, arg, name)
    a = check_units(f"scores[{ersm_name!r}][{PRIMARY_METRIC!r}]", scores[ersm_name][PRIMARY_METRIC], allow_nan=True)
    for baseline in baselines:
        b = check_units(f"scores[{baseline!r}][{PRIMARY_METRIC!r}]", scores[baseline][PRIMARY_METRIC], n=a.size, allow_nan=True)
        both = int((~(np.isnan(a) | np.isnan(b))).sum())
        if both < MIN_UNITS:
            raise ValueError(f"scores[{ersm_name!r}] and scores[{baseline!r}] have {both} image(s) with both {PRIMARY_METRIC} "
                             f"scores not NaN; a bootstrap interval over images needs at least {MIN_UNITS}")


def background_share(maps: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Share of each (shifted) map's mass on the background: ``[N]``."""
    return background_mass(shifted(maps.float()), masks).numpy()
