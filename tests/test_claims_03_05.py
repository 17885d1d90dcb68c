"""Rules v2 for claims 03 (occlusion, background reliance), 04 (deletion) and 05 (mask quality).

On synthetic inputs with known answers: a true effect gives SUPPORTED, no effect INCONCLUSIVE,
a reversed effect NOT SUPPORTED, and the sign of every comparison is pinned (a positive
difference favours the claim). The headroom shares, the primary rho (incl. "saturated") and
retained accuracy are checked against hand computations; NaN images are dropped per comparison
in the quality claims; every verdict reads the rules v2 interval of per-seed, per-image arrays,
which is wider than the image-only bootstrap when seeds disagree. Bad input is refused with a
ValueError naming the argument and the value, before any work.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from ersm.study import profiles
from ersm.experiments import common, deletion, mask_quality, occlusion
from ersm.experiments.common import CUTOUT, DENSE
from ersm.experiments.rankings import ENERGY, GRADCAM, MAGNITUDE, MASK, MASKED_MAGNITUDE
from ersm.metrics.hierarchical import paired_rule_v2_interval
from ersm.metrics.stats import paired_bootstrap
from ersm.study.verdicts import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Claim, claims_markdown, superiority
from helpers.bad_input import refusal_test

N_BOOT = 400
ERSM_NAME = "ERSM x"


# ----------------------------------------------------------------------------- claim 3: occlusion

FRACTIONS = [0.0, 0.1, 0.2, 0.3]


def first_right(counts, n: int = 100) -> np.ndarray:
    """``bool [len(counts), n]``: row ``j`` right on its first ``counts[j]`` images (so its accuracy is known exactly)."""
    return np.arange(n)[None, :] < np.asarray(counts)[:, None]


def random_hits(p_per_fraction, seed: int, n: int = 300) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(len(p_per_fraction), n)) < np.asarray(p_per_fraction)[:, None]


def correct_dict(curves: dict[str, list], kind="square", fill="zero", seeds=(0, 1, 2)) -> dict:
    """Random hits for every model and seed; each (model, seed) its own draw."""
    return {(name, s, kind, fill): random_hits(p, seed=100 * i + s)
            for i, (name, p) in enumerate(curves.items()) for s in seeds}


def test_headroom_fractions_by_hand():
    # dense accuracy (%) per fraction, per seed; mean over seeds: 90, 50, 20, 19.5 (N = 100 images)
    correct = {(DENSE, 0, "square", "zero"): first_right([90, 60, 30, 19]),
               (DENSE, 1, "square", "zero"): first_right([90, 40, 10, 20]),
               (ERSM_NAME, 0, "square", "zero"): first_right([10, 0, 0, 0]),  # read nowhere
               (ERSM_NAME, 1, "square", "zero"): first_right([10, 0, 0, 0])}
    assert occlusion.headroom_fractions(correct, FRACTIONS) == [0.1, 0.2]   # 20% is at least chance + 10; 0% is not occluded
    assert occlusion.headroom_fractions(correct, FRACTIONS, margin=40.0) == [0.1]
    assert occlusion.headroom_fractions(correct, FRACTIONS, margin=40.5) == []
    assert occlusion.headroom_fractions(correct, FRACTIONS, chance=0.0, margin=19.5) == [0.1, 0.2, 0.3]
    assert occlusion.headroom_fractions(correct, FRACTIONS, baseline=ERSM_NAME) == []


@pytest.mark.parametrize("dataset, chance", [("cluttered_digits", 10.0), ("cifar10", 10.0), ("oxford_pet", 100 / 37)])
def test_chance_level_is_a_uniform_guess_over_the_dataset_classes(dataset, chance):
    assert occlusion.chance_level(dataset) == pytest.approx(chance)


def test_the_pet_bar_admits_a_share_the_ten_class_bar_refuses():
    # dense at 15% under occlusion: above 2.7 + 10 points (37 breeds), below 10 + 10 (10 classes)
    correct = {(DENSE, s, "square", "zero"): first_right([90, 15, 15, 15]) for s in (0, 1)}
    assert occlusion.headroom_fractions(correct, FRACTIONS) == []
    pets = occlusion.chance_level("oxford_pet")
    assert occlusion.headroom_fractions(correct, FRACTIONS, chance=pets) == [0.1, 0.2, 0.3]


def test_chance_level_refuses_an_unknown_dataset():
    with pytest.raises(ValueError, match="dataset='mnist'"):
        occlusion.chance_level("mnist")


def test_headroom_reads_the_requested_condition():
    correct = {(DENSE, s, "grid", "texture"): first_right([90, 90, 90, 90]) for s in (0, 1)}
    correct |= {(DENSE, s, "square", "zero"): first_right([90, 50, 5, 5]) for s in (0, 1)}
    assert occlusion.headroom_fractions(correct, FRACTIONS) == [0.1]
    assert occlusion.headroom_fractions(correct, FRACTIONS, kind="grid", fill="texture") == [0.1, 0.2, 0.3]


def hand_correct() -> dict:
    """Dense headroom at 10% and 20% (mean 50% and 20%; 30% is at 10%), retained accuracy by hand:
    dense seed 0: (40 + 30) / 2 / 80 = 43.75%, seed 1: (60 + 10) / 2 / 100 = 35% -> 39.375%;
    ERSM seed 0: (40 + 30) / 2 / 50 = 70%,   seed 1: (42 + 28) / 2 / 70 = 50% -> 60%.
    The absolute accuracy at those shares is 35% for both."""
    return {(DENSE, 0, "square", "zero"): first_right([80, 40, 30, 10]),
            (DENSE, 1, "square", "zero"): first_right([100, 60, 10, 10]),
            (ERSM_NAME, 0, "square", "zero"): first_right([50, 40, 30, 90]),
            (ERSM_NAME, 1, "square", "zero"): first_right([70, 42, 28, 90])}


def test_retained_accuracy_by_hand():
    correct = hand_correct()
    claim = occlusion.occlusion_claim(correct, FRACTIONS, ERSM_NAME, DENSE, n_boot=N_BOOT)
    assert claim.baseline == pytest.approx(39.375) and claim.ersm == pytest.approx(60.0)
    assert claim.difference == pytest.approx(60.0 - 39.375)      # oriented treatment - baseline
    assert claim.lo <= claim.difference <= claim.hi
    assert "at 10%, 20% occluded" in claim.metric and "retained accuracy" in claim.metric
    # the absolute accuracy at the same shares is equal (35%): reported, and not what the verdict reads
    base, treat, diff, lo, hi = occlusion.accuracy_difference(correct, FRACTIONS, ERSM_NAME, DENSE, [0.1, 0.2], n_boot=N_BOOT)
    assert base == pytest.approx(35.0) and treat == pytest.approx(35.0) and diff == pytest.approx(0.0)


def test_retained_accuracy_is_the_mean_over_seeds_of_occluded_over_clean():
    correct = correct_dict({ERSM_NAME: [0.9, 0.8, 0.7, 0.6], DENSE: [0.95, 0.5, 0.3, 0.1]})
    assert occlusion.headroom_fractions(correct, FRACTIONS) == [0.1, 0.2]  # dense: ~50%, ~30%, ~10%
    claim = occlusion.occlusion_claim(correct, FRACTIONS, ERSM_NAME, DENSE, n_boot=N_BOOT)

    def retained(name):  # per seed: accuracy over the 10% and 20% rows / clean accuracy
        hits = [correct[name, s, "square", "zero"] for s in range(3)]
        return 100 * np.mean([h[1:3].mean() / h[0].mean() for h in hits])

    assert claim.ersm == pytest.approx(retained(ERSM_NAME)) and claim.baseline == pytest.approx(retained(DENSE))
    assert claim.difference == pytest.approx(retained(ERSM_NAME) - retained(DENSE))


@pytest.mark.parametrize("ersm_curve, dense_curve, expected", [
    ([0.9, 0.85, 0.8, 0.75], [0.9, 0.6, 0.4, 0.3], SUPPORTED),
    ([0.9, 0.4, 0.3, 0.25], [0.9, 0.8, 0.75, 0.7], NOT_SUPPORTED),
])
def test_occlusion_claim_verdict_and_sign(ersm_curve, dense_curve, expected):
    claim = occlusion.occlusion_claim(correct_dict({ERSM_NAME: ersm_curve, DENSE: dense_curve}), FRACTIONS, ERSM_NAME, DENSE,
                                      n_boot=N_BOOT)
    assert claim.verdict == expected
    assert claim.difference == pytest.approx(claim.ersm - claim.baseline)
    assert (claim.difference > 0 and claim.lo > 0) if expected == SUPPORTED else (claim.difference < 0 and claim.hi < 0)


def test_occlusion_claim_no_effect_is_inconclusive():
    """Each seed: dense right on the same number of images as ERSM at every share, on other images: difference exactly 0."""
    correct = correct_dict({ERSM_NAME: [0.9, 0.5, 0.4, 0.3]})
    correct |= {(DENSE, s, k, f): hits[:, ::-1].copy() for (_, s, k, f), hits in correct.items()}
    claim = occlusion.occlusion_claim(correct, FRACTIONS, ERSM_NAME, DENSE, n_boot=N_BOOT)
    assert claim.difference == pytest.approx(0.0) and claim.lo < 0 < claim.hi and claim.verdict == INCONCLUSIVE


def test_occlusion_claim_without_headroom_is_inconclusive_and_prints_readably():
    correct = correct_dict({ERSM_NAME: [0.9, 0.9, 0.9, 0.9], DENSE: [0.9, 0.15, 0.1, 0.1]})
    claim = occlusion.occlusion_claim(correct, FRACTIONS, ERSM_NAME, DENSE, n_boot=N_BOOT)
    assert claim.verdict == INCONCLUSIVE and "no headroom" in claim.rule
    assert all(math.isnan(v) for v in (claim.baseline, claim.ersm, claim.difference, claim.lo, claim.hi))
    assert "difference: n/a [95% CI n/a, n/a]" in claim.describe()
    row = claim.to_dict()
    assert "| dense: n/a | n/a | n/a [n/a, n/a] | **INCONCLUSIVE** |" in claims_markdown([row])
    # as read back from the results JSON, where NaN is stored as null
    assert "n/a [n/a, n/a]" in claims_markdown([{**row, **{k: None for k in ("baseline", "ersm", "difference", "lo", "hi")}}])


def test_occlusion_claim_against_cutout_takes_the_shares_from_dense():
    correct = {(DENSE, s, "square", "zero"): first_right([90, 50, 5, 5]) for s in (0, 1)}            # headroom: 10% only
    correct |= {(CUTOUT, s, "square", "zero"): first_right([90, 90, 90, 90]) for s in (0, 1)}
    correct |= {(ERSM_NAME, s, "square", "zero"): first_right([80, 40, 80, 80]) for s in (0, 1)}
    claim = occlusion.occlusion_claim(correct, FRACTIONS, ERSM_NAME, CUTOUT, n_boot=N_BOOT)
    assert "at 10% occluded" in claim.metric and claim.baseline_name == CUTOUT
    assert claim.ersm == pytest.approx(50.0) and claim.baseline == pytest.approx(100.0) and claim.verdict == NOT_SUPPORTED


def test_occlusion_claim_reads_only_the_requested_kind_and_fill():
    correct = correct_dict({ERSM_NAME: [1, 1, 1, 1], DENSE: [1, 0.5, 0.5, 0.5]}, kind="grid", fill="texture")
    correct |= correct_dict({ERSM_NAME: [1, 0.5, 0.5, 0.5], DENSE: [1, 1, 1, 1]})  # square, zero: reversed
    assert occlusion.occlusion_claim(correct, FRACTIONS, ERSM_NAME, DENSE, n_boot=N_BOOT).verdict == NOT_SUPPORTED
    grid = occlusion.occlusion_claim(correct, FRACTIONS, ERSM_NAME, DENSE, n_boot=N_BOOT, kind="grid", fill="texture")
    assert grid.verdict == SUPPORTED and grid.ersm == pytest.approx(100.0)


def test_curve_area_difference_is_trapezoid_of_per_image_curves():
    fractions = [0.0, 0.25, 0.5]
    ok = np.ones((3, 100), dtype=bool)
    half = ok.copy()
    half[2] = False                     # wrong only at the last point
    correct = {("A", s, "grid", "zero"): ok for s in (0, 1)} | {("B", s, "grid", "zero"): half for s in (0, 1)}
    base, treat, diff, lo, hi = occlusion.curve_area_difference(correct, fractions, "A", "B", "grid", "zero", n_boot=N_BOOT)
    # B's curve 1, 1, 0 over [0, 0.5]: trapezoid area 0.375 / 0.5 = 0.75
    assert base == pytest.approx(75.0) and treat == pytest.approx(100.0)
    assert diff == pytest.approx(25.0) and lo == pytest.approx(25.0) and hi == pytest.approx(25.0)


@pytest.mark.parametrize("ersm_curve, dense_curve, expected", [
    ([0.9, 0.8, 0.7, 0.6], [0.9, 0.5, 0.3, 0.1], SUPPORTED), ([0.9, 0.5, 0.3, 0.1], [0.9, 0.8, 0.7, 0.6], NOT_SUPPORTED)])
def test_curve_area_difference_sign(ersm_curve, dense_curve, expected):
    correct = correct_dict({ERSM_NAME: ersm_curve, DENSE: dense_curve}, kind="object", fill="texture")
    base, treat, diff, lo, hi = occlusion.curve_area_difference(correct, FRACTIONS, ERSM_NAME, DENSE, "object", "texture", N_BOOT)
    assert diff == pytest.approx(treat - base) and superiority(lo, hi) == expected


class PixelClassifier(nn.Module):
    """Predicts the class written in each image's first pixel (a stub model for ``predict``)."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, images):
        return nn.functional.one_hot(images[:, 0, 0, 0].long(), 10).float() + 0 * self.unused


