"""Claim 5: the masks isolate the object without pixel-level supervision.

Protocols (`docs/protocols.md#localisation`): each token map is upsampled bilinearly to the image
and scored against the digit's ground-truth mask with the pointing game (argmax inside the
mask; Zhang et al. 2016, as in Quantus, plus a tolerance of ``TOLERANCE`` pixels, the
15-of-224 convention scaled to the canvas), the energy-based pointing game (share of the map's
mass inside the object; Score-CAM, Wang et al. 2020), per-pixel AUROC, and the IoU of the
top-k pixels with k = the object's area. A constant offset carries no location, so every map
is shifted to a minimum of 0 per image before the mass share (the other three metrics do not
change under such a shift).

Rules v2 (`docs/rules.md#05-mask-quality-v2`) as amended (v2.4, ``ersm.study.rules``; v2 was written before the ``full`` run, its amendments after its test scores existed). Primary metric: per-pixel
AUROC, per seed and test image (``[S, N]``, seeds paired by row, the same images in every
column). For each strong baseline map (magnitude and Grad-CAM, in the dense model and in the ERSM
model), the images whose AUROC is NaN in any seed of either map are dropped from that comparison,
and AUROC(ERSM mask) - AUROC(baseline) reads the rules v2 interval (``paired_rule_v2_interval``);
superiority per row. The claim is SUPPORTED if every row is, NOT SUPPORTED if any row is NOT
SUPPORTED, else INCONCLUSIVE.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch

from ersm.data import capabilities
from ersm.experiments import common
from ersm.metrics.hierarchical import mean_of_seed_means, paired_rule_v2_interval
from ersm.metrics.localisation import background_mass, energy_pointing, pixel_auroc, pointing_game, topk_iou
from ersm.checks import check_seed_images
from ersm.study.verdicts import (MIN_UNITS, RULE_V2_INTERVAL, Claim, check_distinct, check_member, check_n_boot, overall_verdict,
                           superiority)

METRICS = ("pointing game", "pointing game (tolerance)", "mass inside object", "pixel AUROC", "top-k IoU")
PRIMARY_METRIC = "pixel AUROC"


CLAIM = "mask quality"


def check_dataset(dataset: str) -> None:
    """ValueError naming ``dataset`` when it has no object masks (``ersm.data.capabilities``): the
    localisation metrics need a ground-truth object per image."""
    if not capabilities(dataset)["object_masks"]:
        raise ValueError(f"dataset={dataset!r} has no object masks, so mask quality (notebook 05) cannot be scored on it; "
                         f"use a dataset with object masks ('cluttered_digits' or 'oxford_pet')")


def applicable(dataset: str) -> tuple[bool, list[dict]]:
    """``(True, [])`` when ``dataset`` has object masks, else ``(False, [entry])`` with the printed
    "not applicable" results-JSON entry of notebook 05."""
    if capabilities(dataset)["object_masks"]:
        return True, []
    return False, [common.not_applicable(CLAIM, dataset, "object masks")]


def configs(base, params: dict, selected: dict[str, dict]) -> tuple[dict[str, list], dict[str, list]]:
    """What notebook 05 trains: ``(families, spurious)``, both empty where the claim is not
    applicable. The families are dense and every ERSM variant with its ``beta = 0`` control at
    ``SEEDS``; ``spurious`` is dense and ERSM paper on the split at ``RHO`` (empty where the dataset
    has no backgrounds to swap). All at their ``selected`` settings."""
    if not capabilities(params["DATASET"])["object_masks"]:
        return {}, {}
    families = common.family(base, params["SEEDS"], common.WITHOUT_CUTOUT, selected)
    spurious = (common.family(base.replace(background_label_correlation=params["RHO"]), params["SEEDS"], (common.DENSE, common.PAPER),
                              selected) if capabilities(params["DATASET"])["background_swap"] else {})
    return families, spurious

def shifted(maps: torch.Tensor) -> torch.Tensor:
    """Each map minus its own minimum: ``[N, h, w]``."""
    return maps - maps.flatten(1).amin(1).view(-1, 1, 1)


def localisation_scores(maps: torch.Tensor, masks: torch.Tensor, tolerance: int, dataset: str | None = None) -> dict[str, np.ndarray]:
    """Every localisation metric per image for ``maps [N, h, w]`` against ``masks [N, 1, H, W]``;
    with ``dataset``, ValueError first when it has no object masks (``check_dataset``)."""
    if dataset is not None:
        check_dataset(dataset)
    maps = shifted(maps.float())
    return {
        "pointing game": pointing_game(maps, masks).float().numpy(),
        "pointing game (tolerance)": pointing_game(maps, masks, tolerance=tolerance).float().numpy(),
        "mass inside object": energy_pointing(maps, masks).numpy(),
        "pixel AUROC": pixel_auroc(maps, masks).numpy(),
        "top-k IoU": topk_iou(maps, masks).numpy(),
    }


def seed_averaged(per_seed: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``{metric: [N]}``: each image's score averaged over seeds (NaN ignored)."""
    return {metric: np.nanmean([scores[metric] for scores in per_seed], axis=0) for metric in per_seed[0]}


