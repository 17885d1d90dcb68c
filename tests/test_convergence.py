"""The convergence rule (ersm.study.convergence) on synthetic histories with a known outcome."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ersm.study import convergence
from ersm.training.config import TrainConfig
from ersm.study.verdicts import NOT_CONVERGED, SUPPORTED, Claim

BASE = TrainConfig(model="paper", epochs=4)


def fake_histories(final: dict):
    """history_of(config) whose last record is ``final[(model, seed, epochs)]``; records the calls."""
    calls = []

    def history_of(config):
        calls.append((config.model, config.seed, config.epochs))
        ce, val = final[(config.model, config.seed, config.epochs)]
        return [{"cross_entropy": 1.0, "val_accuracy": 0.1}] * (config.epochs - 1) + [{"cross_entropy": ce, "val_accuracy": val}]

    return history_of, calls


def pair(only_normal: int, only_longer: int, both: int = 400, n: int = BASE.n_val):
    """Two ``[n]`` outcome vectors: ``both`` images right in both runs, then ``only_normal`` right only in the
    normal run, then ``only_longer`` right only in the longer one."""
    normal, longer = np.zeros(n, bool), np.zeros(n, bool)
    normal[:both + only_normal] = True
    longer[:both] = longer[both + only_normal:both + only_normal + only_longer] = True
    return normal, longer


def fake_outcomes(model="paper", seed=1, epochs=(4, 6), only_normal=3, only_longer=4):
    """correct_of(config) for the pair (seed, epochs[0]) and (seed, epochs[1]) of ``model``; records the calls."""
    calls = []
    vectors = dict(zip(((model, seed, e) for e in epochs), pair(only_normal, only_longer)))

    def correct_of(config):
        calls.append((config.model, config.seed, config.epochs))
        return vectors[(config.model, config.seed, config.epochs)]

    return correct_of, calls


def configs(model="paper", seeds=(0, 1)):
    return {model: [BASE.replace(model=model, seed=s) for s in seeds]}


FITS = {("paper", 0, 4): (0.01, 0.900), ("paper", 1, 4): (0.04, 0.890)}


def test_fit_and_stable_family_converges():
    history_of, history_calls = fake_histories(FITS)
    correct_of, calls = fake_outcomes(only_normal=3, only_longer=4)
    table = convergence.assess(configs(), history_of, correct_of=correct_of)
    assert table["converged"].tolist() == [True, True]
    assert table["stability_seed"].tolist() == [1, 1] and table["discordant"].tolist() == [7, 7]
    assert table["val_change"].iloc[0] == pytest.approx(100 * 1 / BASE.n_val)
    assert table["longer_val_accuracy"].iloc[0] == pytest.approx(100 * 404 / BASE.n_val)
    assert calls == [("paper", 1, 4), ("paper", 1, 6)]  # ceil(1.5 * 4) epochs, the second seed only
    assert all(epochs == 4 for _, _, epochs in history_calls)


def test_a_change_larger_than_the_pair_resolves_is_not_stable():
    history_of, _ = fake_histories(FITS)
    for only_normal, only_longer in ((5, 30), (30, 5)):   # both directions
        correct_of, _ = fake_outcomes(only_normal=only_normal, only_longer=only_longer)
        table = convergence.assess(configs(), history_of, correct_of=correct_of)
        assert table["stable"].tolist() == [False, False] and not table["converged"].any()
        assert table["stability_p"].iloc[0] < convergence.STABILITY_ALPHA


def test_the_test_sits_at_its_level_exactly():
    """All discordant images on one side: two-sided p = 2 / 2**k; 11 images give 0.00098 < 0.001, 10 give 0.00195."""
    assert convergence.stability(*pair(0, 11))["stability_p"] == pytest.approx(2 / 2 ** 11)
    assert not convergence.stability(*pair(0, 11))["stable"]
    assert convergence.stability(*pair(0, 10))["stable"] and convergence.stability(*pair(11, 0))["stable"] is False


def test_a_change_of_half_a_point_within_the_noise_is_stable_and_the_old_bar_is_shown():
    """A 1-point change (5 of 500 images more) among 45 disagreements is noise for one pair (p = 0.55)."""
    result = convergence.stability(*pair(20, 25))
    assert result["stable"] and result["val_change"] == 1.0 and result["within_half_point"] is False
    assert convergence.stability(*pair(20, 22))["within_half_point"] is True   # 2 images: 0.4 point
    assert convergence.stability(*pair(0, 0))["stability_p"] == 1.0


def test_outcomes_of_another_validation_split_are_refused():
    history_of, _ = fake_histories(FITS)
    with pytest.raises(ValueError, match=r"validation outcomes of 'paper' seed 1 have shape \(499,\), not \(500,\)"):
        convergence.assess(configs(), history_of, correct_of=lambda config: np.ones(499, bool))
    with pytest.raises(ValueError, match="two non-empty"):
        convergence.stability(np.ones(3, bool), np.ones(4, bool))


def test_a_family_with_one_seed_is_refused_before_any_work():
    def history_of(config):
        raise AssertionError("work started")

    with pytest.raises(ValueError, match="family 'paper' has 1 seed"):
        convergence.assess(configs(seeds=(0,)), history_of, correct_of=history_of)


def test_one_seed_that_does_not_fit_fails_the_family_without_a_longer_run():
    history_of, calls = fake_histories({("paper", 0, 4): (0.01, 0.90), ("paper", 1, 4): (0.05, 0.90)})
    correct_of, outcome_calls = fake_outcomes()
    table = convergence.assess(configs(), history_of, correct_of=correct_of)
    assert table["fits"].tolist() == [True, False]  # 0.05 is not below 0.05
    assert table["converged"].tolist() == [False, False]
    assert table["stable"].isna().all() and table["longer_val_accuracy"].isna().all()
    assert all(epochs == 4 for _, _, epochs in calls) and outcome_calls == []


def test_an_augmented_model_fits_on_its_training_images_without_augmentation():
    """Cutout's batches hide part of the digit (0.19 nats in ``full``); condition 1 reads its clean training images."""
    history_of, _ = fake_histories({("dense", 0, 4): (0.19, 0.90), ("dense", 1, 4): (0.19, 0.90)})
    correct_of, _ = fake_outcomes("dense")
    cutout = {"dense + Cutout": [BASE.replace(model="dense", augmentation="cutout", seed=s) for s in (0, 1)]}
    clean = {0: 0.01, 1: 0.02}
    table = convergence.assess(cutout, history_of, lambda config: clean[config.seed], correct_of)
    assert table["cross_entropy"].tolist() == [0.19, 0.19]  # the batch value stays in the table
    assert table["fit_cross_entropy"].tolist() == [0.01, 0.02]
    assert table["fits"].all() and table["converged"].all()
    clean = {0: 0.01, 1: 0.06}
    assert convergence.assess(cutout, history_of, lambda config: clean[config.seed], correct_of)["fits"].tolist() == [True, False]