def test_background_gaps_are_per_seed_per_image():
    labels = torch.arange(8) % 10
    aligned = torch.zeros(8, 1, 4, 4)
    aligned[:, 0, 0, 0] = labels.float()                               # right on every aligned image
    swapped = aligned.clone()
    swapped[:3, 0, 0, 0] = (labels[:3] + 1).float()                    # wrong on the first 3 swapped ones
    gaps, swapped_accuracy = occlusion.background_gaps({DENSE: [PixelClassifier(), PixelClassifier()]},
                                                       (aligned, labels), (swapped, labels))
    expected = np.where(np.arange(8) < 3, 100.0, 0.0)
    assert gaps[DENSE].shape == (2, 8)
    np.testing.assert_array_equal(gaps[DENSE], np.stack([expected, expected]))
    np.testing.assert_allclose(swapped_accuracy[DENSE], [62.5, 62.5])


def test_background_rho_by_hand():
    swapped = {0.9: {DENSE: [5.0, 8.0], ERSM_NAME: [90.0, 90.0]},   # ERSM's numbers are not read
               0.5: {DENSE: [60.0, 50.0]},
               0.7: {DENSE: [25.0, 15.0]}}                           # mean exactly 20: qualifies
    assert occlusion.background_rho(swapped) == 0.7
    assert occlusion.background_rho(swapped, margin=15.0) == 0.5
    assert occlusion.background_rho(swapped, margin=46.0) is None   # saturated: 55% is the best mean


