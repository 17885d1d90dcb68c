"""``ersm.study.plan``: the models of a profile, phase by phase, and ``warm``, which trains them ahead of the notebooks.

The check that the plan lists what the notebooks train, end to end, is in
tests/test_datasets_profiles.py (CIFAR-10 fixture, all five notebooks) and here for the
digits' spurious splits (notebook 03). The phase contents are checked with fake training
histories, so nothing trains there.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ersm.study.convergence
import ersm.training.cache
from ersm.study.setup import base_of
from ersm.training.checkpoint import load_checkpoint
from ersm.study import plan, tuning
from ersm.experiments import sparsity
from ersm.study.profiles import parameters
from ersm.study.reproduce import reproduce

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(SEEDS=[0, 1], EPOCHS=1, N_TRAIN=40, N_VAL=10, N_TEST=20, CANVAS=40, WIDTH=4, DEVICE="cpu", TUNING_TRIALS=1)


def tiny_ci(stem: str, profile: str) -> dict:
    """The ci profile at fixture size, with one spurious split (rho 0.9) for dense and the paper's layer."""
    specific = {"03_occlusion_robustness": dict(FRACTIONS=[0.0, 0.5], RHOS=[0.9]), "02_emergent_sparsity": dict(N_BOOT=100),
                "04_deletion_vs_magnitude": dict(STEPS=4, N_BOOT=100, N_INPUT=4, N_ROAD=4), "05_mask_quality": dict(N_BOOT=100)}
    return {**parameters(stem, profile), **TINY, **specific.get(stem, {})}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ERSM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # notebook kernels and spawned workers import this checkout
    return tmp_path / "home"


def fake_histories(monkeypatch, fitting=lambda config: False):
    """Every config has a one-epoch history without training; ``fitting(config)`` decides whether it
    fits: its final cross-entropy, or for a Cutout model (whose batches never fit: 0.19 nats, as
    measured in ``full``) its cross-entropy on the un-augmented training images."""
    def history_of(config):
        batches = 0.19 if config.augmentation == "cutout" else 0.01 if fitting(config) else 1.0
        return [{"cross_entropy": batches, "val_accuracy": 0.5 + config.lr}]

    def clean_cross_entropy(config):
        assert config.augmentation != "none", "the batch value is read for models trained without augmentation"
        return 0.01 if fitting(config) else 1.0

    monkeypatch.setattr(ersm.training.cache, "training_history", history_of)
    monkeypatch.setattr(ersm.study.convergence, "clean_training_cross_entropy", clean_cross_entropy)
    monkeypatch.setattr(plan, "training_history", history_of)


def test_the_full_profile_plan(monkeypatch):
    fake_histories(monkeypatch, fitting=lambda config: config.model in ("dense", "paper"))
    phases = dict(plan.phases("full"))
    assert list(phases) == ["dense trials", "ERSM trials", "final models", "longer runs"]
    assert len(phases["dense trials"]) == 8 and len(phases["ERSM trials"]) == 4 * 8
    assert {c.model for c in phases["ERSM trials"]} == {"paper", "calibrated", "meanfield", "hardconcrete"}
    finals = {c.digest(): c for c in phases["final models"]}
    # 10 families x 5 seeds and seeds 5-9 of dense and the 4 ERSM variants (claim 01's ACCURACY_SEEDS), the sweep's 4 models (lambda_unary 0.2 and 5, lambda_pair 0, beta 5; its anchor, the paper's
    # default at seed 0, is the selected ERSM paper seed 0 here, where every ERSM trial ties and trial 0 is selected),
    # 9 families x 3 rhos x 5 seeds on spurious splits
    assert len(finals) == 50 + 25 + 4 + 135
    added = sorted((c.model, c.augmentation, c.beta > 0) for c in finals.values() if c.seed >= 5)
    assert added == sorted((model, "none", True) for model in ("dense", "paper", "calibrated", "meanfield", "hardconcrete")
                           for _ in range(5))
    assert sorted({c.background_label_correlation for c in finals.values()}) == [0.0, 0.5, 0.7, 0.9]
    assert all(c.epochs == 15 and c.n_train == 10000 and c.width == 32 for c in finals.values())
    # dense, dense + Cutout (on its un-augmented training images) and the paper's layer with beta > 0 and beta = 0 fit:
    # their second seeds (the stability test's), on each split
    longer = phases["longer runs"]
    assert all(c.epochs == 23 and c.seed == 1 for c in longer)
    assert sorted((c.model, c.augmentation, c.beta == 0, c.background_label_correlation) for c in longer) == sorted(
        (model, augmentation, control, rho) for rho in (0.0, 0.5, 0.7, 0.9)
        for model, augmentation, control in (("dense", "none", False), ("paper", "none", False), ("paper", "none", True),
                                             *((("dense", "cutout", False),) if rho == 0.0 else ())))


