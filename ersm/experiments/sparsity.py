"""Claim 2: sparsity emerges without a budget and adapts to each input.

Definitions, fixed before any run:
- The paper's mask lives in (0, 0.5] and the BatchNorm after the masked stage undoes any
  uniform scaling, so what the mask *selects* is its shape, not its level. We therefore read
  the relative mask ``r_i = m_i / max_j m_j`` of each image.
- A token is **suppressed** when ``r_i < 0.5`` (the mask passes less than half of what it
  passes at the image's most-kept token); an image's **kept share** is the share of tokens
  with ``r_i >= 0.5``.
- Degenerate solutions, reported and never hidden: **collapsed at 0.5** (mean ``|0.5 - m|``
  below 0.01: every mask at the paper's ceiling, ``E_un -> 0``); **collapsed to zero** (99th percentile of
  ``m`` below 0.01); **uniform** (mean within-image coefficient of variation of ``m`` below 0.05).
- Sparsity **emerges** if the ERSM model suppresses a larger share of tokens than the same
  layer (same variant) trained with beta = 0 (the regulariser off), paired by seed
  (superiority rule), and the ERSM model is not degenerate (else NOT SUPPORTED).
- Sparsity **adapts** if the coefficient of variation across test images of the kept share
  has a 95% t-interval over seeds above 0.05 (a 5% spread).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from ersm.inference import predict
from ersm.metrics.stats import coefficient_of_variation, mean_ci
from ersm.verdicts import (NOT_SUPPORTED, Claim, check_frame, check_member, check_number, check_seed_pairs,
                            check_seed_values, superiority, threshold)

SUPPRESSED_BELOW = 0.5


def relative_mask(mask: torch.Tensor) -> torch.Tensor:
    """``m / max over the image`` for ``mask [N, 1, h, w]``."""
    return mask / mask.amax(dim=(1, 2, 3), keepdim=True)


def kept_share(mask: torch.Tensor) -> np.ndarray:
    """Per image, the share of tokens with relative mask >= 0.5: ``[N]``."""
    return (relative_mask(mask) >= SUPPRESSED_BELOW).float().mean(dim=(1, 2, 3)).numpy()


def degeneracy(mask: torch.Tensor) -> dict:
    """Which degenerate solutions the masks ``[N, 1, h, w]`` sit in (booleans and their measures)."""
    gap_to_half = (0.5 - mask).abs().mean().item()  # abs: the calibrated mask may exceed 0.5
    p99 = np.quantile(mask.flatten().numpy(), 0.99)
    spatial_cv = (mask.std(dim=(1, 2, 3)) / mask.mean(dim=(1, 2, 3))).mean().item()
    return {"mean_gap_to_0.5": gap_to_half, "p99_mask": p99, "spatial_cv": spatial_cv,
            "collapsed_at_half": gap_to_half < 0.01, "collapsed_to_zero": p99 < 0.01, "uniform": spatial_cv < 0.05}


def mask_frame(models: dict[str, list], configs: dict[str, list], images: torch.Tensor) -> tuple[pd.DataFrame, dict]:
    """One row per (model, seed) with sparsity statistics; and the masks themselves by (model, seed)."""
    rows, masks = [], {}
    for name in models:
        for model, config in zip(models[name], configs[name]):
            mask = predict(model, images).mask
            if mask is None:
                raise ValueError(f"model {name!r} (seed {config.seed}) has no EnergyMask; sparsity needs an ERSM model")
            masks[name, config.seed] = mask
            kept = kept_share(mask)
            rows.append({"model": name, "seed": config.seed, "mean_mask": mask.mean().item(),
                         "suppressed_share": 1 - kept.mean(), "kept_share_cv": coefficient_of_variation(kept),
                         **degeneracy(mask)})
    return pd.DataFrame(rows), masks


DEGENERACY_FLAGS = ("collapsed_at_half", "collapsed_to_zero", "uniform")


def emergence_claim(frame: pd.DataFrame, treatment: str, control: str) -> Claim:
    """Superiority of ``treatment``'s suppressed share over ``control``'s, paired by seed; NOT SUPPORTED if degenerate.

    Refuses (``ValueError``) an empty frame, a missing model, fewer than two seeds, unpaired
    seeds and NaN shares.
    """
    check_frame(frame, "frame", ("model", "seed", "suppressed_share", *DEGENERACY_FLAGS))
    check_seed_pairs(frame, "frame", "suppressed_share", {"treatment": treatment, "control": control})
    pivot = frame.pivot(index="seed", columns="model", values="suppressed_share")
    diff, lo, hi = mean_ci((pivot[treatment] - pivot[control]).to_numpy())
    rows = frame[frame.model == treatment]
    degenerate = bool(rows[list(DEGENERACY_FLAGS)].any(axis=None))
    verdict = NOT_SUPPORTED if degenerate else superiority(lo, hi)
    return Claim(
        claim=f"sparsity emerges without a budget ({treatment})", metric="share of suppressed tokens (relative mask < 0.5)",
        baseline_name=control, baseline=pivot[control].mean(), ersm=pivot[treatment].mean(), difference=diff, lo=lo, hi=hi,
        rule="superiority over the same layer with beta=0, paired by seed (95% t-interval above 0), "
             "and no degenerate solution in any seed (else NOT SUPPORTED)",
        verdict=verdict)


def adaptivity_claim(frame: pd.DataFrame, treatment: str, bar: float = 0.05) -> Claim:
    """Threshold: the t-interval over seeds of ``treatment``'s kept-share CV must lie above ``bar``.

    Refuses (``ValueError``) an empty frame, a missing model, fewer than two seeds, NaN CVs and
    a non-finite bar.
    """
    check_number("bar", bar)
    check_frame(frame, "frame", ("model", "kept_share_cv"))
    check_member("treatment", treatment, pd.unique(frame["model"]), "frame")
    check_seed_values(frame, "frame", "kept_share_cv", "treatment", treatment)
    values = frame.loc[frame.model == treatment, "kept_share_cv"].to_numpy()
    mean, lo, hi = mean_ci(values)
    return Claim(
        claim=f"sparsity adapts to the input ({treatment})", metric="coefficient of variation of the per-image kept share",
        baseline_name="bar", baseline=bar, ersm=mean, difference=mean - bar, lo=lo - bar, hi=hi - bar,
        rule=f"threshold: SUPPORTED if the 95% t-interval over seeds of the CV lies above {bar}; NOT SUPPORTED if below",
        verdict=threshold(lo, hi, bar))


def what_it_tracks(masks: dict, name: str, metadata: dict) -> pd.DataFrame:
    """Spearman correlation of the per-image kept share with clutter and digit size, over seeds.

    A seed whose kept share is the same for every image has no defined correlation; ``n``
    counts the seeds that enter each row.
    """
    rows = []
    for (model_name, seed), mask in masks.items():
        if model_name != name:
            continue
        kept = kept_share(mask)
        for factor in ("n_distractors", "digit_area"):
            # a constant kept share (e.g. a uniform mask) has no defined correlation
            rho = spearmanr(kept, metadata[factor]).statistic if np.ptp(kept) > 0 else float("nan")
            rows.append({"seed": seed, "factor": factor, "spearman": rho})
        by_background = pd.Series(kept).groupby(np.asarray(metadata["background"])).mean()
        rows.append({"seed": seed, "factor": "background (range of group means)", "spearman": by_background.max() - by_background.min()})
    return pd.DataFrame(rows).groupby("factor")["spearman"].agg(["mean", "min", "max", "count"]).rename(columns={"count": "n"}).reset_index()