def gap_arrays(dense_share: float, ersm_share: float, seeds: int = 3, n: int = 300, seed: int = 0) -> dict:
    """Per seed and image, gaps (points): 100 on a share of the images (right only when aligned), else 0."""
    rng = np.random.default_rng(seed)
    return {DENSE: 100.0 * (rng.uniform(size=(seeds, n)) < dense_share),
            ERSM_NAME: 100.0 * (rng.uniform(size=(seeds, n)) < ersm_share)}


def swapped_at(*means_by_rho) -> dict:
    return {rho: {DENSE: np.full(3, mean), ERSM_NAME: np.full(3, 50.0)} for rho, mean in means_by_rho}


@pytest.mark.parametrize("dense_share, ersm_share, expected", [
    (0.6, 0.1, SUPPORTED),      # ERSM's gap is smaller: it relies less on the background
    (0.1, 0.6, NOT_SUPPORTED),  # ERSM's gap is larger
])
def test_background_claim_smaller_gap_for_ersm_is_positive(dense_share, ersm_share, expected):
    gaps = {0.7: gap_arrays(dense_share, ersm_share), 0.9: gap_arrays(ersm_share, dense_share, seed=1)}  # 0.9 reversed
    claim = occlusion.background_claim(gaps, swapped_at((0.7, 30.0), (0.9, 12.0)), ERSM_NAME, DENSE, n_boot=N_BOOT)
    chosen = gaps[0.7]
    assert claim.verdict == expected and "rho=0.7" in claim.metric
    assert claim.difference == pytest.approx(chosen[DENSE].mean() - chosen[ERSM_NAME].mean())  # gap(dense) - gap(ERSM)
    assert claim.baseline == pytest.approx(chosen[DENSE].mean()) and claim.ersm == pytest.approx(chosen[ERSM_NAME].mean())
    assert (claim.lo > 0) if expected == SUPPORTED else (claim.hi < 0)


def test_background_claim_no_effect_is_inconclusive():
    base = np.where(np.random.default_rng(0).uniform(size=(3, 300)) < 0.5, 100.0, 0.0)
    gaps = {0.9: {DENSE: base, ERSM_NAME: base[:, ::-1].copy()}}  # the same gaps on other images: difference exactly 0
    claim = occlusion.background_claim(gaps, swapped_at((0.9, 30.0)), ERSM_NAME, DENSE, n_boot=N_BOOT)
    assert claim.difference == pytest.approx(0.0) and claim.lo < 0 < claim.hi and claim.verdict == INCONCLUSIVE


def test_background_claim_saturated_is_inconclusive():
    gaps = {0.7: gap_arrays(0.6, 0.1), 0.9: gap_arrays(0.6, 0.1)}
    claim = occlusion.background_claim(gaps, swapped_at((0.7, 19.0), (0.9, 3.0)), ERSM_NAME, DENSE, n_boot=N_BOOT)
    assert claim.verdict == INCONCLUSIVE and "saturated" in claim.rule and "rho=0.7: 19.0%" in claim.rule
    assert math.isnan(claim.difference) and "n/a" in claim.describe()


def test_background_claim_is_paired_by_image_and_seed():
    """Gaps equal up to a constant image by image: the paired interval is exactly that constant."""
    base = np.tile(np.linspace(-50, 100, 100), (3, 1)) + np.arange(3)[:, None]
    claim = occlusion.background_claim({0.9: {DENSE: base + 5.0, ERSM_NAME: base}}, swapped_at((0.9, 40.0)), ERSM_NAME, DENSE,
                                       n_boot=N_BOOT)
    assert claim.difference == pytest.approx(5.0) and claim.lo == pytest.approx(5.0) and claim.hi == pytest.approx(5.0)
    assert claim.verdict == SUPPORTED


def test_background_gap_difference_at_every_rho():
    gaps = {0.7: gap_arrays(0.6, 0.1), 0.9: gap_arrays(0.1, 0.6)}
    assert superiority(*occlusion.background_gap_difference(gaps, ERSM_NAME, DENSE, 0.7, N_BOOT)[3:]) == SUPPORTED
    assert superiority(*occlusion.background_gap_difference(gaps, ERSM_NAME, DENSE, 0.9, N_BOOT)[3:]) == NOT_SUPPORTED


# ----------------------------------------------------------------------------- the interval counts seeds

def seed_shifted_areas(shifts, n: int = 300) -> list[dict]:
    """Per seed: magnitude areas and ranking areas = magnitude + that seed's shift (+ centred noise)."""
    per_seed = []
    for s, shift in enumerate(shifts):
        rng = np.random.default_rng(s)
        magnitude = rng.uniform(0.2, 0.8, size=n)
        noise = rng.normal(0, 0.02, size=n)
        ranking = magnitude + shift + noise - noise.mean()
        per_seed.append({(deletion.PRIMARY, MASK): ranking, (deletion.PRIMARY, ENERGY): ranking,
                         (deletion.PRIMARY, MAGNITUDE): magnitude})
    return per_seed


def test_v2_interval_is_wider_than_the_image_bootstrap_when_seeds_disagree():
    per_seed = seed_shifted_areas([0.10, -0.02, 0.06])
    mask = next(c for c in deletion.deletion_claims(per_seed, N_BOOT, ERSM_NAME) if "mask" in c.claim)
    a = np.mean([s[deletion.PRIMARY, MASK] for s in per_seed], axis=0)
    b = np.mean([s[deletion.PRIMARY, MAGNITUDE] for s in per_seed], axis=0)
    diff, lo, hi = paired_bootstrap(a, b, n_boot=N_BOOT, seed=0)  # v1: seed-averaged, images only
    assert mask.difference == pytest.approx(diff) and diff == pytest.approx(0.14 / 3)
    assert superiority(lo, hi) == SUPPORTED and mask.verdict == INCONCLUSIVE
    assert mask.hi - mask.lo > 5 * (hi - lo) and mask.lo < lo and mask.hi > hi


# ----------------------------------------------------------------------------- claim 4: deletion

LERF, MORF = deletion.PRIMARY, ("feature", "most", "deletion", "zero")


def area_pair(shift: float, seed: int, n: int = 150) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    magnitude = rng.uniform(0.2, 0.8, size=n)
    noise = rng.normal(0, 0.05, size=n)
    return magnitude + shift + noise - noise.mean(), magnitude  # centred noise: the mean difference is the shift


def seed_areas(energy_shift: float, mask_shift: float, seed: int, n: int = 150) -> dict:
    """One seed's LeRF areas: magnitude, and energy / mask = magnitude + shift + centred noise (mean difference = shift)."""
    rng = np.random.default_rng(seed)
    magnitude = rng.uniform(0.2, 0.8, size=n)
    out = {(LERF, MAGNITUDE): magnitude}
    for ranking, shift in ((ENERGY, energy_shift), (MASK, mask_shift)):
        noise = rng.normal(0, 0.05, size=n)
        out[LERF, ranking] = magnitude + shift + noise - noise.mean()
    return out


