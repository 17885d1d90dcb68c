"""Every function that decides a verdict, on synthetic inputs with a known answer.

For each claim: a true effect gives SUPPORTED, no effect INCONCLUSIVE, a reversed effect NOT
SUPPORTED, and the orientation of the difference is pinned (a positive difference always
favours the claim). Bad input (an empty frame, a missing model, one seed where a t-interval
needs two, NaN-only scores) is refused with a ValueError naming the argument, never turned into
a verdict. Also: the magnitude baseline reads pre-mask features, the objective's beta weighting,
the calibrated mask at T != 1 against a float64 reference, and that training learns.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ersm
import ersm.checkpoint
import ersm.config
import ersm.inference
import ersm.train
from ersm.experiments import deletion, mask_quality, occlusion, rankings
from ersm.experiments.common import DENSE
from ersm.experiments.rankings import GRADCAM, MAGNITUDE, MASK
from ersm.metrics.stats import mean_ci
from ersm.verdicts import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, non_inferiority, superiority, threshold

N_BOOT = 500
ERSM_NAME = "ERSM x"


# ----------------------------------------------------------------------------- the rules

@pytest.mark.parametrize("lo, hi, bar, expected", [
    (0.2, 0.9, 0.1, SUPPORTED), (-0.5, 0.05, 0.1, NOT_SUPPORTED), (0.0, 0.5, 0.1, INCONCLUSIVE),
    (0.1, 0.5, 0.1, INCONCLUSIVE),      # lo == bar is not above it
    (-0.5, 0.1, 0.1, INCONCLUSIVE),     # hi == bar is not below it
    (-3.0, -2.0, -2.5, INCONCLUSIVE), (-2.4, -2.0, -2.5, SUPPORTED), (-3.0, -2.6, -2.5, NOT_SUPPORTED),
    (float("nan"), float("nan"), 0.0, INCONCLUSIVE),  # why claims must refuse an undefined interval
])
def test_threshold(lo, hi, bar, expected):
    assert threshold(lo, hi, bar) == expected


@pytest.mark.parametrize("lo, hi, expected", [
    (1e-9, 1.0, SUPPORTED), (-1.0, -1e-9, NOT_SUPPORTED), (0.0, 1.0, INCONCLUSIVE), (-1.0, 0.0, INCONCLUSIVE),
    (0.0, 0.0, INCONCLUSIVE), (-1.0, 1.0, INCONCLUSIVE)])
def test_superiority_is_threshold_at_zero(lo, hi, expected):
    assert superiority(lo, hi) == expected == threshold(lo, hi, 0.0)


@pytest.mark.parametrize("lo, hi, margin, expected", [
    (-0.4, 0.3, 0.5, SUPPORTED), (-0.6, 0.3, 0.5, INCONCLUSIVE), (-0.9, -0.6, 0.5, NOT_SUPPORTED),
    (-0.5, 0.3, 0.5, INCONCLUSIVE),     # lo == -margin is not above it
    (-0.9, -0.5, 0.5, INCONCLUSIVE),    # hi == -margin is not below it
    (-1.9, -1.1, 2.0, SUPPORTED),       # a loss within the margin is non-inferior ...
    (-1.9, -1.1, 1.0, NOT_SUPPORTED),   # ... and inferior under a tighter one
    (0.1, 0.2, 0.0, SUPPORTED), (-0.2, -0.1, 0.0, NOT_SUPPORTED)])
def test_non_inferiority_reads_the_lower_bound_against_minus_margin(lo, hi, margin, expected):
    assert non_inferiority(lo, hi, margin) == expected == threshold(lo, hi, -margin)


def test_mean_ci_of_one_value_keeps_its_nan_interval():
    """``mean_ci`` itself is unchanged (reporting uses it); the claim functions refuse this case."""
    mean, lo, hi = mean_ci([3.0])
    assert mean == 3.0 and math.isnan(lo) and math.isnan(hi)
    assert threshold(lo, hi, 0.0) == INCONCLUSIVE


# Claims 1 (accuracy) and 2 (emergence, adaptivity) follow rules v2: tests/test_claims_01_02.py.


# ----------------------------------------------------------------------------- claim 3: occlusion

FRACTIONS = [0.0, 0.1, 0.3, 0.5]
N_IMAGES = 200


def hits(p_per_fraction, seed: int) -> np.ndarray:
    """``bool [len(FRACTIONS), N_IMAGES]``, right with probability ``p`` at each fraction."""
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(len(FRACTIONS), N_IMAGES)) < np.asarray(p_per_fraction)[:, None]


def correct_dict(curves: dict[str, list], kind="square", fill="zero", seeds=(0, 1, 2)) -> dict:
    return {(name, s, kind, fill): hits(p, seed=100 * i + s) for i, (name, p) in enumerate(curves.items()) for s in seeds}


@pytest.mark.parametrize("ersm_curve, dense_curve, expected", [
    ([0.9, 0.9, 0.8, 0.8], [0.9, 0.9, 0.3, 0.3], SUPPORTED),
    ([0.9, 0.9, 0.6, 0.6], [0.9, 0.9, 0.6, 0.6], INCONCLUSIVE),
    ([0.9, 0.9, 0.3, 0.3], [0.9, 0.9, 0.8, 0.8], NOT_SUPPORTED),
])
def test_occlusion_claim(ersm_curve, dense_curve, expected):
    correct = correct_dict({ERSM_NAME: ersm_curve, DENSE: dense_curve})
    claim = occlusion.occlusion_claim(correct, FRACTIONS, ERSM_NAME, DENSE, n_boot=N_BOOT)
    assert claim.verdict == expected
    rows = np.asarray(FRACTIONS) >= 0.3
    a = 100 * np.mean([correct[ERSM_NAME, s, "square", "zero"][rows].mean(0) for s in range(3)], axis=0)
    b = 100 * np.mean([correct[DENSE, s, "square", "zero"][rows].mean(0) for s in range(3)], axis=0)
    # orientation: treatment - baseline, higher accuracy is better
    assert claim.difference == pytest.approx((a - b).mean()) and claim.lo <= claim.difference <= claim.hi
    assert claim.ersm == pytest.approx(a.mean()) and claim.baseline == pytest.approx(b.mean())
    assert "30-50% occluded" in claim.metric


def test_occlusion_claim_balanced_no_effect_is_inconclusive():
    """ERSM right on one half of the images, dense on the other: mean difference exactly 0."""
    first = np.zeros((len(FRACTIONS), N_IMAGES), dtype=bool)
    first[:, : N_IMAGES // 2] = True
    correct = {(ERSM_NAME, 0, "square", "zero"): first, (DENSE, 0, "square", "zero"): ~first}
    claim = occlusion.occlusion_claim(correct, FRACTIONS, ERSM_NAME, DENSE, n_boot=N_BOOT)
    assert claim.difference == 0.0 and claim.lo < 0 < claim.hi and claim.verdict == INCONCLUSIVE


def test_occlusion_claim_reads_only_the_requested_kind_and_fill():
    correct = correct_dict({ERSM_NAME: [1, 1, 1, 1], DENSE: [1, 1, 0, 0]}, kind="grid", fill="texture")
    correct |= correct_dict({ERSM_NAME: [1, 1, 0, 0], DENSE: [1, 1, 1, 1]})  # square, zero: reversed
    assert occlusion.occlusion_claim(correct, FRACTIONS, ERSM_NAME, DENSE, n_boot=N_BOOT).verdict == NOT_SUPPORTED
    grid = occlusion.occlusion_claim(correct, FRACTIONS, ERSM_NAME, DENSE, n_boot=N_BOOT, kind="grid", fill="texture")
    assert grid.verdict == SUPPORTED and grid.difference == pytest.approx(100.0)


@pytest.mark.parametrize("ersm_curve, dense_curve, sign", [
    ([0.9, 0.8, 0.7, 0.6], [0.9, 0.5, 0.3, 0.1], +1), ([0.9, 0.6, 0.5, 0.5], [0.9, 0.6, 0.5, 0.5], 0),
    ([0.9, 0.5, 0.3, 0.1], [0.9, 0.8, 0.7, 0.6], -1)])
def test_curve_area_difference(ersm_curve, dense_curve, sign):
    correct = correct_dict({ERSM_NAME: ersm_curve, DENSE: dense_curve}, kind="object", fill="texture")
    base, treat, diff, lo, hi = occlusion.curve_area_difference(correct, FRACTIONS, ERSM_NAME, DENSE, "object", "texture",
                                                                n_boot=N_BOOT)

    def area(name):  # seed-averaged correctness per image, trapezoid over the fractions / their range
        c = np.mean([correct[name, s, "object", "texture"].astype(float) for s in range(3)], axis=0)
        return 100 * np.trapezoid(c, FRACTIONS, axis=0) / (FRACTIONS[-1] - FRACTIONS[0])

    assert base == pytest.approx(area(DENSE).mean()) and treat == pytest.approx(area(ERSM_NAME).mean())
    assert diff == pytest.approx(treat - base)
    verdict = superiority(lo, hi)
    assert verdict == {+1: SUPPORTED, 0: INCONCLUSIVE, -1: NOT_SUPPORTED}[sign]


def gap_arrays(dense_share: float, ersm_share: float, n: int = 300) -> dict:
    """Per-image gaps (points): 100 on a share of the images (right only with the aligned background), else 0."""
    rng = np.random.default_rng(0)
    return {DENSE: 100.0 * (rng.uniform(size=n) < dense_share), ERSM_NAME: 100.0 * (rng.uniform(size=n) < ersm_share)}


@pytest.mark.parametrize("dense_share, ersm_share, expected", [
    (0.6, 0.1, SUPPORTED),      # ERSM's gap is smaller: it relies less on the background
    (0.3, 0.3, INCONCLUSIVE),
    (0.1, 0.6, NOT_SUPPORTED),  # ERSM's gap is larger
])
def test_background_claim_smaller_gap_for_ersm_is_positive(dense_share, ersm_share, expected):
    gaps = gap_arrays(dense_share, ersm_share)
    claim = occlusion.background_claim(gaps, ERSM_NAME, DENSE, rho=0.9, n_boot=N_BOOT)
    assert claim.verdict == expected
    # orientation: gap(baseline) - gap(ERSM)
    assert claim.difference == pytest.approx(gaps[DENSE].mean() - gaps[ERSM_NAME].mean())
    assert claim.baseline == pytest.approx(gaps[DENSE].mean()) and claim.ersm == pytest.approx(gaps[ERSM_NAME].mean())
    if expected == SUPPORTED:
        assert claim.difference > 0 and claim.lo > 0
    if expected == NOT_SUPPORTED:
        assert claim.difference < 0 and claim.hi < 0


def test_background_claim_is_paired_by_image():
    """Gaps equal up to a constant image by image: the paired interval is exactly that constant."""
    base = np.linspace(-50, 100, 100)
    claim = occlusion.background_claim({DENSE: base + 5.0, ERSM_NAME: base}, ERSM_NAME, DENSE, rho=0.9, n_boot=N_BOOT)
    assert claim.difference == pytest.approx(5.0) and claim.lo == pytest.approx(5.0) and claim.hi == pytest.approx(5.0)
    assert claim.verdict == SUPPORTED


# ----------------------------------------------------------------------------- claim 4: deletion

LERF, MORF = deletion.PRIMARY, ("feature", "most", "deletion", "zero")


def seed_areas(mask: np.ndarray, magnitude: np.ndarray, protocols=(LERF,), extra=()) -> dict:
    out = {}
    for protocol in protocols:
        out[protocol, MASK], out[protocol, MAGNITUDE] = mask, magnitude
        for name in extra:
            out[protocol, name] = np.full_like(mask, 0.5)
    return out


def area_pair(shift: float, seed: int, n: int = 150) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    magnitude = rng.uniform(0.2, 0.8, size=n)
    noise = rng.normal(0, 0.05, size=n)
    return magnitude + shift + noise - noise.mean(), magnitude  # centred noise: the mean difference is the shift


@pytest.mark.parametrize("shift, expected", [(0.1, SUPPORTED), (0.0, INCONCLUSIVE), (-0.1, NOT_SUPPORTED)])
def test_deletion_claim_larger_lerf_area_for_the_mask_is_better(shift, expected):
    per_seed = [seed_areas(*area_pair(shift, seed)) for seed in range(3)]
    claim = deletion.deletion_claim(per_seed, N_BOOT, ERSM_NAME)
    a = np.mean([s[LERF, MASK] for s in per_seed], axis=0)
    b = np.mean([s[LERF, MAGNITUDE] for s in per_seed], axis=0)
    assert claim.verdict == expected
    assert claim.difference == pytest.approx((a - b).mean())  # orientation: mask - magnitude
    assert claim.ersm == pytest.approx(a.mean()) and claim.baseline == pytest.approx(b.mean())
    assert claim.baseline_name == "magnitude ranking"


def test_deletion_claim_reads_only_the_primary_protocol():
    """A MoRF (or any other) row cannot change the primary LeRF verdict."""
    per_seed = []
    for seed in range(2):
        areas = seed_areas(*area_pair(0.1, seed))
        areas[MORF, MASK], areas[MORF, MAGNITUDE] = area_pair(-0.3, seed + 10)
        per_seed.append(areas)
    assert deletion.deletion_claim(per_seed, N_BOOT, ERSM_NAME).verdict == SUPPORTED


def test_deletion_primary_protocol_is_feature_lerf_and_larger_is_better():
    assert deletion.PRIMARY == ("feature", "least", "deletion", "zero")
    assert deletion.PROTOCOLS[deletion.PRIMARY] == +1


def test_protocol_signs():
    """LeRF deletion and insertion: larger area is better (+1); MoRF deletion: smaller is better (-1)."""
    for protocols in (deletion.PROTOCOLS, deletion.ROAD):
        for (space, order, mode, fill), sign in protocols.items():
            expected = -1 if (order, mode) == ("most", "deletion") else +1
            assert sign == expected, (space, order, mode, fill)
    assert ("feature", "least", "insertion", "zero") not in deletion.PROTOCOLS  # insertion is MoRF only


def test_comparison_frame_orients_every_protocol():
    """The mask ranking's area is 0.1 below magnitude's everywhere: a gain where smaller is better (MoRF
    deletion), a loss where larger is better (LeRF, insertion). A dense model gets no comparison."""
    n = 120
    magnitude = np.linspace(0.3, 0.9, n)
    mask = magnitude - 0.1
    ersm_seeds = [seed_areas(mask, magnitude, protocols=deletion.PROTOCOLS, extra=(GRADCAM,)) for _ in range(2)]
    dense_seeds = [{(p, name): magnitude for p in deletion.PROTOCOLS for name in (MAGNITUDE, GRADCAM)} for _ in range(2)]
    frame = deletion.comparison_frame({ERSM_NAME: ersm_seeds, DENSE: dense_seeds}, deletion.PROTOCOLS, N_BOOT)
    assert len(frame) == 2 * len(deletion.PROTOCOLS)
    for protocol, sign in deletion.PROTOCOLS.items():
        row = frame[(frame.model == ERSM_NAME) & (frame.protocol == deletion.protocol_name(protocol))].iloc[0]
        assert row["mask - magnitude (oriented)"] == pytest.approx(-0.1 * sign)
        assert row["ci_lo"] == pytest.approx(-0.1 * sign) and row["ci_hi"] == pytest.approx(-0.1 * sign)
        assert superiority(row["ci_lo"], row["ci_hi"]) == (SUPPORTED if sign < 0 else NOT_SUPPORTED)
        assert row[MASK] == pytest.approx(mask.mean()) and row[MAGNITUDE] == pytest.approx(magnitude.mean())
        assert row[GRADCAM] == pytest.approx(0.5)
    dense_rows = frame[frame.model == DENSE]
    assert dense_rows["mask - magnitude (oriented)"].isna().all() and dense_rows[MASK].isna().all()
    morf = frame[(frame.model == ERSM_NAME) & (frame.protocol == "feature MoRF (zero)")].iloc[0]
    assert morf["mask - magnitude (oriented)"] > 0  # a smaller MoRF area for the mask is a gain


# ----------------------------------------------------------------------------- claim 5: mask quality

BASELINES = ["magnitude (dense)", "Grad-CAM (dense)"]


def quality_scores(ersm_auroc: np.ndarray, baseline_aurocs: list[np.ndarray]) -> dict:
    scores = {ERSM_NAME: {"pixel AUROC": ersm_auroc, "pointing game": np.zeros_like(ersm_auroc)}}
    for name, values in zip(BASELINES, baseline_aurocs):
        scores[name] = {"pixel AUROC": values, "pointing game": np.ones_like(values)}
    return scores


def auroc(level: float, seed: int, n: int = 200) -> np.ndarray:
    return np.clip(level + np.random.default_rng(seed).normal(0, 0.05, size=n), 0, 1)


@pytest.mark.parametrize("levels, verdicts, overall", [
    ([0.7, 0.65], [SUPPORTED, SUPPORTED], SUPPORTED),               # better than every baseline
    ([0.7, 0.8], [SUPPORTED, INCONCLUSIVE], INCONCLUSIVE),           # tied with one
    ([0.7, 0.95], [SUPPORTED, NOT_SUPPORTED], NOT_SUPPORTED),        # worse than one: not supported
    ([0.8, 0.95], [INCONCLUSIVE, NOT_SUPPORTED], NOT_SUPPORTED),
])
def test_quality_claims(levels, verdicts, overall):
    a = auroc(0.8, seed=0)
    b = [auroc(level, seed=i + 1) if level != 0.8 else a + np.random.default_rng(9).normal(0, 0.05, a.size)
         for i, level in enumerate(levels)]
    claims, got_overall = mask_quality.quality_claims(quality_scores(a, b), ERSM_NAME, BASELINES, N_BOOT)
    assert [c.verdict for c in claims] == verdicts and got_overall == overall
    for claim, baseline, values in zip(claims, BASELINES, b):
        assert claim.baseline_name == baseline
        assert claim.difference == pytest.approx((a - values).mean())  # orientation: ERSM - baseline
        assert claim.ersm == pytest.approx(a.mean()) and claim.baseline == pytest.approx(values.mean())


def test_quality_claims_drop_images_where_either_auroc_is_nan():
    a, b = auroc(0.8, seed=0), auroc(0.6, seed=1)
    a_nan, b_nan = a.copy(), b.copy()
    a_nan[:10] = np.nan
    b_nan[-5:] = np.nan
    keep = slice(10, -5)
    claims, _ = mask_quality.quality_claims(quality_scores(a_nan, [b_nan, b_nan]), ERSM_NAME, BASELINES, N_BOOT)
    reference, _ = mask_quality.quality_claims(quality_scores(a[keep], [b[keep], b[keep]]), ERSM_NAME, BASELINES, N_BOOT)
    assert claims[0].to_dict() == reference[0].to_dict()


def test_quality_claims_overall_needs_every_baseline():
    a = auroc(0.8, seed=0)
    scores = quality_scores(a, [auroc(0.6, seed=1), auroc(0.95, seed=2)])
    claims, overall = mask_quality.quality_claims(scores, ERSM_NAME, BASELINES[:1], N_BOOT)
    assert overall == SUPPORTED and len(claims) == 1
    assert mask_quality.quality_claims(scores, ERSM_NAME, BASELINES, N_BOOT)[1] == NOT_SUPPORTED


# ----------------------------------------------------------------------------- bad input

def good_correct() -> dict:
    return correct_dict({ERSM_NAME: [1, 1, 0.8, 0.8], DENSE: [1, 1, 0.3, 0.3]})


def bad_correct(change) -> dict:
    correct = good_correct()
    change(correct)
    return correct


def nan_hits(correct):
    correct[ERSM_NAME, 1, "square", "zero"] = np.full((len(FRACTIONS), N_IMAGES), np.nan)


def good_per_seed() -> list[dict]:
    return [seed_areas(*area_pair(0.1, seed)) for seed in range(2)]


def good_scores() -> dict:
    return quality_scores(auroc(0.8, 0), [auroc(0.6, 1), auroc(0.6, 2)])


def nan_scores() -> dict:
    scores = good_scores()
    scores[ERSM_NAME]["pixel AUROC"] = np.full(200, np.nan)
    return scores


BAD_INPUT = {
    # occlusion_claim and curve_area_difference
    "occlusion: empty dict": (lambda: occlusion.occlusion_claim({}, FRACTIONS, ERSM_NAME, DENSE), r"correct must be a non-empty dict"),
    "occlusion: missing treatment": (lambda: occlusion.occlusion_claim(good_correct(), FRACTIONS, "ERSM y", DENSE),
                                     r"treatment='ERSM y' is not a model in correct; models are \['ERSM x', 'dense'\]"),
    "occlusion: missing baseline": (lambda: occlusion.occlusion_claim(good_correct(), FRACTIONS, ERSM_NAME, "dense + Cutout"),
                                    r"baseline='dense \+ Cutout' is not a model in correct"),
    "occlusion: same model": (lambda: occlusion.occlusion_claim(good_correct(), FRACTIONS, DENSE, DENSE),
                              r"treatment='dense' and baseline='dense' are the same"),
    "occlusion: missing kind": (lambda: occlusion.occlusion_claim(good_correct(), FRACTIONS, ERSM_NAME, DENSE, kind="grid"),
                                r"correct has no entry for treatment='ERSM x' with kind='grid', fill='zero'; "
                                r"its \(kind, fill\) pairs are \[\('square', 'zero'\)\]"),
    "occlusion: NaN correctness": (lambda: occlusion.occlusion_claim(bad_correct(nan_hits), FRACTIONS, ERSM_NAME, DENSE),
                                   r"correct\[\('ERSM x', 1, 'square', 'zero'\)\] has NaN or inf"),
    "occlusion: one image": (lambda: occlusion.occlusion_claim({k: v[:, :1] for k, v in good_correct().items()}, FRACTIONS, ERSM_NAME, DENSE),
                             r"correct covers 1 test image\(s\); a bootstrap interval over images needs at least 2"),
    "occlusion: wrong fractions": (lambda: occlusion.occlusion_claim(good_correct(), FRACTIONS[:3], ERSM_NAME, DENSE),
                                   r"has shape \(4, 200\); expected \[len\(fractions\)=3, N images\]"),
    "occlusion: unpaired images": (lambda: occlusion.occlusion_claim(bad_correct(lambda c: c.update({(DENSE, 0, "square", "zero"):
                                                                                                     np.ones((4, 50), bool)})),
                                                                     FRACTIONS, ERSM_NAME, DENSE),
                                   r"covers 50 test images, others 200"),
    "occlusion: unsorted fractions": (lambda: occlusion.occlusion_claim(good_correct(), [0.0, 0.3, 0.1, 0.5], ERSM_NAME, DENSE),
                                      r"fractions=\[0.0, 0.3, 0.1, 0.5\] must be a strictly increasing list"),
    "occlusion: NaN at_least": (lambda: occlusion.occlusion_claim(good_correct(), FRACTIONS, ERSM_NAME, DENSE, at_least=float("nan")),
                                r"at_least=nan must be a finite number"),
    "curve area: missing baseline": (lambda: occlusion.curve_area_difference(good_correct(), FRACTIONS, ERSM_NAME, "cutout", "square", "zero"),
                                     r"baseline='cutout' is not a model in correct"),
    "curve area: one fraction": (lambda: occlusion.curve_area_difference({k: v[:1] for k, v in good_correct().items()}, [0.0], ERSM_NAME, DENSE,
                                                                         "square", "zero"),
                                 r"fractions=\[0.0\] must be a strictly increasing list of at least 2"),
    "curve area: NaN": (lambda: occlusion.curve_area_difference(bad_correct(nan_hits), FRACTIONS, ERSM_NAME, DENSE, "square", "zero"),
                        r"has NaN or inf"),
    # background_claim
    "background: empty dict": (lambda: occlusion.background_claim({}, ERSM_NAME, DENSE, 0.9), r"gaps must be a non-empty dict"),
    "background: missing baseline": (lambda: occlusion.background_claim({ERSM_NAME: np.zeros(10)}, ERSM_NAME, DENSE, 0.9),
                                     r"baseline='dense' is not a model in gaps; models are \['ERSM x'\]"),
    "background: missing treatment": (lambda: occlusion.background_claim({DENSE: np.zeros(10)}, ERSM_NAME, DENSE, 0.9),
                                      r"treatment='ERSM x' is not a model in gaps"),
    "background: NaN gaps": (lambda: occlusion.background_claim({DENSE: np.zeros(10), ERSM_NAME: np.full(10, np.nan)}, ERSM_NAME, DENSE, 0.9),
                             r"gaps\['ERSM x'\] has 10 NaN or inf value\(s\) of 10"),
    "background: one image": (lambda: occlusion.background_claim({DENSE: np.zeros(1), ERSM_NAME: np.zeros(1)}, ERSM_NAME, DENSE, 0.9),
                              r"gaps\['dense'\] has 1 value\(s\); a bootstrap interval over test images needs at least 2"),
    "background: unpaired": (lambda: occlusion.background_claim({DENSE: np.zeros(10), ERSM_NAME: np.zeros(9)}, ERSM_NAME, DENSE, 0.9),
                             r"gaps\['ERSM x'\] has 9 values, but the values it is paired with have 10"),
    "background: rho": (lambda: occlusion.background_claim(gap_arrays(0.5, 0.5), ERSM_NAME, DENSE, 1.5),
                        r"rho=1.5 must lie in \[0.0, 1.0\]"),
    # deletion_claim and comparison_frame
    "deletion: empty list": (lambda: deletion.deletion_claim([], N_BOOT, ERSM_NAME), r"per_seed must be a non-empty list"),
    "deletion: dense model": (lambda: deletion.deletion_claim([{(LERF, MAGNITUDE): np.ones(5), (LERF, GRADCAM): np.ones(5)}], N_BOOT, DENSE),
                              r"per_seed\[0\] has no area for .*'ERSM mask'.*its rankings for that protocol are \['Grad-CAM', 'magnitude'\]"),
    "deletion: NaN areas": (lambda: deletion.deletion_claim([seed_areas(np.full(20, np.nan), np.ones(20))], N_BOOT, ERSM_NAME),
                            r"per_seed\[0\]\[.*'ERSM mask'\)\] has 20 NaN or inf"),
    "deletion: one image": (lambda: deletion.deletion_claim([seed_areas(np.ones(1), np.ones(1))], N_BOOT, ERSM_NAME),
                            r"has 1 value\(s\); a bootstrap interval over test images needs at least 2"),
    "deletion: unpaired seeds": (lambda: deletion.deletion_claim([seed_areas(np.ones(5), np.ones(5)), seed_areas(np.ones(4), np.ones(4))],
                                                                 N_BOOT, ERSM_NAME),
                                 r"per_seed\[1\]\[.*\] has 4 values, but the values it is paired with have 5"),
    "comparison: empty": (lambda: deletion.comparison_frame({}, deletion.PROTOCOLS, N_BOOT), r"per_seed must be a non-empty dict"),
    "comparison: no seeds": (lambda: deletion.comparison_frame({ERSM_NAME: []}, deletion.PROTOCOLS, N_BOOT),
                             r"per_seed\['ERSM x'\] must be a non-empty list"),
    "comparison: bad sign": (lambda: deletion.comparison_frame({ERSM_NAME: good_per_seed()}, {LERF: 2}, N_BOOT),
                             r"protocols\[\('feature', 'least', 'deletion', 'zero'\)\]=2 must be \+1"),
    "comparison: mask without magnitude": (lambda: deletion.comparison_frame({ERSM_NAME: [{(LERF, MASK): np.ones(5)}]}, {LERF: 1}, N_BOOT),
                                           r"per_seed\['ERSM x'\]\[0\] has no area for .*'magnitude'"),
    # quality_claims
    "quality: empty scores": (lambda: mask_quality.quality_claims({}, ERSM_NAME, BASELINES, N_BOOT), r"scores must be a non-empty dict"),
    "quality: missing ERSM map": (lambda: mask_quality.quality_claims(good_scores(), "ERSM y mask", BASELINES, N_BOOT),
                                  r"ersm_name='ERSM y mask' is not a map in scores; maps are \["),
    "quality: missing baseline": (lambda: mask_quality.quality_claims(good_scores(), ERSM_NAME, ["Grad-CAM (ERSM)"], N_BOOT),
                                  r"baselines\[0\]='Grad-CAM \(ERSM\)' is not a map in scores"),
    "quality: no baselines": (lambda: mask_quality.quality_claims(good_scores(), ERSM_NAME, [], N_BOOT),
                              r"baselines=\[\] must be a non-empty list"),
    "quality: baselines a string": (lambda: mask_quality.quality_claims(good_scores(), ERSM_NAME, BASELINES[0], N_BOOT),
                                    r"baselines='magnitude \(dense\)' must be a non-empty list"),
    "quality: baseline is the ERSM map": (lambda: mask_quality.quality_claims(good_scores(), ERSM_NAME, [ERSM_NAME], N_BOOT),
                                          r"ersm_name='ERSM x' and baselines\[0\]='ERSM x' are the same"),
    "quality: NaN-only scores": (lambda: mask_quality.quality_claims(nan_scores(), ERSM_NAME, BASELINES, N_BOOT),
                                 r"scores\['ERSM x'\] and scores\['magnitude \(dense\)'\] have 0 image\(s\) with both pixel AUROC scores not NaN"),
    "quality: no AUROC": (lambda: mask_quality.quality_claims({**good_scores(), ERSM_NAME: {"pointing game": np.ones(3)}},
                                                              ERSM_NAME, BASELINES, N_BOOT),
                          r"scores\['ERSM x'\] has no 'pixel AUROC' scores"),
    "quality: unpaired images": (lambda: mask_quality.quality_claims(quality_scores(auroc(0.8, 0), [auroc(0.6, 1, n=150), auroc(0.6, 2)]),
                                                                     ERSM_NAME, BASELINES, N_BOOT),
                                 r"scores\['magnitude \(dense\)'\]\['pixel AUROC'\] has 150 values, but the values it is paired with have 200"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_refused_naming_the_argument(case):
    call, message = BAD_INPUT[case]
    with pytest.raises(ValueError, match=message):
        call()


def test_the_good_inputs_behind_the_bad_ones_give_verdicts():
    """The bad-input cases above break one thing each in these inputs, which are accepted."""
    assert occlusion.occlusion_claim(good_correct(), FRACTIONS, ERSM_NAME, DENSE, n_boot=N_BOOT).verdict == SUPPORTED
    area = occlusion.curve_area_difference(good_correct(), FRACTIONS, ERSM_NAME, DENSE, "square", "zero", N_BOOT)
    assert superiority(*area[3:]) == SUPPORTED
    assert occlusion.background_claim(gap_arrays(0.6, 0.1), ERSM_NAME, DENSE, 0.9, n_boot=N_BOOT).verdict == SUPPORTED
    assert deletion.deletion_claim(good_per_seed(), N_BOOT, ERSM_NAME).verdict == SUPPORTED
    assert mask_quality.quality_claims(good_scores(), ERSM_NAME, BASELINES, N_BOOT)[1] == SUPPORTED
    # a few NaN AUROCs are fine (those images are left out), and so is a single seed for a bootstrap
    scores = good_scores()
    scores[ERSM_NAME]["pixel AUROC"][:5] = np.nan
    assert mask_quality.quality_claims(scores, ERSM_NAME, BASELINES, N_BOOT)[1] == SUPPORTED
    assert deletion.deletion_claim(good_per_seed()[:1], N_BOOT, ERSM_NAME).verdict == SUPPORTED


# ----------------------------------------------------------------------------- the magnitude baseline

ENERGY_MASK = dict(proj_dim=8, lambda_unary=1.0, lambda_pair=1.0)


def tiny_images(n: int = 6) -> torch.Tensor:
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(0))


def test_stage_view_magnitude_reads_features_before_the_mask():
    torch.manual_seed(0)
    model = ersm.build_model("small_cnn", energy_mask=dict(ENERGY_MASK)).eval()
    with torch.no_grad():  # a non-trivial mask: the unary score varies from token to token
        model.layer2[1].score.weight.mul_(20.0)
    images = tiny_images()
    view = rankings.stage_view(model, images)
    with torch.no_grad():
        unmasked = model.layer2[0](model.layer1(model.stem(images)))
        masked = model.layer2(model.layer1(model.stem(images)))
    torch.testing.assert_close(view.rankings[MAGNITUDE], unmasked.norm(dim=1))
    torch.testing.assert_close(view.rankings[rankings.MASKED_MAGNITUDE], masked.norm(dim=1))
    torch.testing.assert_close(view.features, masked)
    torch.testing.assert_close(view.rankings[MASK], model.layer2[1].terms.mask[:, 0])
    # the masked magnitude differs, and not just by a constant factor per image
    assert not torch.allclose(view.rankings[MAGNITUDE], view.rankings[rankings.MASKED_MAGNITUDE], rtol=1e-3)
    ratio = view.rankings[rankings.MASKED_MAGNITUDE] / view.rankings[MAGNITUDE].clamp_min(1e-12)
    assert (ratio.flatten(1).std(1) > 1e-3).all()


def test_stage_view_magnitude_of_a_dense_model_is_the_stage_output():
    torch.manual_seed(0)
    model = ersm.build_model("small_cnn").eval()
    images = tiny_images()
    view = rankings.stage_view(model, images, stage="layer2")
    with torch.no_grad():
        out = model.layer2(model.layer1(model.stem(images)))
    torch.testing.assert_close(view.rankings[MAGNITUDE], out.norm(dim=1))
    assert MASK not in view.rankings and rankings.MASKED_MAGNITUDE not in view.rankings


# ----------------------------------------------------------------------------- the objective

def forward_batch(model, n: int = 4):
    x = torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.arange(n) % 10
    return model(x), y


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0, 7.5])
def test_objective_is_cross_entropy_plus_beta_times_regulariser(beta):
    torch.manual_seed(0)
    model = ersm.build_model("small_cnn", energy_mask=dict(ENERGY_MASK))
    logits, y = forward_batch(model)
    objective = ersm.ersm_objective(logits, y, model, beta)
    terms = model.layer2[1].terms
    reg = (terms.mask * terms.energy).mean()
    torch.testing.assert_close(objective.cross_entropy, F.cross_entropy(logits, y))
    torch.testing.assert_close(objective.regularizer, reg)
    torch.testing.assert_close(objective.total, F.cross_entropy(logits, y) + beta * reg)
    assert reg.item() > 0


def test_objective_of_a_dense_model_has_no_regulariser():
    torch.manual_seed(0)
    model = ersm.build_model("small_cnn")
    logits, y = forward_batch(model)
    objective = ersm.ersm_objective(logits, y, model, 5.0)
    assert objective.regularizer.item() == 0.0
    torch.testing.assert_close(objective.total, objective.cross_entropy)


def test_regulariser_sums_over_every_energy_mask():
    torch.manual_seed(0)
    model = ersm.build_model("small_cnn", energy_mask=dict(ENERGY_MASK), after="layer1")
    ersm.insert_energy_mask(model, after="layer2", **ENERGY_MASK)
    layers = [layer for _, layer in ersm.energy_masks(model)]
    assert len(layers) == 2
    logits, y = forward_batch(model)
    parts = [(layer.terms.mask * layer.terms.energy).mean() for layer in layers]
    assert layers[0].terms.mask.shape[-1] != layers[1].terms.mask.shape[-1]  # two grids: not a mean over all tokens
    objective = ersm.ersm_objective(logits, y, model, 2.0)
    torch.testing.assert_close(objective.regularizer, parts[0] + parts[1])
    torch.testing.assert_close(objective.total, objective.cross_entropy + 2.0 * (parts[0] + parts[1]))


@pytest.mark.parametrize("beta", [-0.1, -1.0, float("nan")])
def test_objective_refuses_a_negative_beta(beta):
    torch.manual_seed(0)
    model = ersm.build_model("small_cnn", energy_mask=dict(ENERGY_MASK))
    logits, y = forward_batch(model)
    with pytest.raises(ValueError, match=r"beta=.* must be >= 0"):
        ersm.ersm_objective(logits, y, model, beta)


# ----------------------------------------------------------------------------- the calibrated mask

@pytest.mark.parametrize("offset, log_t", [(0.7, math.log(2.5)), (-0.4, math.log(0.3))])
def test_calibrated_mask_against_a_float64_reference(offset, log_t):
    torch.manual_seed(0)
    layer = ersm.EnergyMask(6, proj_dim=5, lambda_unary=1.7, lambda_pair=0.6, variant="calibrated")
    with torch.no_grad():
        layer.mask_offset.fill_(offset)
        layer.log_temperature.fill_(log_t)
    x = torch.randn(2, 6, 5, 4, generator=torch.Generator().manual_seed(3))
    y = layer(x)
    # by hand, in float64: p = normalise(P x + b_P); E_un = lambda_u softplus(w . p + b); m = sigmoid((a - E_un) / T)
    xd = x.double().permute(0, 2, 3, 1)                                   # [B, H, W, C]
    P, bP = layer.proj.weight[:, :, 0, 0].double(), layer.proj.bias.double()
    w, b = layer.score.weight[0, :, 0, 0].double(), layer.score.bias.double()[0]
    p = xd @ P.T + bP
    p = p / p.norm(dim=-1, keepdim=True)
    unary = 1.7 * torch.log1p(torch.exp(p @ w + b))                       # [B, H, W]
    temperature = math.exp(log_t)
    assert temperature != 1.0
    mask = 1.0 / (1.0 + torch.exp(-(offset - unary) / temperature))
    torch.testing.assert_close(layer.terms.unary[:, 0].double(), unary, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.terms.mask[:, 0].double(), mask, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y.double(), x.double() * mask[:, None], rtol=1e-5, atol=1e-6)
    # the temperature and offset matter: this is not the paper's mask
    assert (layer.terms.mask[:, 0].double() - torch.sigmoid(-unary)).abs().max() > 1e-2


# ----------------------------------------------------------------------------- training learns

def test_training_learns_above_chance(tmp_path, monkeypatch):
    """An ERSM model trained for 3 short epochs is right far more often than chance (10 classes).

    Sized to about 10 s on the 2-core CPU: 300 images x 3 epochs on the 48 px cluttered task
    stayed near chance (9-15%; the task is hard: the ci profile reaches 50-68% with 2000 images x
    6 epochs), so this uses a 36 px canvas without distractors, 1000 images and lr 0.01 (about
    56% here).
    """
    monkeypatch.setenv("ERSM_HOME", str(tmp_path))
    config = ersm.config.TrainConfig(model="paper", n_train=1000, n_test=200, epochs=3, canvas=36, clutter=0,
                                     batch_size=32, lr=0.01)
    model = ersm.train.train(config, run_dir=tmp_path / "run", progress=False)
    images, labels, _ = ersm.train.test_data(config)
    test_accuracy = ersm.inference.accuracy(model, images, labels)
    history = ersm.checkpoint.load_checkpoint(tmp_path / "run")["history"]
    assert len(history) == 3 and history[-1]["test_accuracy"] == pytest.approx(test_accuracy)
    assert test_accuracy > 0.3, f"test accuracy {test_accuracy:.3f} after 3 epochs; chance is 0.1"
    assert history[-1]["loss"] < history[0]["loss"]
