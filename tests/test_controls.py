"""The three comparisons each claim reports beside its verdict (ersm/experiments/controls.py)."""
import numpy as np
import pandas as pd
import pytest

from ersm.experiments import controls, deletion
from ersm.experiments.common import DENSE, PAPER
from ersm.experiments.rankings import MAGNITUDE, MASK, MASKED_MAGNITUDE
from ersm.study.verdicts import Claim

CONTROL = controls.PAPER_CONTROL


def accuracy_frame():
    rows = []
    for seed, (dense, paper, control) in enumerate([(90.0, 89.0, 91.0), (92.0, 90.5, 91.5), (91.0, 90.0, 92.5)]):
        rows += [{"model": DENSE, "seed": seed, "accuracy": dense}, {"model": PAPER, "seed": seed, "accuracy": paper},
                 {"model": CONTROL, "seed": seed, "accuracy": control}]
    rows.append({"model": DENSE, "seed": 3, "accuracy": 95.0})  # an added dense seed: not paired with the control
    rows.append({"model": PAPER, "seed": 3, "accuracy": 94.0})
    return pd.DataFrame(rows)


def test_accuracy_rows_answer_the_three_questions_paired_on_shared_seeds():
    rows = controls.accuracy_rows(accuracy_frame())
    assert [r["question"] for r in rows] == [controls.VS_DENSE, controls.REGULARISER, controls.GATE]
    vs_dense, regulariser, gate = rows
    assert vs_dense["difference"] == pytest.approx(np.mean([-1.0, -1.5, -1.0, -1.0]))  # seeds 0-3
    assert regulariser["difference"] == pytest.approx(np.mean([-2.0, -1.0, -2.5]))      # seeds 0-2 only
    assert gate["difference"] == pytest.approx(np.mean([1.0, -0.5, 1.5]))
    assert regulariser["lo"] < regulariser["difference"] < regulariser["hi"]
    assert "seeds [0, 1, 2] paired" in regulariser["metric"]


def test_accuracy_rows_refuse_a_missing_family_by_name():
    frame = accuracy_frame()
    with pytest.raises(ValueError, match="no rows for model 'ERSM paper, beta=0'"):
        controls.accuracy_rows(frame[frame.model != CONTROL])


def test_a_row_refuses_an_unknown_question():
    with pytest.raises(ValueError, match="question='does it work'"):
        controls.row("01", "does it work", "a", "b", "m", 1, 1, 0, 0, 0, "t")


def claim(name, baseline):
    return Claim(claim=name, metric="m", baseline_name=baseline, baseline=0.5, ersm=0.6, difference=0.1, lo=0.05,
                 hi=0.15, rule="r", verdict="SUPPORTED")


def test_sparsity_rows_keep_the_paper_rows_and_sort_them_by_baseline():
    claims = [claim(f"sparsity emerges without a budget ({PAPER})", CONTROL),
              claim("sparsity emerges without a budget (ERSM calibrated)", "ERSM calibrated, beta=0"),
              claim(f"sparsity adapts to the input ({PAPER} vs dense (relative magnitude))", "dense (relative magnitude)")]
    rows = controls.sparsity_rows(claims)
    assert [(r["question"], r["baseline"]) for r in rows] == [(controls.REGULARISER, CONTROL),
                                                               (controls.VS_DENSE, "dense (relative magnitude)")]
    assert "verdict" not in rows[0]


def deletion_areas(rng, seeds=3, n=40):
    primary, input_lerf = deletion.PRIMARY, ("input", "least", "deletion", "zero")
    per_seed = {}
    for name, shift in ((PAPER, 0.2), (CONTROL, 0.1), (DENSE, 0.0)):
        per_seed[name] = []
        for _ in range(seeds):
            base = rng.uniform(0.3, 0.6, n)
            areas = {(primary, MAGNITUDE): base}
            if name != DENSE:
                areas |= {(primary, MASK): base + shift + rng.normal(0, 0.01, n), (primary, MASKED_MAGNITUDE): base + shift}
            if name == PAPER:
                areas |= {(input_lerf, MASK): base + 0.05, (input_lerf, MAGNITUDE): base}
            per_seed[name].append(areas)
    return per_seed


def test_deletion_rows_include_the_built_in_controls_and_the_regulariser_difference():
    per_seed = deletion_areas(np.random.default_rng(0))
    rows = controls.deletion_rows(per_seed, n_boot=200)
    questions = [r["question"] for r in rows]
    assert questions == [controls.VS_DENSE, controls.REGULARISER, controls.GATE_RANKING, controls.BUILT_IN, controls.BUILT_IN]
    regulariser = rows[1]
    assert regulariser["difference"] == pytest.approx(0.1, abs=0.02)  # the paper's +0.2 head start less the control's +0.1
    post_mask, input_space = rows[3], rows[4]
    assert abs(post_mask["difference"]) < 0.02  # the mask ranks like the masked magnitude here
    assert input_space["difference"] == pytest.approx(0.05)
    assert "input-space" in input_space["metric"]


def test_deletion_rows_leave_out_what_was_not_scored():
    per_seed = deletion_areas(np.random.default_rng(1))
    del per_seed[CONTROL]
    for areas in per_seed[PAPER]:
        del areas[deletion.PRIMARY, MASKED_MAGNITUDE]
    questions = [r["question"] for r in controls.deletion_rows(per_seed, n_boot=100)]
    assert questions == [controls.VS_DENSE, controls.BUILT_IN]


def test_describe_prints_one_line_per_row_with_signs():
    rows = controls.accuracy_rows(accuracy_frame())
    text = controls.describe(rows)
    assert len(text.splitlines()) == 3
    assert "regulariser: ERSM vs its beta=0" in text and "-1.83 [" in text