@pytest.mark.parametrize("energy_shift, mask_shift, expected", [
    (0.1, 0.1, [SUPPORTED, SUPPORTED]), (0.1, -0.1, [SUPPORTED, NOT_SUPPORTED]), (-0.1, 0.0, [NOT_SUPPORTED, INCONCLUSIVE]),
])
def test_deletion_claims_energy_then_mask(energy_shift, mask_shift, expected):
    per_seed = [seed_areas(energy_shift, mask_shift, seed) for seed in range(3)]
    claims = deletion.deletion_claims(per_seed, N_BOOT, ERSM_NAME)
    assert [c.verdict for c in claims] == expected
    assert "energy" in claims[0].claim and "mask" in claims[1].claim and ERSM_NAME in claims[0].claim
    for claim, ranking, shift in zip(claims, (ENERGY, MASK), (energy_shift, mask_shift)):
        a = np.stack([s[LERF, ranking] for s in per_seed])
        b = np.stack([s[LERF, MAGNITUDE] for s in per_seed])
        assert claim.difference == pytest.approx((a - b).mean())      # oriented: ranking - magnitude
        assert claim.difference == pytest.approx(shift, abs=1e-12)
        assert claim.ersm == pytest.approx(a.mean()) and claim.baseline == pytest.approx(b.mean())
        assert (claim.difference, claim.lo, claim.hi) == pytest.approx(paired_rule_v2_interval(a, b, n_boot=N_BOOT, seed=0))
        assert claim.baseline_name.startswith("magnitude ranking")


def test_deletion_claims_read_only_the_primary_protocol():
    per_seed = []
    for seed in range(2):
        areas = seed_areas(0.1, 0.1, seed)
        areas[MORF, MASK], areas[MORF, MAGNITUDE] = area_pair(-0.3, seed + 10)
        per_seed.append(areas)
    assert [c.verdict for c in deletion.deletion_claims(per_seed, N_BOOT, ERSM_NAME)] == [SUPPORTED, SUPPORTED]


def test_protocol_signs():
    """LeRF deletion and insertion: larger area is better (+1); MoRF deletion: smaller is better (-1)."""
    assert deletion.PRIMARY == ("feature", "least", "deletion", "zero") and deletion.PROTOCOLS[deletion.PRIMARY] == +1
    for protocols in (deletion.PROTOCOLS, deletion.ROAD):
        for (space, order, mode, fill), sign in protocols.items():
            assert sign == (-1 if (order, mode) == ("most", "deletion") else +1), (space, order, mode, fill)
    assert deletion.PRIMARY_RANKINGS == (ENERGY, MASK)


def test_comparison_frame_orients_every_protocol_with_the_v2_interval():
    """The mask's area is 0.1 below magnitude's, the energy's 0.1 above, everywhere: for the mask a gain where
    smaller is better (MoRF deletion), a loss where larger is better. A dense model gets no comparison."""
    n = 120
    magnitude = np.linspace(0.3, 0.9, n)
    ersm_seeds = [{**{(p, MASK): magnitude - 0.1 for p in deletion.PROTOCOLS}, **{(p, ENERGY): magnitude + 0.1 for p in deletion.PROTOCOLS},
                   **{(p, name): np.full(n, 0.5) for p in deletion.PROTOCOLS for name in (GRADCAM, MASKED_MAGNITUDE)},
                   **{(p, MAGNITUDE): magnitude for p in deletion.PROTOCOLS}} for _ in range(2)]
    dense_seeds = [{(p, name): magnitude for p in deletion.PROTOCOLS for name in (MAGNITUDE, GRADCAM)} for _ in range(2)]
    frame = deletion.comparison_frame({ERSM_NAME: ersm_seeds, DENSE: dense_seeds}, deletion.PROTOCOLS, N_BOOT)
    assert len(frame) == 2 * len(deletion.PROTOCOLS)
    for protocol, sign in deletion.PROTOCOLS.items():
        row = frame[(frame.model == ERSM_NAME) & (frame.protocol == deletion.protocol_name(protocol))].iloc[0]
        for short, offset in (("mask", -0.1), ("energy", +0.1)):
            assert row[f"{short} - magnitude (oriented)"] == pytest.approx(offset * sign)
            assert row[f"{short} lo"] == pytest.approx(offset * sign) and row[f"{short} hi"] == pytest.approx(offset * sign)
        assert row["interval"] == "rules v2" and row["seeds"] == 2
        assert row[MASK] == pytest.approx(magnitude.mean() - 0.1) and row[GRADCAM] == pytest.approx(0.5)
    dense_rows = frame[frame.model == DENSE]
    assert dense_rows["mask - magnitude (oriented)"].isna().all() and dense_rows[MASK].isna().all()
    morf = frame[(frame.model == ERSM_NAME) & (frame.protocol == "feature MoRF (zero)")].iloc[0]
    assert morf["mask - magnitude (oriented)"] > 0  # a smaller MoRF area for the mask is a gain


def test_comparison_frame_interval_is_v2_with_two_seeds_and_the_image_bootstrap_with_one():
    per_seed = seed_shifted_areas([0.10, -0.02, 0.06])
    table = deletion.comparison_frame({ERSM_NAME: per_seed}, {LERF: +1}, N_BOOT).iloc[0]
    a, b = np.stack([s[LERF, MASK] for s in per_seed]), np.stack([s[LERF, MAGNITUDE] for s in per_seed])
    assert (table["mask - magnitude (oriented)"], table["mask lo"], table["mask hi"]) == pytest.approx(
        paired_rule_v2_interval(a, b, n_boot=N_BOOT, seed=0))
    road = deletion.comparison_frame({ERSM_NAME: per_seed[:1]}, {LERF: -1}, N_BOOT).iloc[0]   # one seed, as ROAD
    assert road["interval"].startswith("image bootstrap, 1 seed") and road["seeds"] == 1
    assert (road["mask - magnitude (oriented)"], road["mask lo"], road["mask hi"]) == pytest.approx(
        paired_bootstrap(-a[0], -b[0], n_boot=N_BOOT, seed=0))


# ----------------------------------------------------------------------------- claim 5: mask quality

BASELINES = ["magnitude (dense)", "Grad-CAM (dense)"]


def auroc(level: float, seed: int, seeds: int = 2, n: int = 200) -> np.ndarray:
    return np.clip(level + np.random.default_rng(seed).normal(0, 0.05, size=(seeds, n)), 0, 1)


def quality_scores(ersm_auroc: np.ndarray, baseline_aurocs: list[np.ndarray]) -> dict:
    scores = {ERSM_NAME: {"pixel AUROC": ersm_auroc, "pointing game": np.zeros_like(ersm_auroc)}}
    for name, values in zip(BASELINES, baseline_aurocs):
        scores[name] = {"pixel AUROC": values, "pointing game": np.ones_like(values)}
    return scores


