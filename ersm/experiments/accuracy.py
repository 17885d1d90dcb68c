"""Claim 1: classification accuracy is preserved (ERSM vs. the same backbone without the layer)."""
from __future__ import annotations

import pandas as pd

from ersm.experiments.common import DENSE, paired_seed_difference
from ersm.inference import accuracy
from ersm.verdicts import Claim, check_number, check_seed_pairs, non_inferiority


def accuracy_frame(models: dict[str, list], configs: dict[str, list], test) -> pd.DataFrame:
    """Test accuracy in percent, one row per (model, seed)."""
    images, labels, _ = test
    return pd.DataFrame([{"model": name, "seed": config.seed, "accuracy": 100 * accuracy(model, images, labels)}
                         for name in models for model, config in zip(models[name], configs[name])])


def accuracy_claim(frame: pd.DataFrame, treatment: str, margin: float) -> Claim:
    """Non-inferiority of ``treatment`` against dense, paired by seed, margin in points.

    Refuses (``ValueError``) an empty frame, a treatment or dense model missing from it, fewer
    than two seeds, seeds not shared by both models, NaN accuracies and a negative margin.
    """
    check_number("margin", margin, low=0.0)
    check_seed_pairs(frame, "frame", "accuracy", {"treatment": treatment, "baseline (common.DENSE)": DENSE})
    diff, lo, hi = paired_seed_difference(frame, "accuracy", treatment, DENSE)
    means = frame.groupby("model")["accuracy"].mean()
    return Claim(
        claim=f"accuracy is preserved ({treatment})", metric="test accuracy (%), mean over seeds",
        baseline_name=DENSE, baseline=means[DENSE], ersm=means[treatment], difference=diff, lo=lo, hi=hi,
        rule=f"non-inferiority: SUPPORTED if the 95% t-interval of the per-seed difference lies above -{margin} points; "
             f"NOT SUPPORTED if it lies below -{margin}; else INCONCLUSIVE",
        verdict=non_inferiority(lo, hi, margin))