def test_a_model_without_augmentation_reads_its_batch_value():
    history_of, _ = fake_histories({("paper", 0, 4): (0.01, 0.900), ("paper", 1, 4): (0.06, 0.890)})

    def clean_of(config):
        raise AssertionError(f"clean cross-entropy asked for {config.augmentation!r}")

    table = convergence.assess(configs(), history_of, clean_of)
    assert table["fit_cross_entropy"].tolist() == table["cross_entropy"].tolist() == [0.01, 0.06]
    assert table["fits"].tolist() == [True, False]


def test_gate_keeps_the_numbers_and_replaces_the_verdict():
    history_of, _ = fake_histories({("paper", 0, 4): (0.01, 0.9), ("paper", 1, 4): (0.01, 0.9),
                                    ("dense", 0, 4): (0.20, 0.9), ("dense", 1, 4): (0.01, 0.9)})
    correct_of, _ = fake_outcomes()
    table = pd.concat([convergence.assess(configs("paper"), history_of, correct_of=correct_of),
                       convergence.assess(configs("dense"), history_of, correct_of=correct_of)])
    claim = Claim("c", "m", "dense", 1.0, 2.0, 1.0, 0.5, 1.5, "superiority", SUPPORTED)
    assert convergence.gate(claim, table, "paper") is claim
    gated = convergence.gate(claim, table, "paper", "dense")
    assert gated.verdict == NOT_CONVERGED and (gated.difference, gated.lo, gated.hi) == (1.0, 0.5, 1.5)
    assert "1 of 4 models" not in convergence.summary_line(table) and "2 of 4 models converged" in convergence.summary_line(table)


def test_bad_input_is_refused_by_name():
    history_of, _ = fake_histories(FITS)
    table = convergence.assess(configs(), history_of, correct_of=fake_outcomes()[0])
    with pytest.raises(ValueError, match="names='dense' is not a model in the convergence table"):
        convergence.gate(Claim("c", "m", "d", 0, 0, 0, 0, 0, "r", SUPPORTED), table, "dense")
    with pytest.raises(ValueError, match="configs must map"):
        convergence.assess({}, history_of)
    with pytest.raises(ValueError, match="1 epoch record"):
        convergence.assess(configs(), lambda config: [{"cross_entropy": 0.0, "val_accuracy": 1.0}])


def test_longer_config_rounds_up():
    assert convergence.longer_config(BASE.replace(epochs=5)).epochs == math.ceil(7.5) == 8


def test_longer_runs_are_the_second_seed_of_each_family_at_the_longer_budget():
    history_of, _ = fake_histories(FITS)
    correct_of, calls = fake_outcomes()
    convergence.assess(configs(), history_of, correct_of=correct_of)
    longer = convergence.longer_runs(configs())
    assert list(longer) == ["paper (longer)"]
    assert [(c.model, c.seed, c.epochs) for c in longer["paper (longer)"]] == [calls[-1]] == [("paper", 1, 6)]