@pytest.mark.parametrize("levels, verdicts, overall", [
    ([0.7, 0.65], [SUPPORTED, SUPPORTED], SUPPORTED),               # better than every baseline
    ([0.7, 0.8], [SUPPORTED, INCONCLUSIVE], INCONCLUSIVE),           # tied with one
    ([0.7, 0.95], [SUPPORTED, NOT_SUPPORTED], NOT_SUPPORTED),        # worse than one: not supported
])
def test_quality_claims(levels, verdicts, overall):
    a = auroc(0.8, seed=0)
    b = [auroc(level, seed=i + 1) if level != 0.8 else a[:, ::-1].copy() for i, level in enumerate(levels)]
    claims, got_overall = mask_quality.quality_claims(quality_scores(a, b), ERSM_NAME, BASELINES, N_BOOT)
    assert [c.verdict for c in claims] == verdicts and got_overall == overall
    for claim, baseline, values in zip(claims, BASELINES, b):
        assert claim.baseline_name == baseline
        assert claim.difference == pytest.approx((a - values).mean())  # orientation: ERSM - baseline
        assert (claim.difference, claim.lo, claim.hi) == pytest.approx(paired_rule_v2_interval(a, values, n_boot=N_BOOT, seed=0))


def test_quality_claims_drop_images_nan_in_any_seed_of_either_map():
    a, b, c = auroc(0.8, seed=0), auroc(0.6, seed=1), auroc(0.6, seed=2)
    a_nan, b_nan = a.copy(), b.copy()
    a_nan[0, :10] = np.nan      # seed 0 only: the image goes from every comparison
    b_nan[1, -5:] = np.nan      # seed 1 of the first baseline only: from that comparison only
    claims, _ = mask_quality.quality_claims(quality_scores(a_nan, [b_nan, c]), ERSM_NAME, BASELINES, N_BOOT)
    first, _ = mask_quality.quality_claims(quality_scores(a[:, 10:-5], [b[:, 10:-5], c[:, 10:-5]]), ERSM_NAME, BASELINES, N_BOOT)
    second, _ = mask_quality.quality_claims(quality_scores(a[:, 10:], [b[:, 10:], c[:, 10:]]), ERSM_NAME, BASELINES, N_BOOT)
    for got, want in ((claims[0], first[0]), (claims[1], second[1])):
        assert (got.difference, got.lo, got.hi, got.ersm, got.baseline) == (want.difference, want.lo, want.hi, want.ersm, want.baseline)
    assert "185 of 200 images" in claims[0].metric and "190 of 200 images" in claims[1].metric


def test_quality_claims_overall_needs_every_baseline():
    scores = quality_scores(auroc(0.8, seed=0), [auroc(0.6, seed=1), auroc(0.95, seed=2)])
    claims, overall = mask_quality.quality_claims(scores, ERSM_NAME, BASELINES[:1], N_BOOT)
    assert overall == SUPPORTED and len(claims) == 1
    assert mask_quality.quality_claims(scores, ERSM_NAME, BASELINES, N_BOOT)[1] == NOT_SUPPORTED


@pytest.mark.filterwarnings("ignore:Mean of empty slice")
def test_quality_frame_means_of_per_seed_scores_match_seed_averaged_ones():
    per_seed = [{"pixel AUROC": np.array([0.5, np.nan, 0.9])}, {"pixel AUROC": np.array([0.7, np.nan, np.nan])}]
    stacked = mask_quality.stack_seeds(per_seed)
    assert stacked["pixel AUROC"].shape == (2, 3)
    frame = mask_quality.quality_frame({"m": stacked})
    assert frame.loc["m", "pixel AUROC"] == pytest.approx(np.mean([0.6, 0.9]))
    assert frame.loc["m", "pixel AUROC"] == pytest.approx(mask_quality.quality_frame({"m": mask_quality.seed_averaged(per_seed)}).loc["m", "pixel AUROC"])


# ----------------------------------------------------------------------------- occlusion_correctness conditions

@pytest.fixture(scope="module")
def tiny_run():
    from ersm.data import ClutteredDigits
    from ersm.models import build_model

    test = ClutteredDigits("test", 12, canvas=48, seed=3).tensors()
    torch.manual_seed(0)
    models = {"a": [build_model("small_cnn", in_channels=1, num_classes=10).eval()],
              "b": [build_model("small_cnn", in_channels=1, num_classes=10).eval()]}
    configs = {"a": [type("Config", (), {"seed": 7})()], "b": [type("Config", (), {"seed": 7})()]}
    return models, configs, test


def test_occlusion_correctness_conditions(tiny_run):
    models, configs, test = tiny_run
    fractions = [0.0, 0.3]
    every = occlusion.occlusion_correctness(models, configs, test, fractions, kinds=("square", "grid"), fills=("zero",), seed=1)
    assert list(every) == [(m, 7, k, "zero") for k in ("square", "grid") for m in ("a", "b")]
    listed = occlusion.occlusion_correctness(models, configs, test, fractions, seed=1, conditions=[("grid", "zero"), ("square", "zero")])
    assert list(listed) == list(every)  # computed in the default order
    some = occlusion.occlusion_correctness(models, configs, test, fractions, seed=1,
                                           conditions={"a": [occlusion.PRIMARY], "b": [("grid", "zero"), occlusion.PRIMARY]})
    assert set(some) == {("a", 7, "square", "zero"), ("b", 7, "square", "zero"), ("b", 7, "grid", "zero")}
    for key, hits in some.items():
        np.testing.assert_array_equal(hits, every[key])


# ----------------------------------------------------------------------------- profiles and notebooks

def test_background_profiles_name_families_and_rhos():
    for profile in ("ci", "full"):
        params = profiles.parameters("03_occlusion_robustness", profile)
        rhos = params["RHOS"]
        assert len(rhos) >= 2 and rhos == sorted(rhos) and "RHO" not in params
        assert set(params["BACKGROUND_MODELS"]) <= set(common.FAMILY_FIELDS) and DENSE in params["BACKGROUND_MODELS"]
        spurious = profiles.parameters("05_mask_quality", profile)["RHO"]
        assert spurious in rhos and common.PAPER in params["BACKGROUND_MODELS"]  # notebook 05 reuses those models
    assert profiles.parameters("03_occlusion_robustness", "full")["RHOS"] == [0.5, 0.7, 0.9]  # rules v2: the full sweep
    # full never drops a variant or a control (ci may use a subset to stay in the suite's budget)
    assert profiles.parameters("03_occlusion_robustness", "full")["BACKGROUND_MODELS"] == [
        DENSE, *common.ERSM_MODELS, *common.CONTROLS.values()]


# ----------------------------------------------------------------------------- bad input

def good_correct() -> dict:
    return correct_dict({ERSM_NAME: [1, 0.9, 0.8, 0.8], DENSE: [1, 0.5, 0.3, 0.3]})


def changed(mapping: dict, key, value) -> dict:
    return {**mapping, key: value}


def without(mapping: dict, predicate) -> dict:
    return {k: v for k, v in mapping.items() if not predicate(k)}


def good_background():
    return {0.7: gap_arrays(0.6, 0.1), 0.9: gap_arrays(0.6, 0.1)}, swapped_at((0.7, 30.0), (0.9, 5.0))


def good_per_seed() -> list[dict]:
    return [seed_areas(0.1, 0.1, seed) for seed in range(2)]


def good_scores() -> dict:
    return quality_scores(auroc(0.8, 0), [auroc(0.6, 1), auroc(0.6, 2)])


def nan_scores() -> dict:
    scores = good_scores()
    scores[ERSM_NAME]["pixel AUROC"] = np.full((2, 200), np.nan)
    return scores


