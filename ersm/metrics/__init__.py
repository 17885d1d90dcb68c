"""Metrics for the ERSM claims, one protocol per module.

- ``deletion``: RISE deletion/insertion curves on features or images (zero, blur, ROAD fill),
  their trapezoid area, and the rankings compared (random, feature magnitude, Grad-CAM).
- ``localisation``: pointing game, energy-based pointing game, pixel AUROC, top-k IoU.
- ``stats``: Student-t and bootstrap intervals, paired bootstrap, coefficient of variation.
"""
from ersm.metrics.deletion import (
    feature_curves, gradcam_scores, input_curves, magnitude_scores, random_scores, removal_schedule,
    trapezoid_auc,
)
from ersm.metrics.localisation import background_mass, energy_pointing, pixel_auroc, pointing_game, topk_iou
from ersm.metrics.stats import bootstrap_ci, coefficient_of_variation, mean_ci, paired_bootstrap

__all__ = [
    "feature_curves", "gradcam_scores", "input_curves", "magnitude_scores", "random_scores",
    "removal_schedule", "trapezoid_auc",
    "background_mass", "energy_pointing", "pixel_auroc", "pointing_game", "topk_iou",
    "bootstrap_ci", "coefficient_of_variation", "mean_ci", "paired_bootstrap",
]
