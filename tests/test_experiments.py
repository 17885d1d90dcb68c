"""Verdict rules and the claim definitions the notebooks rely on, on synthetic inputs.

The sparsity definitions of claim 02 (rules v2) are tested in ``tests/test_claims_01_02.py``.
"""
import numpy as np
import pandas as pd
import pytest
import torch

from ersm.experiments import mask_quality, occlusion
from ersm.experiments.common import paired_seed_difference
from ersm.study.verdicts import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, claims_markdown, non_inferiority, superiority, threshold


@pytest.mark.parametrize("lo, hi, expected", [(0.1, 2.0, SUPPORTED), (-2.0, -0.1, NOT_SUPPORTED), (-1.0, 1.0, INCONCLUSIVE),
                                              (0.0, 1.0, INCONCLUSIVE)])
def test_superiority(lo, hi, expected):
    assert superiority(lo, hi) == expected


@pytest.mark.parametrize("lo, hi, expected", [(-0.9, 0.5, SUPPORTED), (-3.0, -1.2, NOT_SUPPORTED), (-1.5, 0.2, INCONCLUSIVE)])
def test_non_inferiority_margin_one(lo, hi, expected):
    assert non_inferiority(lo, hi, margin=1.0) == expected


def test_threshold_and_markdown():
    assert threshold(0.06, 0.1, 0.05) == SUPPORTED and threshold(0.01, 0.04, 0.05) == NOT_SUPPORTED
    row = dict(claim="c", metric="m", baseline_name="dense", baseline=1.0, ersm=2.0, difference=1.0, lo=0.5, hi=1.5,
               rule="r", verdict=SUPPORTED)
    table = claims_markdown([row])
    assert "| c | m | dense: 1.00 | 2.00 | 1.00 [0.50, 1.50] | **SUPPORTED** |" in table


def test_paired_seed_difference_pairs_by_seed():
    frame = pd.DataFrame({"model": ["a", "a", "a", "b", "b", "b"], "seed": [0, 1, 2, 0, 1, 2],
                          "accuracy": [90.0, 80.0, 70.0, 91.0, 81.0, 71.0]})
    diff, lo, hi = paired_seed_difference(frame, "accuracy", "b", "a")
    assert diff == pytest.approx(1.0) and lo == pytest.approx(1.0) and hi == pytest.approx(1.0)




def test_mask_quality_ignores_constant_offsets():
    masks = torch.zeros(3, 1, 8, 8, dtype=torch.bool)
    masks[:, :, :4, :4] = True
    maps = torch.zeros(3, 4, 4)
    maps[:, :2, :2] = 1.0                 # all mass on the object's tokens
    a = mask_quality.localisation_scores(maps, masks, tolerance=0)
    b = mask_quality.localisation_scores(maps + 7.0, masks, tolerance=0)
    for metric in mask_quality.METRICS:
        np.testing.assert_allclose(a[metric], b[metric])
    assert a["pointing game"].all() and a["pixel AUROC"].min() > 0.9


def test_occlusion_correctness_matches_one_prediction_per_condition():
    """The reuse of clean predictions for conditions that hide nothing changes no entry."""
    from ersm.data import ClutteredDigits, occlude
    from ersm.models import build_model

    images, labels, masks = ClutteredDigits("test", 24, canvas=48, seed=3).tensors()
    torch.manual_seed(0)
    models = {"m": [build_model("small_cnn", in_channels=1, num_classes=10).eval()]}
    configs = {"m": [type("Config", (), {"seed": 7})()]}
    fractions = [0.0, 0.2, 0.5]
    correct = occlusion.occlusion_correctness(models, configs, (images, labels, masks), fractions,
                                              kinds=("square", "object"), fills=("zero", "texture"), seed=1)
    assert set(correct) == {("m", 7, k, f) for k in ("square", "object") for f in ("zero", "texture")}
    model = models["m"][0]
    for (_, _, kind, fill), hits in correct.items():
        for row, fraction in enumerate(fractions):
            occluded = occlude(images, fraction, kind=kind, fill=fill, seed=1, masks=masks)
            with torch.no_grad():
                expected = (model(occluded).argmax(1) == labels).numpy()
            np.testing.assert_array_equal(hits[row], expected)