def stack_seeds(per_seed: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``{metric: [S, N]}`` from one ``localisation_scores`` dict per seed (rows in list order)."""
    return {metric: np.stack([np.asarray(scores[metric], dtype=np.float64) for scores in per_seed]) for metric in per_seed[0]}


def quality_frame(scores: dict[str, dict[str, np.ndarray]]) -> pd.DataFrame:
    """Mean of each metric (rows: map; columns: metric).

    Scores ``[N]`` (seed-averaged) or ``[S, N]`` (per seed): a ``[S, N]`` array is averaged over
    seeds per image first (NaN ignored), then over images, as for seed-averaged scores.
    """
    def mean(values):
        values = np.asarray(values, dtype=np.float64)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an image NaN in every seed
            per_image = np.nanmean(values, axis=0) if values.ndim == 2 else values
            return np.nanmean(per_image)

    return pd.DataFrame({name: {metric: mean(v) for metric, v in s.items()} for name, s in scores.items()}).T


def quality_claims(scores: dict[str, dict[str, np.ndarray]], ersm_name: str, baselines: list[str], n_boot: int) -> tuple[list[Claim], str]:
    """One row per baseline (primary metric: pixel AUROC, ``[S, N]`` per map) and the overall verdict.

    ``scores[map]["pixel AUROC"]``: ``[S, N]`` (e.g. ``stack_seeds``), the same seeds and images for
    every map. Per comparison, images where either map's AUROC is NaN in any seed are dropped;
    the rules v2 interval of ``AUROC(ersm_name) - AUROC(baseline)``; superiority per row. Refuses
    (``ValueError``) an empty ``scores`` or ``baselines``, a map it lacks or without pixel AUROC,
    a baseline equal to ``ersm_name``, fewer than two seeds, unpaired shapes, inf scores, and
    fewer than two images left (NaN-only scores).
    """
    check_n_boot(n_boot)
    check_quality_scores(scores, ersm_name, baselines)
    claims = []
    a = np.asarray(scores[ersm_name][PRIMARY_METRIC], dtype=np.float64)
    for baseline in baselines:
        b = np.asarray(scores[baseline][PRIMARY_METRIC], dtype=np.float64)
        keep = both_finite(a, b)
        diff, lo, hi = paired_rule_v2_interval(a[:, keep], b[:, keep], n_boot=n_boot, seed=0)
        claims.append(Claim(
            claim=f"masks isolate the object ({ersm_name} vs {baseline})",
            metric=f"per-pixel AUROC against the digit mask ({int(keep.sum())} of {keep.size} images: no NaN in any seed of either map)",
            baseline_name=baseline, baseline=float(mean_of_seed_means(b[:, keep])), ersm=float(mean_of_seed_means(a[:, keep])),
            difference=diff, lo=lo, hi=hi,
            rule=f"superiority over every strong baseline; {RULE_V2_INTERVAL}; "
                 "overall SUPPORTED if every interval lies above 0, NOT SUPPORTED if any lies below 0",
            verdict=superiority(lo, hi)))
    return claims, overall_verdict(claim.verdict for claim in claims)




def both_finite(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``bool [N]``: the images with no NaN in any seed of ``a`` and of ``b`` (each ``[S, N]``)."""
    return ~(np.isnan(a).any(axis=0) | np.isnan(b).any(axis=0))


def check_quality_scores(scores, ersm_name: str, baselines) -> None:
    if not isinstance(scores, dict) or not scores:
        raise ValueError(f"scores must be a non-empty dict {{map: {{metric: per-seed scores [S, N]}}}}, got scores={scores!r:.80}")
    if isinstance(baselines, str) or not isinstance(baselines, (list, tuple)) or not baselines:
        raise ValueError(f"baselines={baselines!r} must be a non-empty list of map names in scores")
    for arg, name in [("ersm_name", ersm_name)] + [(f"baselines[{i}]", b) for i, b in enumerate(baselines)]:
        check_member(arg, name, scores, "scores", what="map")
        if not isinstance(scores[name], dict) or PRIMARY_METRIC not in scores[name]:
            raise ValueError(f"scores[{name!r}] has no {PRIMARY_METRIC!r} scores (the primary metric)")
        if arg != "ersm_name":
            check_distinct("ersm_name", ersm_name, arg, name)
    a = check_seed_images(f"scores[{ersm_name!r}][{PRIMARY_METRIC!r}]", scores[ersm_name][PRIMARY_METRIC], allow_nan=True)
    for baseline in baselines:
        b = check_seed_images(f"scores[{baseline!r}][{PRIMARY_METRIC!r}]", scores[baseline][PRIMARY_METRIC],
                              shape=a.shape, allow_nan=True)
        both = int(both_finite(a, b).sum())
        if both < MIN_UNITS:
            raise ValueError(f"scores[{ersm_name!r}] and scores[{baseline!r}] have {both} image(s) with {PRIMARY_METRIC} "
                             f"not NaN in any seed of either; an interval over images needs at least {MIN_UNITS}")


def background_share(maps: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Share of each (shifted) map's mass on the background: ``[N]``."""
    return background_mass(shifted(maps.float()), masks).numpy()