def one_seed_correct() -> dict:
    return without(good_correct(), lambda k: k[1] > 0)


def unpaired_seeds() -> dict:
    return without(good_correct(), lambda k: k[0] == DENSE and k[1] == 2)


GAPS, SWAPPED = good_background()

BAD_INPUT = {
    # occlusion_claim, headroom_fractions, accuracy_difference, curve_area_difference
    "occlusion: empty dict": (lambda: occlusion.occlusion_claim({}, FRACTIONS, ERSM_NAME, DENSE), r"correct must be a non-empty dict"),
    "occlusion: missing treatment": (lambda: occlusion.occlusion_claim(good_correct(), FRACTIONS, "ERSM y", DENSE),
                                     r"treatment='ERSM y' is not a model in correct; models are \['ERSM x', 'dense'\]"),
    "occlusion: missing Cutout": (lambda: occlusion.occlusion_claim(good_correct(), FRACTIONS, ERSM_NAME, CUTOUT),
                                  r"baseline='dense \+ Cutout' is not a model in correct"),
    "occlusion: missing reference": (lambda: occlusion.occlusion_claim(without(good_correct(), lambda k: k[0] == DENSE) |
                                                                       correct_dict({CUTOUT: [1, 1, 1, 1]}), FRACTIONS, ERSM_NAME, CUTOUT),
                                     r"reference='dense' is not a model in correct"),
    "occlusion: same model": (lambda: occlusion.occlusion_claim(good_correct(), FRACTIONS, DENSE, DENSE),
                              r"treatment='dense' and baseline='dense' are the same"),
    "occlusion: missing kind": (lambda: occlusion.occlusion_claim(good_correct(), FRACTIONS, ERSM_NAME, DENSE, kind="grid"),
                                r"correct has no entry for treatment='ERSM x' with kind='grid', fill='zero'; "
                                r"its \(kind, fill\) pairs are \[\('square', 'zero'\)\]"),
    "occlusion: one seed": (lambda: occlusion.occlusion_claim(one_seed_correct(), FRACTIONS, ERSM_NAME, DENSE),
                            r"correct has 1 seed\(s\) for treatment='ERSM x' with kind='square', fill='zero'; "
                            r"the rules v2 interval needs at least 2"),
    "occlusion: unpaired seeds": (lambda: occlusion.occlusion_claim(unpaired_seeds(), FRACTIONS, ERSM_NAME, DENSE),
                                  r"correct has seeds \[0, 1\] for baseline='dense' but \[0, 1, 2\] for treatment='ERSM x'"),
    "occlusion: NaN correctness": (lambda: occlusion.occlusion_claim(changed(good_correct(), (ERSM_NAME, 1, "square", "zero"), np.full((4, 300), np.nan)),
                                                                     FRACTIONS, ERSM_NAME, DENSE),
                                   r"correct\[\('ERSM x', 1, 'square', 'zero'\)\] has NaN or inf"),
    "occlusion: one image": (lambda: occlusion.occlusion_claim({k: v[:, :1] for k, v in good_correct().items()}, FRACTIONS, ERSM_NAME, DENSE),
                             r"correct covers 1 test image\(s\); an interval over images needs at least 2"),
    "occlusion: wrong fractions": (lambda: occlusion.occlusion_claim(good_correct(), FRACTIONS[:3], ERSM_NAME, DENSE),
                                   r"has shape \(4, 300\); expected \[len\(fractions\)=3, N images\]"),
    "occlusion: unpaired images": (lambda: occlusion.occlusion_claim(changed(good_correct(), (DENSE, 0, "square", "zero"), np.ones((4, 50), bool)),
                                                                     FRACTIONS, ERSM_NAME, DENSE),
                                   r"covers 50 test images, others 300"),
    "occlusion: unsorted fractions": (lambda: occlusion.occlusion_claim(good_correct(), [0.0, 0.3, 0.1, 0.5], ERSM_NAME, DENSE),
                                      r"fractions=\[0.0, 0.3, 0.1, 0.5\] must be a strictly increasing list"),
    "occlusion: no clean column": (lambda: occlusion.occlusion_claim(good_correct(), [0.05, 0.1, 0.2, 0.3], ERSM_NAME, DENSE),
                                   r"fractions=\[0.05, 0.1, 0.2, 0.3\] has no 0 \(the clean images\)"),
    "occlusion: no clean image right": (lambda: occlusion.occlusion_claim(changed(good_correct(), (ERSM_NAME, 0, "square", "zero"), first_right([0, 50, 50, 50], 300)),
                                                                          FRACTIONS, ERSM_NAME, DENSE),
                                        r"'ERSM x' is wrong on every clean image in some seed"),
    "occlusion: NaN margin": (lambda: occlusion.occlusion_claim(good_correct(), FRACTIONS, ERSM_NAME, DENSE, margin=float("nan")),
                              r"margin=nan must be a finite number"),
    "occlusion: bad n_boot": (lambda: occlusion.occlusion_claim(good_correct(), FRACTIONS, ERSM_NAME, DENSE, n_boot=0),
                              r"n_boot=0 must be an integer >= 1"),
    "headroom: missing baseline": (lambda: occlusion.headroom_fractions(good_correct(), FRACTIONS, baseline=CUTOUT),
                                   r"baseline='dense \+ Cutout' is not a model in correct"),
    "headroom: chance": (lambda: occlusion.headroom_fractions(good_correct(), FRACTIONS, chance=150.0), r"chance=150.0 must lie in"),
    "accuracy: empty shares": (lambda: occlusion.accuracy_difference(good_correct(), FRACTIONS, ERSM_NAME, DENSE, []),
                               r"shares=\[\] must be a non-empty list"),
    "accuracy: unknown share": (lambda: occlusion.accuracy_difference(good_correct(), FRACTIONS, ERSM_NAME, DENSE, [0.25]),
                                r"shares holds 0.25, which is not in fractions"),
    "curve area: missing baseline": (lambda: occlusion.curve_area_difference(good_correct(), FRACTIONS, ERSM_NAME, "cutout", "square", "zero"),
                                     r"baseline='cutout' is not a model in correct"),
    "curve area: one seed": (lambda: occlusion.curve_area_difference(one_seed_correct(), FRACTIONS, ERSM_NAME, DENSE, "square", "zero"),
                             r"correct has 1 seed\(s\) for treatment='ERSM x'"),
    # occlusion_correctness
    "correctness: unknown kind": (lambda: occlusion.occlusion_correctness({}, {}, None, FRACTIONS, conditions=[("disc", "zero")]),
                                  r"conditions holds \('disc', 'zero'\), not a \(kind, fill\) pair"),
    "correctness: conditions and kinds": (lambda: occlusion.occlusion_correctness({}, {}, None, FRACTIONS, kinds=("grid",),
                                                                                  conditions=[occlusion.PRIMARY]),
                                          r"pass either conditions or kinds/fills, not both"),
    "correctness: model without conditions": (lambda: occlusion.occlusion_correctness({"a": [], "b": []}, {}, None, FRACTIONS,
                                                                                      conditions={"a": [occlusion.PRIMARY]}),
                                              r"conditions has no entry for the model\(s\) \['b'\]"),
    "correctness: conditions for an unknown model": (lambda: occlusion.occlusion_correctness({"a": []}, {}, None, FRACTIONS,
                                                                                             conditions={"c": [occlusion.PRIMARY]}),
                                                     r"a key of conditions='c' is not a model in models"),
    "correctness: empty conditions": (lambda: occlusion.occlusion_correctness({"a": []}, {}, None, FRACTIONS, conditions=[]),
                                      r"conditions=\[\] must be a non-empty list"),
    # background_claim, background_rho, background_gap_difference
    "background: empty": (lambda: occlusion.background_claim({}, SWAPPED, ERSM_NAME, DENSE), r"gaps_by_rho must be a non-empty dict"),
    "background: missing treatment": (lambda: occlusion.background_claim(GAPS, SWAPPED, "ERSM y", DENSE),
                                      r"treatment='ERSM y' is not a model in gaps_by_rho\[0.7\]; models are \['ERSM x', 'dense'\]"),
    "background: missing at one rho": (lambda: occlusion.background_claim({**GAPS, 0.9: {DENSE: GAPS[0.9][DENSE]}}, SWAPPED, ERSM_NAME, DENSE),
                                       r"treatment='ERSM x' is not a model in gaps_by_rho\[0.9\]"),
    "background: same model": (lambda: occlusion.background_claim(GAPS, SWAPPED, DENSE, DENSE),
                               r"treatment='dense' and baseline='dense' are the same"),
    "background: one seed": (lambda: occlusion.background_claim({r: {m: g[:1] for m, g in v.items()} for r, v in GAPS.items()},
                                                                SWAPPED, ERSM_NAME, DENSE),
                             r"gaps_by_rho\[0.7\]\['dense'\] has 1 seed\(s\); an interval over seeds needs at least 2"),
    "background: NaN-only gaps": (lambda: occlusion.background_claim({**GAPS, 0.7: {DENSE: GAPS[0.7][DENSE], ERSM_NAME: np.full((3, 300), np.nan)}},
                                                                     SWAPPED, ERSM_NAME, DENSE),
                                  r"gaps_by_rho\[0.7\]\['ERSM x'\] has 900 NaN or inf value\(s\) of 900"),
    "background: unpaired": (lambda: occlusion.background_claim({**GAPS, 0.7: {DENSE: GAPS[0.7][DENSE], ERSM_NAME: GAPS[0.7][ERSM_NAME][:, :299]}},
                                                                SWAPPED, ERSM_NAME, DENSE),
                             r"gaps_by_rho\[0.7\]\['ERSM x'\] has shape \(3, 299\), but the array it is paired with has \(3, 300\)"),
    "background: 1-D gaps": (lambda: occlusion.background_claim({0.7: {DENSE: np.zeros(10), ERSM_NAME: np.zeros(10)}},
                                                                {0.7: SWAPPED[0.7]}, ERSM_NAME, DENSE),
                             r"gaps_by_rho\[0.7\]\['dense'\] must be a 2-D \[S, N\] array"),
    "background: rho out of range": (lambda: occlusion.background_claim({1.5: GAPS[0.7]}, {1.5: SWAPPED[0.7]}, ERSM_NAME, DENSE),
                                     r"a rho of gaps_by_rho=1.5 must lie in \[0.0, 1.0\]"),
    "background: rhos differ": (lambda: occlusion.background_claim(GAPS, {0.7: SWAPPED[0.7]}, ERSM_NAME, DENSE),
                                r"gaps_by_rho has rhos \[0.7, 0.9\] but swapped_accuracy_by_rho has \[0.7\]"),
    "background: no swapped accuracy for dense": (lambda: occlusion.background_claim(GAPS, {r: {ERSM_NAME: v[ERSM_NAME]} for r, v in SWAPPED.items()},
                                                                                     ERSM_NAME, DENSE),
                                                  r"baseline='dense' is not a model in swapped_accuracy_by_rho\[0.7\]"),
    "background: swapped accuracy per image": (lambda: occlusion.background_claim(GAPS, {r: {DENSE: np.full(300, 30.0)} for r in SWAPPED},
                                                                                  ERSM_NAME, DENSE),
                                               r"swapped_accuracy_by_rho\[0.7\]\['dense'\] has shape \(300,\); expected one accuracy per seed, \[3\]"),
    "background: NaN swapped accuracy": (lambda: occlusion.background_claim(GAPS, {r: {DENSE: np.full(3, np.nan)} for r in SWAPPED},
                                                                            ERSM_NAME, DENSE),
                                         r"swapped_accuracy_by_rho\[0.7\]\['dense'\]=\[nan, nan, nan\] must hold finite accuracies"),
    "background: unknown rho": (lambda: occlusion.background_gap_difference(GAPS, ERSM_NAME, DENSE, 0.5),
                                r"rho=0.5 is not a rho in gaps_by_rho; rhos are \[0.7, 0.9\]"),
    "background rho: empty": (lambda: occlusion.background_rho({}), r"swapped_accuracy_by_rho must be a non-empty dict"),
    "background rho: missing dense": (lambda: occlusion.background_rho({0.9: {ERSM_NAME: [30.0, 30.0]}}),
                                      r"baseline='dense' is not a model in swapped_accuracy_by_rho\[0.9\]"),
    # deletion_claims, deletion_claim, comparison_frame
    "deletion: empty list": (lambda: deletion.deletion_claims([], N_BOOT, ERSM_NAME), r"per_seed must be a non-empty list"),
    "deletion: one seed": (lambda: deletion.deletion_claims(good_per_seed()[:1], N_BOOT, ERSM_NAME),
                           r"per_seed has 1 seed\(s\); the rules v2 interval needs at least 2"),
    "deletion: dense model": (lambda: deletion.deletion_claims([{(LERF, MAGNITUDE): np.ones(5), (LERF, GRADCAM): np.ones(5)}] * 2, N_BOOT, DENSE),
                              r"per_seed\[0\] has no area for .*'ERSM energy'.*its rankings for that protocol are \['Grad-CAM', 'magnitude'\]"),
    "deletion: no energy": (lambda: deletion.deletion_claims([without(s, lambda k: k[1] == ENERGY) for s in good_per_seed()], N_BOOT, ERSM_NAME),
                            r"per_seed\[0\] has no area for .*'ERSM energy'"),
    "deletion: NaN areas": (lambda: deletion.deletion_claims([{**s, (LERF, MASK): np.full(150, np.nan)} for s in good_per_seed()],
                                                             N_BOOT, ERSM_NAME),
                            r"per_seed\[0\]\[.*'ERSM mask'\)\] has 150 NaN or inf"),
    "deletion: one image": (lambda: deletion.deletion_claims([{k: v[:1] for k, v in s.items()} for s in good_per_seed()], N_BOOT, ERSM_NAME),
                            r"has 1 value\(s\); a bootstrap interval over test images needs at least 2"),
    "deletion: unpaired images": (lambda: deletion.deletion_claims([good_per_seed()[0], {k: v[:140] for k, v in good_per_seed()[1].items()}],
                                                                   N_BOOT, ERSM_NAME),
                                  r"per_seed\[1\]\[.*\] has 140 values, but the values it is paired with have 150"),
    "deletion: magnitude against itself": (lambda: deletion.deletion_claim(good_per_seed(), N_BOOT, ERSM_NAME, ranking=MAGNITUDE),
                                           r"ranking='magnitude' and the baseline ranking='magnitude' are the same"),
    "deletion: bad n_boot": (lambda: deletion.deletion_claims(good_per_seed(), 1.5, ERSM_NAME), r"n_boot=1.5 must be an integer >= 1"),
    "comparison: empty": (lambda: deletion.comparison_frame({}, deletion.PROTOCOLS, N_BOOT), r"per_seed must be a non-empty dict"),
    "comparison: no seeds": (lambda: deletion.comparison_frame({ERSM_NAME: []}, deletion.PROTOCOLS, N_BOOT),
                             r"per_seed\['ERSM x'\] must be a non-empty list"),
    "comparison: bad sign": (lambda: deletion.comparison_frame({ERSM_NAME: good_per_seed()}, {LERF: 2}, N_BOOT),
                             r"protocols\[\('feature', 'least', 'deletion', 'zero'\)\]=2 must be \+1"),
    "comparison: mask without magnitude": (lambda: deletion.comparison_frame({ERSM_NAME: [{(LERF, MASK): np.ones(5)}]}, {LERF: 1}, N_BOOT),
                                           r"per_seed\['ERSM x'\]\[0\] has no area for .*'magnitude'"),
    "comparison: ranking missing in one seed": (lambda: deletion.comparison_frame(
        {ERSM_NAME: [good_per_seed()[0], without(good_per_seed()[1], lambda k: k[1] == ENERGY)]}, {LERF: 1}, N_BOOT),
        r"per_seed\['ERSM x'\]\[1\] has no area for .*'ERSM energy'"),
    # quality_claims
    "quality: empty scores": (lambda: mask_quality.quality_claims({}, ERSM_NAME, BASELINES, N_BOOT), r"scores must be a non-empty dict"),
    "quality: missing ERSM map": (lambda: mask_quality.quality_claims(good_scores(), "ERSM y mask", BASELINES, N_BOOT),
                                  r"ersm_name='ERSM y mask' is not a map in scores; maps are \["),
    "quality: missing baseline": (lambda: mask_quality.quality_claims(good_scores(), ERSM_NAME, ["Grad-CAM (ERSM)"], N_BOOT),
                                  r"baselines\[0\]='Grad-CAM \(ERSM\)' is not a map in scores"),
    "quality: no baselines": (lambda: mask_quality.quality_claims(good_scores(), ERSM_NAME, [], N_BOOT), r"baselines=\[\] must be a non-empty list"),
    "quality: baselines a string": (lambda: mask_quality.quality_claims(good_scores(), ERSM_NAME, BASELINES[0], N_BOOT),
                                    r"baselines='magnitude \(dense\)' must be a non-empty list"),
    "quality: baseline is the ERSM map": (lambda: mask_quality.quality_claims(good_scores(), ERSM_NAME, [ERSM_NAME], N_BOOT),
                                          r"ersm_name='ERSM x' and baselines\[0\]='ERSM x' are the same"),
    "quality: NaN-only scores": (lambda: mask_quality.quality_claims(nan_scores(), ERSM_NAME, BASELINES, N_BOOT),
                                 r"scores\['ERSM x'\] and scores\['magnitude \(dense\)'\] have 0 image\(s\) with pixel AUROC not NaN"),
    "quality: one seed": (lambda: mask_quality.quality_claims(quality_scores(auroc(0.8, 0, seeds=1), [auroc(0.6, 1, seeds=1)] * 2),
                                                              ERSM_NAME, BASELINES, N_BOOT),
                          r"scores\['ERSM x'\]\['pixel AUROC'\] has 1 seed\(s\); an interval over seeds needs at least 2"),
    "quality: seed-averaged scores": (lambda: mask_quality.quality_claims(quality_scores(auroc(0.8, 0)[0], [auroc(0.6, 1)[0]] * 2),
                                                                          ERSM_NAME, BASELINES, N_BOOT),
                                      r"scores\['ERSM x'\]\['pixel AUROC'\] must be a 2-D \[S, N\] array"),
    "quality: no AUROC": (lambda: mask_quality.quality_claims({**good_scores(), ERSM_NAME: {"pointing game": np.ones((2, 3))}},
                                                              ERSM_NAME, BASELINES, N_BOOT),
                          r"scores\['ERSM x'\] has no 'pixel AUROC' scores"),
    "quality: unpaired images": (lambda: mask_quality.quality_claims(quality_scores(auroc(0.8, 0), [auroc(0.6, 1, n=150), auroc(0.6, 2)]),
                                                                     ERSM_NAME, BASELINES, N_BOOT),
                                 r"scores\['magnitude \(dense\)'\]\['pixel AUROC'\] has shape \(2, 150\), but the array it is paired with has \(2, 200\)"),
    "quality: inf": (lambda: mask_quality.quality_claims(quality_scores(np.where(auroc(0.8, 0) > 0, np.inf, 0), [auroc(0.6, 1)] * 2),
                                                         ERSM_NAME, BASELINES, N_BOOT),
                     r"scores\['ERSM x'\]\['pixel AUROC'\] has 400 inf value\(s\)"),
}


