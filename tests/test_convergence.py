"""The convergence rule (ersm.convergence) on synthetic histories with a known outcome."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ersm import convergence
from ersm.config import TrainConfig
from ersm.verdicts import NOT_CONVERGED, SUPPORTED, Claim

BASE = TrainConfig(model="paper", epochs=4)


def fake_histories(final: dict):
    """history_of(config) whose last record is ``final[(model, seed, epochs)]``; records the calls."""
    calls = []

    def history_of(config):
        calls.append((config.model, config.seed, config.epochs))
        ce, val = final[(config.model, config.seed, config.epochs)]
        return [{"cross_entropy": 1.0, "val_accuracy": 0.1}] * (config.epochs - 1) + [{"cross_entropy": ce, "val_accuracy": val}]

    return history_of, calls


def configs(model="paper", seeds=(0, 1)):
    return {model: [BASE.replace(model=model, seed=s) for s in seeds]}


def test_fit_and_stable_family_converges():
    history_of, calls = fake_histories({("paper", 0, 4): (0.01, 0.900), ("paper", 1, 4): (0.04, 0.890), ("paper", 0, 6): (0.005, 0.904)})
    table = convergence.assess(configs(), history_of)
    assert table["converged"].tolist() == [True, True]
    assert table["longer_val_accuracy"].tolist() == pytest.approx([90.4, 90.4])
    assert table["val_change"].iloc[0] == pytest.approx(0.4)
    assert ("paper", 0, 6) in calls  # ceil(1.5 * 4) epochs, the first seed only
    assert ("paper", 1, 6) not in calls


def test_a_change_of_half_a_point_or_more_is_not_stable():
    history_of, _ = fake_histories({("paper", 0, 4): (0.01, 0.900), ("paper", 1, 4): (0.01, 0.890), ("paper", 0, 6): (0.01, 0.894)})
    table = convergence.assess(configs(), history_of)
    assert table["stable"].tolist() == [False, False] and not table["converged"].any()
    history_of, _ = fake_histories({("paper", 0, 4): (0.01, 0.900), ("paper", 1, 4): (0.01, 0.890), ("paper", 0, 6): (0.01, 0.906)})
    assert not convergence.assess(configs(), history_of)["converged"].any()


def test_stability_is_counted_in_whole_validation_images():
    """908 and 903 of 1,000 right, recorded as float32 means, differ by 0.4999983 in floating point: 0.5 is not stable."""
    f32 = lambda x: float(np.float32(x))  # noqa: E731
    history_of, _ = fake_histories({("paper", 0, 4): (0.01, f32(0.908)), ("paper", 1, 4): (0.01, 0.9), ("paper", 0, 6): (0.01, f32(0.903))})
    table = convergence.assess({"paper": [BASE.replace(seed=s, n_val=1000) for s in (0, 1)]}, history_of)
    assert table["val_change"].iloc[0] == -0.5 and table["longer_val_accuracy"].iloc[0] == 90.3
    assert table["stable"].tolist() == [False, False]
    history_of, _ = fake_histories({("paper", 0, 4): (0.01, f32(0.908)), ("paper", 1, 4): (0.01, 0.9), ("paper", 0, 6): (0.01, f32(0.904))})
    assert convergence.assess({"paper": [BASE.replace(seed=s, n_val=1000) for s in (0, 1)]}, history_of)["stable"].all()


def test_an_accuracy_that_is_no_share_of_n_val_is_refused():
    history_of, _ = fake_histories({("paper", 0, 4): (0.01, 0.9001), ("paper", 1, 4): (0.01, 0.9), ("paper", 0, 6): (0.01, 0.9)})
    with pytest.raises(ValueError, match="val_accuracy 0.9001 of 'paper' seed 0 is not a share of n_val=500"):
        convergence.assess(configs(), history_of)


def test_one_seed_that_does_not_fit_fails_the_family_without_a_longer_run():
    history_of, calls = fake_histories({("paper", 0, 4): (0.01, 0.90), ("paper", 1, 4): (0.05, 0.90)})
    table = convergence.assess(configs(), history_of)
    assert table["fits"].tolist() == [True, False]  # 0.05 is not below 0.05
    assert table["converged"].tolist() == [False, False]
    assert table["stable"].isna().all() and table["longer_val_accuracy"].isna().all()
    assert all(epochs == 4 for _, _, epochs in calls)


def test_an_augmented_model_fits_on_its_training_images_without_augmentation():
    """Cutout's batches hide part of the digit (0.19 nats in ``full``); condition 1 reads its clean training images."""
    history_of, _ = fake_histories({("dense", 0, 4): (0.19, 0.90), ("dense", 1, 4): (0.19, 0.90), ("dense", 0, 6): (0.19, 0.902)})
    cutout = {"dense + Cutout": [BASE.replace(model="dense", augmentation="cutout", seed=s) for s in (0, 1)]}
    clean = {0: 0.01, 1: 0.02}
    table = convergence.assess(cutout, history_of, lambda config: clean[config.seed])
    assert table["cross_entropy"].tolist() == [0.19, 0.19]  # the batch value stays in the table
    assert table["fit_cross_entropy"].tolist() == [0.01, 0.02]
    assert table["fits"].all() and table["converged"].all()
    clean = {0: 0.01, 1: 0.06}
    assert convergence.assess(cutout, history_of, lambda config: clean[config.seed])["fits"].tolist() == [True, False]