def test_gate_verdict_for_an_overall_line():
    history_of, _ = fake_histories({("paper", 0, 4): (0.01, 0.9), ("paper", 1, 4): (0.2, 0.9)})
    table = convergence.assess(configs("paper"), history_of, correct_of=fake_outcomes()[0])
    assert convergence.gate_verdict(SUPPORTED, table, "paper") == NOT_CONVERGED
    with pytest.raises(ValueError, match="needs the names"):
        convergence.gate_verdict(SUPPORTED, table)


def test_fits_is_condition_one():
    cutout = BASE.replace(model="dense", augmentation="cutout")
    assert convergence.fits(cutout, {"cross_entropy": 0.19}, lambda config: 0.049)
    assert not convergence.fits(cutout, {"cross_entropy": 0.0}, lambda config: 0.05)
    assert convergence.fits(BASE, {"cross_entropy": 0.049}) and not convergence.fits(BASE, {"cross_entropy": 0.05})


# ------------------------------------------------------------------------------- rules v3: condition 3
def fake_masks(normal_kept: float, longer_kept: float, epochs=(4, 6)):
    values = {epochs[0]: (normal_kept, normal_kept / 100), epochs[1]: (longer_kept, longer_kept / 200)}
    calls = []

    def mask_of(config):
        calls.append((config.model, config.seed, config.epochs))
        return values[config.epochs]

    return mask_of, calls


@pytest.mark.parametrize("longer_kept, stable", [(0.0500, True), (0.0376, True), (0.0624, True), (0.0374, False),
                                                 (0.0626, False)])
def test_v3_reads_the_kept_mass_of_the_longer_run(longer_kept, stable):
    history_of, _ = fake_histories(FITS)
    correct_of, _ = fake_outcomes(only_normal=3, only_longer=4)
    mask_of, calls = fake_masks(0.05, longer_kept)
    table = convergence.assess(configs(), history_of, correct_of=correct_of, masks=True, mask_of=mask_of)
    assert table["mask_stable"].tolist() == [stable, stable] and table["converged"].tolist() == [stable, stable]
    assert table["kept_mass_change"].iloc[0] == pytest.approx(longer_kept / 0.05 - 1)
    assert table["mean_mask"].iloc[0] == pytest.approx(0.0005)   # reported beside it, halved here, not tested
    assert calls == [("paper", 1, 4), ("paper", 1, 6)]
    # the same pair under rules v2.4: no mask columns, converged whatever the mask did
    v2 = convergence.assess(configs(), history_of, correct_of=correct_of)
    assert "mask_stable" not in v2 and v2["converged"].all() and "rules v3" not in convergence.summary_line(v2)
    assert f"{0 if stable else 2} fit and are stable but their mask is not" in convergence.summary_line(table)


def test_v3_asks_no_mask_of_a_dense_family_and_states_what_mcnemar_detects():
    history_of, _ = fake_histories({("dense", 0, 4): (0.01, 0.9), ("dense", 1, 4): (0.01, 0.9)})
    correct_of, _ = fake_outcomes(model="dense", only_normal=20, only_longer=20)

    def no_mask(config):
        raise AssertionError("a dense model has no mask")

    table = convergence.assess(configs("dense"), history_of, correct_of=correct_of, masks=True, mask_of=no_mask)
    assert table["converged"].all() and table["mask_stable"].isna().all()
    assert table["detectable_change"].iloc[0] == pytest.approx(100 * 22 / BASE.n_val)   # 40 discordant -> 22 images


@pytest.mark.parametrize("discordant, images", [(20, 16), (40, 22), (60, 28), (80, 32)])
def test_detectable_change_matches_rules_v3(discordant, images):
    assert convergence.detectable_change(discordant, 1000) == pytest.approx(images / 10)
    # and it is the smallest: one step less is not significant
    b = (discordant + images - 2) // 2
    assert convergence.binomtest(b, discordant, 0.5).pvalue >= convergence.STABILITY_ALPHA


def test_detectable_change_and_mask_stability_refuse_bad_input():
    assert math.isnan(convergence.detectable_change(5, 1000))   # 5 discordant images can never reach p < 0.001
    for args in ((-1, 10), (11, 10), (True, 10), (3, 0)):
        with pytest.raises(ValueError):
            convergence.detectable_change(*args)
    with pytest.raises(ValueError, match="normal kept mass=1.5"):
        convergence.mask_stability((1.5, 0.0), (0.1, 0.01))
    assert convergence.mask_stability((0.0, 0.0), (0.1, 0.01))["mask_stable"] is False   # an all-zero mask
    assert convergence.mask_stability((0.1, 0.0), (math.nan, 0.01))["mask_stable"] is False
    with pytest.raises(ValueError, match="masks='yes'"):
        convergence.assess(configs(), masks="yes")


def test_kept_mass_and_mean_mask_of_a_trained_model(tmp_path, monkeypatch):
    monkeypatch.setenv("ERSM_CACHE", str(tmp_path))
    config = TrainConfig(model="paper", n_train=64, n_val=32, n_test=32, epochs=1, batch_size=32, width=8, device="cpu")
    kept, mean = convergence.kept_mass_and_mean_mask(config)
    assert 0 < mean <= 0.5 and mean < kept <= 1   # the paper's mask lies in (0, 0.5]; kept mass is relative to the max