test_bad_input_is_refused_naming_the_argument = refusal_test(BAD_INPUT)


def test_the_good_inputs_behind_the_bad_ones_give_verdicts():
    """The bad-input cases above break one thing each in these inputs, which are accepted."""
    assert occlusion.occlusion_claim(good_correct(), FRACTIONS, ERSM_NAME, DENSE, n_boot=N_BOOT).verdict == SUPPORTED
    assert superiority(*occlusion.curve_area_difference(good_correct(), FRACTIONS, ERSM_NAME, DENSE, "square", "zero", N_BOOT)[3:]) == SUPPORTED
    assert superiority(*occlusion.accuracy_difference(good_correct(), FRACTIONS, ERSM_NAME, DENSE, [0.1, 0.2], N_BOOT)[3:]) == SUPPORTED
    claim = occlusion.background_claim(GAPS, SWAPPED, ERSM_NAME, DENSE, n_boot=N_BOOT)
    assert claim.verdict == SUPPORTED and "rho=0.7" in claim.metric
    assert [c.verdict for c in deletion.deletion_claims(good_per_seed(), N_BOOT, ERSM_NAME)] == [SUPPORTED, SUPPORTED]
    assert mask_quality.quality_claims(good_scores(), ERSM_NAME, BASELINES, N_BOOT)[1] == SUPPORTED
    scores = good_scores()
    scores[ERSM_NAME]["pixel AUROC"][1, :5] = np.nan   # a few NaN AUROCs are fine: those images are left out
    assert mask_quality.quality_claims(scores, ERSM_NAME, BASELINES, N_BOOT)[1] == SUPPORTED
    assert isinstance(claim, Claim) and isinstance(deletion.comparison_frame({ERSM_NAME: good_per_seed()}, {LERF: 1}, N_BOOT), pd.DataFrame)


def test_comparison_frame_skips_protocols_a_model_did_not_run():
    """A control run under the primary protocol only gets one row, not empty rows for the others."""
    full = seed_shifted_areas([0.10, -0.02, 0.06])
    primary_only = [{key: value for key, value in seed.items() if key[0] == LERF} for seed in full]
    other = ("feature", "most", "deletion", "zero")
    both = [{**seed, **{(other, r): v for (p, r), v in seed.items() if p == LERF}} for seed in full]
    frame = deletion.comparison_frame({ERSM_NAME: both, "control": primary_only}, {LERF: +1, other: -1}, N_BOOT)
    assert len(frame) == 3 and (frame.model == "control").sum() == 1
    assert frame.loc[frame.model == "control", "protocol"].item() == deletion.protocol_name(LERF)