def test_a_model_without_augmentation_reads_its_batch_value():
    history_of, _ = fake_histories({("paper", 0, 4): (0.01, 0.900), ("paper", 1, 4): (0.06, 0.890)})

    def clean_of(config):
        raise AssertionError(f"clean cross-entropy asked for {config.augmentation!r}")

    table = convergence.assess(configs(), history_of, clean_of)
    assert table["fit_cross_entropy"].tolist() == table["cross_entropy"].tolist() == [0.01, 0.06]
    assert table["fits"].tolist() == [True, False]


def test_gate_keeps_the_numbers_and_replaces_the_verdict():
    history_of, _ = fake_histories({("paper", 0, 4): (0.01, 0.9), ("paper", 1, 4): (0.01, 0.9), ("paper", 0, 6): (0.01, 0.9),
                                    ("dense", 0, 4): (0.20, 0.9), ("dense", 1, 4): (0.01, 0.9)})
    table = pd.concat([convergence.assess(configs("paper"), history_of), convergence.assess(configs("dense"), history_of)])
    claim = Claim("c", "m", "dense", 1.0, 2.0, 1.0, 0.5, 1.5, "superiority", SUPPORTED)
    assert convergence.gate(claim, table, "paper") is claim
    gated = convergence.gate(claim, table, "paper", "dense")
    assert gated.verdict == NOT_CONVERGED and (gated.difference, gated.lo, gated.hi) == (1.0, 0.5, 1.5)
    assert "1 of 4 models" not in convergence.summary_line(table) and "2 of 4 models converged" in convergence.summary_line(table)


def test_bad_input_is_refused_by_name():
    history_of, _ = fake_histories({("paper", 0, 4): (0.01, 0.9), ("paper", 1, 4): (0.01, 0.9), ("paper", 0, 6): (0.01, 0.9)})
    table = convergence.assess(configs(), history_of)
    with pytest.raises(ValueError, match="names='dense' is not a model in the convergence table"):
        convergence.gate(Claim("c", "m", "d", 0, 0, 0, 0, 0, "r", SUPPORTED), table, "dense")
    with pytest.raises(ValueError, match="configs must map"):
        convergence.assess({}, history_of)
    with pytest.raises(ValueError, match="1 epoch record"):
        convergence.assess(configs(), lambda config: [{"cross_entropy": 0.0, "val_accuracy": 1.0}])


def test_longer_config_rounds_up():
    assert convergence.longer_config(BASE.replace(epochs=5)).epochs == math.ceil(7.5) == 8


def test_longer_runs_are_the_first_seed_of_each_family_at_the_longer_budget():
    history_of, calls = fake_histories({("paper", 0, 4): (0.01, 0.9), ("paper", 1, 4): (0.01, 0.9), ("paper", 0, 6): (0.01, 0.9)})
    convergence.assess(configs(), history_of)
    longer = convergence.longer_runs(configs())
    assert list(longer) == ["paper (longer)"]
    assert [(c.model, c.seed, c.epochs) for c in longer["paper (longer)"]] == [calls[-1]] == [("paper", 0, 6)]


def test_gate_verdict_for_an_overall_line():
    history_of, _ = fake_histories({("paper", 0, 4): (0.01, 0.9), ("paper", 1, 4): (0.2, 0.9)})
    table = convergence.assess(configs("paper"), history_of)
    assert convergence.gate_verdict(SUPPORTED, table, "paper") == NOT_CONVERGED
    with pytest.raises(ValueError, match="needs the names"):
        convergence.gate_verdict(SUPPORTED, table)
