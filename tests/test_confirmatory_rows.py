"""Rules v3's primary rows (ersm.experiments.confirmatory) on synthetic arrays with known outcomes.

Each claim reads its m primary rows at the Bonferroni level 1 - 0.05 / m, so an adjusted
interval contains the unadjusted one; the overall verdict is SUPPORTED only if every row is,
NOT SUPPORTED if any row is; a family that did not converge turns every verdict into
INCONCLUSIVE (not converged) with the numbers kept.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ersm.experiments import confirmatory as v3
from ersm.experiments.common import CONTROLS, DENSE, PAPER
from ersm.experiments.controls import BUILT_IN, REGULARISER, VS_DENSE
from ersm.experiments.deletion import PRIMARY as FEATURE_LERF
from ersm.experiments.rankings import ENERGY, MAGNITUDE, MASKED_MAGNITUDE
from ersm.metrics.hierarchical import paired_rule_v2_interval
from ersm.metrics.stats import mean_ci
from ersm.study.verdicts import INCONCLUSIVE, NOT_CONVERGED, NOT_SUPPORTED, SUPPORTED

CONTROL = CONTROLS[PAPER]
SEEDS = list(range(10, 19))


def accuracy_frame(paper_minus_dense: float, paper_minus_control: float, noise: float = 0.3) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    dense = 92 + rng.normal(0, 0.5, len(SEEDS))
    rows = []
    for seed, d in zip(SEEDS, dense):
        paper = d + paper_minus_dense + rng.normal(0, noise)
        rows += [dict(model=DENSE, seed=seed, accuracy=d), dict(model=PAPER, seed=seed, accuracy=paper),
                 dict(model=CONTROL, seed=seed, accuracy=paper - paper_minus_control + rng.normal(0, noise))]
    return pd.DataFrame(rows)


def test_levels_are_bonferroni_within_a_claim():
    assert v3.level(1) == pytest.approx(0.95) and v3.level(2) == pytest.approx(0.975)
    assert v3.level(3) == pytest.approx(1 - 0.05 / 3)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="m="):
            v3.level(bad)


def test_accuracy_rows_read_the_adjusted_interval_and_both_questions():
    frame = accuracy_frame(-0.1, 0.0)
    result = v3.accuracy(frame)
    assert result.questions == [VS_DENSE, REGULARISER] and result.overall == SUPPORTED
    pivot = frame.pivot(index="seed", columns="model", values="accuracy")
    unadjusted = mean_ci((pivot[PAPER] - pivot[DENSE]).to_numpy())
    row = result.rows[0]
    assert row.lo < unadjusted[1] and row.hi > unadjusted[2] and row.difference == pytest.approx(unadjusted[0])
    assert "97.50%" in row.rule and "m = 2" in row.rule and "rules v3" in row.rule


def test_one_failing_question_decides_the_overall_verdict():
    assert v3.accuracy(accuracy_frame(-0.1, -3.0)).overall == NOT_SUPPORTED   # the regulariser costs 3 points
    verdicts = [row.verdict for row in v3.accuracy(accuracy_frame(-0.1, -3.0)).rows]
    assert verdicts == [SUPPORTED, NOT_SUPPORTED]
    assert v3.accuracy(accuracy_frame(-1.0, 0.0, noise=1.0)).overall in (INCONCLUSIVE, NOT_SUPPORTED)


def test_not_converged_keeps_the_numbers_and_replaces_every_verdict():
    frame = accuracy_frame(-0.1, 0.0)
    gated, kept = v3.accuracy(frame, converged=False), v3.accuracy(frame)
    assert gated.overall == NOT_CONVERGED and all(r.verdict == NOT_CONVERGED for r in gated.rows)
    assert [r.difference for r in gated.rows] == [r.difference for r in kept.rows]
    with pytest.raises(ValueError, match="converged='no'"):
        v3.accuracy(frame, converged="no")
    with pytest.raises(ValueError, match="no entry for"):
        v3.accuracy(frame, converged={PAPER: True, DENSE: True})


def test_convergence_gates_each_row_by_the_families_it_reads():
    """Only dense failed: the paper-vs-dense row is gated, the regulariser row stands and decides."""
    status = {PAPER: True, DENSE: False, CONTROL: True}
    costly = v3.accuracy(accuracy_frame(-0.1, -3.0), converged=status)   # the regulariser costs 3 points
    assert [r.verdict for r in costly.rows] == [NOT_CONVERGED, NOT_SUPPORTED] and costly.overall == NOT_SUPPORTED
    fine = v3.accuracy(accuracy_frame(-0.1, 0.0), converged=status)
    assert [r.verdict for r in fine.rows] == [NOT_CONVERGED, SUPPORTED] and fine.overall == NOT_CONVERGED


def test_accuracy_refuses_unshared_seeds():
    frame = accuracy_frame(0.0, 0.0)
    with pytest.raises(ValueError, match="share every seed"):
        v3.accuracy(frame[~((frame["model"] == CONTROL) & (frame["seed"] == 10))])


def areas(rng, paper_energy_lead: float, control_energy_lead: float, n=40, seeds=3):
    """Per family, one {(protocol, ranking): area [N]} per seed."""
    out = {}
    for name, lead in ((PAPER, paper_energy_lead), (CONTROL, control_energy_lead)):
        out[name] = []
        for _ in range(seeds):
            post = rng.uniform(0.5, 0.7, n)
            out[name].append({(FEATURE_LERF, ENERGY): post + lead + rng.normal(0, 0.01, n), (FEATURE_LERF, MASKED_MAGNITUDE): post,
                              (("input", "least", "deletion", "zero"), ENERGY): post + lead,
                              (("input", "least", "deletion", "zero"), MAGNITUDE): post})
    return out


def test_deletion_reads_the_controls_that_are_not_built_in():
    rng = np.random.default_rng(1)
    result = v3.deletion(areas(rng, 0.1, 0.02), n_boot=200)
    assert result.questions == [BUILT_IN, BUILT_IN, REGULARISER] and result.overall == SUPPORTED
    assert result.rows[2].difference == pytest.approx(0.08, abs=0.01)
    result = v3.deletion(areas(rng, 0.1, 0.2), n_boot=200)   # beta=0 leads by more: the regulariser adds nothing
    assert result.rows[2].verdict == NOT_SUPPORTED and result.overall == NOT_SUPPORTED


def test_background_and_occlusion_without_headroom_are_inconclusive():
    for result in (v3.background(None, n_boot=10), v3.occlusion({}, [0.0, 0.1], [], n_boot=10)):
        assert result.overall == INCONCLUSIVE and len(result.rows) == 2


def test_background_orients_a_smaller_gap_as_positive():
    rng = np.random.default_rng(2)
    gaps = {DENSE: rng.normal(30, 5, (3, 50)), PAPER: rng.normal(20, 5, (3, 50)), CONTROL: rng.normal(20, 5, (3, 50))}
    result = v3.background(gaps, n_boot=200)
    assert result.rows[0].verdict == SUPPORTED and result.rows[0].difference == pytest.approx(10, abs=1.5)
    assert result.rows[1].verdict == INCONCLUSIVE


def test_mask_quality_drops_nan_images_per_row_and_adjusts_for_three_rows():
    rng = np.random.default_rng(3)
    paper = rng.uniform(0.8, 0.9, (3, 30))
    maps = {f"{PAPER} mask": paper, "magnitude (dense)": paper - 0.1, "Grad-CAM (dense)": paper - 0.1,
            f"{CONTROL} mask": paper - 0.05}
    maps["Grad-CAM (dense)"] = maps["Grad-CAM (dense)"].copy()
    maps["Grad-CAM (dense)"][1, 4] = np.nan
    result = v3.mask_quality({k: {"pixel AUROC": v} for k, v in maps.items()}, n_boot=100)
    assert result.overall == SUPPORTED and "29 of 30 images" in result.rows[1].metric
    expected = paired_rule_v2_interval(paper, maps["magnitude (dense)"], n_boot=100, seed=0, level=1 - 0.05 / 3)
    assert (result.rows[0].lo, result.rows[0].hi) == pytest.approx(expected[1:])


def test_sparsity_keeps_the_degeneracy_veto():
    rng = np.random.default_rng(4)
    per_image = {PAPER: rng.uniform(0.9, 0.95, (3, 40)), CONTROL: rng.uniform(0.8, 0.85, (3, 40))}
    frame = pd.DataFrame([dict(model=name, seed=s, kept_mass_cv=cv + 0.01 * s, degenerate=degenerate)
                          for s in range(3) for name, cv, degenerate in ((PAPER, 0.3, s == 2), (CONTROL, 0.2, False))])
    magnitude = pd.DataFrame([dict(model="dense (relative magnitude)", seed=s, kept_mass_cv=0.1) for s in range(3)])
    result = v3.sparsity(per_image, frame, magnitude, n_boot=200)
    assert [r.verdict for r in result.rows] == [NOT_SUPPORTED, SUPPORTED, SUPPORTED] and result.overall == NOT_SUPPORTED
    assert "seeds [2]" in result.rows[0].rule
    frame["degenerate"] = False
    assert v3.sparsity(per_image, frame, magnitude, n_boot=200).overall == SUPPORTED
    assert "02 sparsity, overall (rules v3): SUPPORTED" in v3.sparsity(per_image, frame, magnitude, n_boot=200).lines()


def test_occlusion_reads_retained_accuracy_at_the_shares_given():
    rng = np.random.default_rng(5)
    fractions, n = [0.0, 0.1, 0.2, 0.3], 1000
    keep = {DENSE: [0.95, 0.6, 0.4, 0.2], PAPER: [0.95, 0.8, 0.6, 0.3], CONTROL: [0.95, 0.6, 0.4, 0.2]}
    correct = {(name, seed, "square", "zero"): np.stack([rng.random(n) < p for p in probs])
               for name, probs in keep.items() for seed in range(10, 16)}
    result = v3.occlusion(correct, fractions, [0.1, 0.2], n_boot=200)
    assert [r.verdict for r in result.rows] == [SUPPORTED, SUPPORTED] and "10%, 20% occluded" in result.rows[0].metric
    assert result.rows[0].difference == pytest.approx(100 * (0.7 - 0.5) / 0.95, abs=4)