def test_the_plan_applies_the_tuning_selection(monkeypatch):
    fake_histories(monkeypatch)   # validation accuracy grows with lr: the trial with the largest lr wins
    phases = dict(plan.phases("full"))
    best_lr = max(c.lr for c in phases["dense trials"])
    base = base_of(parameters("01_training", "full"))
    selected, _ = tuning.tune(base, 8)
    sweep = {c.digest(): c for runs in sparsity.sweep_configs(base, {"beta": [5.0], "lambda_unary": [0.2, 5.0], "lambda_pair": [0.0]},
                                                              0, recipe=selected["dense"]).values() for c in runs}
    assert set(sweep) < {c.digest() for c in phases["final models"]}
    assert all(c.lr == best_lr for c in phases["ERSM trials"] + phases["final models"])   # the sweep too: one recipe
    paper = [c for c in phases["final models"] if c.model == "paper" and c.beta > 0 and c.digest() not in sweep]
    assert paper and all(c.lambda_unary == selected["paper"]["lambda_unary"] for c in paper)
    assert sweep[sparsity.sweep_configs(base, {}, 0, recipe=selected["dense"])["paper default"][0].digest()].beta == 1.0
    assert phases["longer runs"] == []   # nothing fits: no longer run


def test_notebook_03_trains_nothing_after_warm(home):
    """The digits' spurious splits (03, and 05's among them) are in the plan: warm, then 03 trains nothing more."""
    trained = plan.warm("ci", parameters_for=tiny_ci)
    entries = sorted(path.name for path in (home / "runs" / "cache").iterdir())
    assert trained == len(entries) > 0
    assert plan.warm("ci", parameters_for=tiny_ci) == 0   # a second warm finds everything in the cache
    reproduce("ci", only="03", notebooks_dir=ROOT / "notebooks", parameters_for=tiny_ci)
    assert sorted(path.name for path in (home / "runs" / "cache").iterdir()) == entries


def test_several_jobs_train_the_same_weights_as_one(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    base = base_of(tiny_ci("01_training", "ci"))
    configs = [base.replace(model=model, seed=seed) for model in ("dense", "paper") for seed in (0, 1)]
    weights = {}
    for jobs in (1, 2):
        monkeypatch.setenv("ERSM_HOME", str(tmp_path / f"jobs{jobs}"))
        lines = list(plan._train(configs, jobs))
        assert [line.split(" (config ")[1].rstrip(")") for line in lines] == [c.digest() for c in configs]
        weights[jobs] = [load_checkpoint(tmp_path / f"jobs{jobs}" / "runs" / "cache" / c.digest())["model"] for c in configs]
    for one, two in zip(weights[1], weights[2]):   # bit-identical weights, model by model
        assert one.keys() == two.keys() and all(torch.equal(one[key], two[key]) for key in one)


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True])
def test_bad_jobs_are_refused_by_name(jobs):
    with pytest.raises(ValueError, match=f"jobs={jobs!r} must be an integer >= 1"):
        plan.warm("ci", jobs=jobs)


def test_unknown_profile_and_disagreeing_notebooks_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="profile='fast' is unknown"):
        list(plan.phases("fast"))

    def disagreeing(stem, profile):
        return {**parameters(stem, profile), **({"EPOCHS": 3} if stem == "03_occlusion_robustness" else {})}

    with pytest.raises(ValueError, match="03_occlusion_robustness has other base parameters than 01_training"):
        list(plan.phases("ci", disagreeing))
