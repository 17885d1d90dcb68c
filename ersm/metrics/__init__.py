"""Metrics for the ERSM claims, one protocol per module.

- ``deletion``: RISE deletion/insertion curves on features or images (zero, blur, ROAD fill),
  their trapezoid area, and the rankings compared (random, feature magnitude, Grad-CAM).
- ``localisation``: pointing game, energy-based pointing game, pixel AUROC, top-k IoU.
- ``stats``: Student-t and bootstrap intervals, paired bootstrap, coefficient of variation.
- ``hierarchical``: rules v2 intervals: two-level (seed, image) bootstrap, seed t-interval, their hull.
- ``power``: seeds for the paired non-inferiority t-test, and its power.
"""
from ersm.metrics.deletion import (
    feature_curves, gradcam_scores, input_curves, magnitude_scores, random_scores, removal_schedule,
    trapezoid_auc,
)
from ersm.metrics.hierarchical import (
    interval_hull, mean_of_seed_means, mean_seed_ratio, paired_two_level_bootstrap, per_seed_statistics,
    seed_t_interval, two_level_bootstrap,
)
from ersm.metrics.localisation import background_mass, energy_pointing, pixel_auroc, pointing_game, topk_iou
from ersm.metrics.power import noninferiority_power, seeds_for_noninferiority
from ersm.metrics.stats import bootstrap_ci, coefficient_of_variation, mean_ci, paired_bootstrap

__all__ = [
    "feature_curves", "gradcam_scores", "input_curves", "magnitude_scores", "random_scores",
    "removal_schedule", "trapezoid_auc",
    "background_mass", "energy_pointing", "pixel_auroc", "pointing_game", "topk_iou",
    "bootstrap_ci", "coefficient_of_variation", "mean_ci", "paired_bootstrap",
    "interval_hull", "mean_of_seed_means", "mean_seed_ratio", "paired_two_level_bootstrap", "per_seed_statistics",
    "seed_t_interval", "two_level_bootstrap",
    "noninferiority_power", "seeds_for_noninferiority",
]
