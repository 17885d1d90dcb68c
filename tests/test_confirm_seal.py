"""The confirmatory run's sealed test split and its plan (rules v3, issue 30).

The split of a config with ``test_seed=CONFIRM_TEST_SEED`` cannot be composed until a claim
notebook opens it under a confirm profile with the frozen rules; once open, nothing more trains
in that process. ``ersm warm`` for a confirmatory profile (its phases shrunk to a tiny size here)
trains, tunes and chooses the background rho without reading it, and resumes with nothing to do.
"""
from __future__ import annotations

import pytest
import torch

import ersm.data
import ersm.training.cache
from ersm.study import confirm, plan, profiles, rules
from ersm.training.config import TrainConfig
from ersm.data import sealed
from ersm.data.sealed import CONFIRM_TEST_SEED, SealedTestSplit
from ersm.data.splits import _digits
from ersm.experiments.common import DENSE

TINY = TrainConfig(model="paper", n_train=64, n_val=32, n_test=32, epochs=1, batch_size=32, width=8)
SEALED = TINY.replace(test_seed=CONFIRM_TEST_SEED)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ERSM_HOME", str(tmp_path / "home"))   # results/<profile>/ (the ledger) go here
    monkeypatch.setenv("ERSM_CACHE", str(tmp_path / "cache"))
    _digits.cache_clear()
    yield
    sealed._reset_for_tests()
    _digits.cache_clear()


ROADS = {
    "load_split": lambda c: ersm.data.load_split(c, "test"),
    "load_split swapped": lambda c: ersm.data.load_split(c, "test", "swapped"),
    "evaluation_set": lambda c: ersm.data.evaluation_set(c, "test"),
    "split_metadata": lambda c: ersm.data.split_metadata(c, "test"),
}


@pytest.mark.parametrize("road", ROADS)
def test_the_sealed_split_is_refused_naming_split_and_seed(road):
    with pytest.raises(SealedTestSplit, match=rf"split='test' with test_seed={CONFIRM_TEST_SEED}"):
        ROADS[road](SEALED)
    ROADS[road](TINY)  # the exploratory composition stays readable
    ersm.data.load_split(SEALED, "validation")  # and so do the sealed config's other splits


def test_opening_needs_a_confirm_profile_and_a_notebook():
    for profile in ("full", "ci", "confirm"):
        with pytest.raises(ValueError, match=f"profile={profile!r} may not open"):
            sealed.open_test_split(profile, "01_training")
    with pytest.raises(ValueError, match="notebook=''"):
        sealed.open_test_split("confirm_small_cnn", "")
    assert not sealed.is_open()


def test_a_study_refuses_to_train_under_edited_rules(tmp_path, monkeypatch):
    page = (rules.rules_page()).read_text(encoding="utf-8")
    monkeypatch.setattr(rules, "rules_page", lambda root=None: tmp_path / "rules.md")
    (tmp_path / "rules.md").write_text(page.replace("9 seeds", "5 seeds"), encoding="utf-8")
    with pytest.raises(rules.RulesChanged, match=rules.V3_SHA256):
        next(confirm.phases("confirm_resnet20"))


def test_opening_checks_the_frozen_rules_first(tmp_path, monkeypatch):
    page = (rules.rules_page()).read_text(encoding="utf-8")
    monkeypatch.setattr(rules, "rules_page", lambda root=None: tmp_path / "rules.md")
    (tmp_path / "rules.md").write_text(page.replace("9 seeds", "5 seeds"), encoding="utf-8")
    with pytest.raises(rules.RulesChanged, match=rules.V3_SHA256):
        sealed.open_test_split("confirm_resnet20", "01_training")
    assert not sealed.is_open()


@pytest.fixture
def trained_study(monkeypatch):
    """Opening needs every phase trained: stand in for a finished study."""
    monkeypatch.setattr(plan, "status", lambda profile: [("final models", 3, 3), ("longer runs", 1, 1)])


def test_the_generator_refuses_the_sealed_composition_however_it_is_reached():
    with pytest.raises(SealedTestSplit, match=f"seed {CONFIRM_TEST_SEED}"):
        ersm.data.ClutteredDigits("test", 4, seed=CONFIRM_TEST_SEED)
    with pytest.raises(SealedTestSplit):   # data_seed + 1 is the sealed seed
        ersm.data.load_split(TINY.replace(data_seed=CONFIRM_TEST_SEED - 1), "test")
    ersm.data.ClutteredDigits("validation", 4, seed=CONFIRM_TEST_SEED)   # other splits with that seed are not sealed


def test_opening_needs_every_model_trained(monkeypatch):
    monkeypatch.setattr(plan, "status", lambda profile: [("dense trials", 8, 8), ("ERSM trials", 3, 8)])
    with pytest.raises(SealedTestSplit, match="ERSM trials: 3 of 8"):
        sealed.open_test_split("confirm_resnet20", "01_training")
    assert not sealed.is_open() and not sealed.ledger("confirm_resnet20").exists()


def test_once_open_the_split_is_new_images_of_the_same_digits(trained_study):
    exploratory = ersm.data.load_split(TINY, "test")
    record = sealed.open_test_split("confirm_small_cnn", "01_training")
    assert record["test_seed"] == CONFIRM_TEST_SEED and record["rules_sha256"] == rules.V3_SHA256
    assert set(record) == {"opened_utc", "profile", "notebook", "test_seed", "rules_sha256"}
    images, labels, masks = ersm.data.load_split(SEALED, "test")
    assert images.shape == exploratory[0].shape and not torch.equal(images, exploratory[0])
    assert ersm.data.split_metadata(SEALED, "test")["label"].tolist() == labels.tolist()


def test_nothing_trains_once_the_split_is_open(trained_study):
    sealed.open_test_split("confirm_resnet20", "03_occlusion_robustness")
    with pytest.raises(SealedTestSplit, match="ersm warm --profile confirm_resnet20"):
        ersm.training.cache.get_model(SEALED)
    # and in any later process: the ledger says the split was opened, and warm refuses the study
    import json
    lines = sealed.ledger("confirm_resnet20").read_text().splitlines()
    assert [json.loads(line)["notebook"] for line in lines] == ["03_occlusion_robustness"]
    sealed._reset_for_tests()
    with pytest.raises(SealedTestSplit, match="test_split_openings.jsonl"):
        next(confirm.phases("confirm_resnet20"))


def test_test_seed_is_checked_and_never_enters_the_hash():
    assert SEALED.digest() == TINY.digest() and SEALED.weight_fields() == TINY.weight_fields()
    for bad, match in ((dict(test_seed=-1), "test_seed=-1 must be None"), (dict(test_seed=True), "test_seed=True has type bool"),
                       (dict(test_seed="7"), "test_seed='7' has type str"),
                       (dict(dataset="cifar10", test_seed=7), "test_seed=7 applies to a composed dataset")):
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)


def test_the_profiles_name_the_sealed_seed_and_v3_s_seeds():
    for name in profiles.CONFIRM_PROFILES:
        entry = profiles.CONFIRM[name]
        assert entry["TEST_SEED"] == CONFIRM_TEST_SEED and entry["SEEDS"] == list(confirm.SEEDS) == list(range(10, 19))
        assert confirm.base_of(name).test_seed == CONFIRM_TEST_SEED
    assert [profiles.CONFIRM[p]["BACKBONE"] for p in profiles.CONFIRM_PROFILES] == ["small_cnn", "resnet20"]


@pytest.fixture
def tiny_study(monkeypatch):
    """Both confirmatory profiles at a tiny size: 2 seeds, 1 tuning trial, 64 images x 1 epoch."""
    for name in profiles.CONFIRM_PROFILES:
        monkeypatch.setitem(profiles.CONFIRM, name, dict(profiles.CONFIRM[name], N_TRAIN=64, N_VAL=32, N_TEST=32, EPOCHS=1,
                                                         WIDTH=8, TUNING_TRIALS=1, DEVICE="cpu"))
    monkeypatch.setattr(confirm, "SEEDS", (10, 11))


def test_warm_trains_a_confirmatory_study_without_the_test_split_and_resumes(tiny_study, monkeypatch):
    chosen = []
    monkeypatch.setattr(confirm, "validation_swapped_accuracy",
                        lambda config: chosen.append(config.background_label_correlation) or 25.0)
    assert plan.status("confirm_resnet20") == [("dense trials", 0, 1)]   # stops at the first incomplete phase
    trained = plan.warm("confirm_resnet20")
    # 1 dense + 1 paper trial, 4 families x 2 seeds, dense at rho 0.9 (it qualifies: 25% >= 20%), paper and its control there
    assert trained == 2 + 8 + 2 + 4
    assert set(chosen) == {0.9}
    assert plan.warm("confirm_resnet20") == 0
    assert [done == total for _, done, total in plan.status("confirm_resnet20")] == [True] * 6
    assert [phase for phase, _, _ in plan.status("confirm_resnet20")][-1] == "longer runs"


def test_rho_falls_to_the_next_when_dense_has_no_headroom(tiny_study, monkeypatch):
    monkeypatch.setattr(confirm, "validation_swapped_accuracy",
                        lambda config: {0.9: 12.0, 0.7: 19.9, 0.5: 30.0}[config.background_label_correlation])
    names = [name for name, _ in confirm.phases("confirm_resnet20")]
    assert names == ["dense trials", "ERSM trials", "final models", "background dense, rho=0.9", "background dense, rho=0.7",
                     "background dense, rho=0.5", "background ERSM", "longer runs"]


def test_the_real_swapped_validation_accuracy_reads_validation_only(tiny_study):
    config = confirm.base_of("confirm_resnet20").replace(background_label_correlation=0.9, model="dense", seed=10)
    value = confirm.validation_swapped_accuracy(config)   # trains the tiny model; a test read would raise
    assert 0.0 <= value <= 100.0
    # swapped: no validation image lies on its label's own background; drawn: most do at rho 0.9
    from ersm.data.digits import BACKGROUNDS
    swapped = ersm.data.split_metadata(config, "validation", "swapped")
    drawn = ersm.data.split_metadata(config, "validation")
    own = [BACKGROUNDS[label] for label in swapped["label"]]
    assert all(b != o for b, o in zip(swapped["background"], own))
    assert sum(b == o for b, o in zip(drawn["background"], own)) > len(own) / 2


def test_the_small_cnn_study_refuses_to_retrain_the_exploratory_trials(tiny_study):
    with pytest.raises(confirm.ExploratoryTrialsMissing, match="models import models/full"):
        next(confirm.phases("confirm_small_cnn"))


def test_configs_written_before_test_seed_keep_their_files_and_verify(tmp_path):
    """A committed exploratory model (its config.json has no test_seed) still verifies and imports."""
    import json
    from pathlib import Path
    from ersm.study.archive import _verify
    from ersm.training.config import from_dict

    entry = sorted(p for p in (Path(__file__).resolve().parents[1] / "models" / "full").iterdir() if p.is_dir())[0]
    written = json.loads((entry / "config.json").read_text())
    assert "test_seed" not in written and from_dict(written).to_dict() == written
    assert _verify(entry)[0] is None
    assert "test_seed" in SEALED.to_dict() and from_dict(SEALED.to_dict()) == SEALED


def test_the_small_cnn_study_reads_the_exploratory_trials_and_trains_from_their_selection(tiny_study, monkeypatch):
    """With the trials in the cache (as `ersm models import models/full` leaves them), the study
    trains no trial again, and its final models carry the selected settings at seeds 10-11."""
    from ersm.study import tuning
    monkeypatch.setattr(confirm, "validation_swapped_accuracy", lambda config: 25.0)
    base, trials = confirm.base_of("confirm_small_cnn"), profiles.CONFIRM["confirm_small_cnn"]["TUNING_TRIALS"]
    dense = tuning.trial_configs(base, "dense", trials)
    for config in dense:
        ersm.training.cache.get_model(config)
    recipe = tuning.tune(base, trials, families=())[0]
    for runs in tuning.trials_by_family(base, trials, recipe, confirm.TUNED["small_cnn"]).values():
        for config in runs:
            ersm.training.cache.get_model(config)
    phases = {}
    for name, configs in confirm.phases("confirm_small_cnn"):
        phases[name] = configs
        if name == "final models":
            break   # the later phases would train these
    assert all(ersm.training.cache.is_cached(c) for c in phases["dense trials"] + phases["ERSM trials"])
    selected = confirm.selections("confirm_small_cnn")
    finals = phases["final models"]
    assert {c.seed for c in finals} == {10, 11} and len(finals) == 2 * len(confirm.PRIMARY + confirm.SECONDARY["small_cnn"])
    paper = [c for c in finals if c.model == "paper" and c.beta > 0][0]
    assert (paper.lambda_unary, paper.lambda_pair, paper.beta, paper.lr) == (
        selected["paper"]["lambda_unary"], selected["paper"]["lambda_pair"], selected["paper"]["beta"], selected["dense"]["lr"])
    assert all(c.test_seed == CONFIRM_TEST_SEED for c in finals)


def test_the_headroom_shares_are_chosen_on_validation_images_alone(monkeypatch):
    """Rules v3, claim 03a: the shares come from dense on validation images; the test split stays shut."""
    from ersm.data import load_split
    from ersm.experiments import occlusion
    from ersm.training.cache import make_model
    from helpers.fixtures import randomise_batchnorm
    from helpers.sealed import clear_split_caches, seal_test_split

    configs = [SEALED.replace(model="dense", seed=seed) for seed in (10, 11)]
    models = []
    for config in configs:
        model = make_model(config).eval()
        randomise_batchnorm(model, seed=config.seed)
        models.append(model)
    fractions = [0.0, 0.1, 0.3, 0.5]
    expected_correct = occlusion.occlusion_correctness({DENSE: models}, {DENSE: configs}, load_split(configs[0], "validation"),
                                                       fractions, conditions=[occlusion.PRIMARY])
    refused = seal_test_split(monkeypatch)
    try:
        for chance, margin in ((0.0, 0.0), (10.0, 10.0), (100.0, 0.0)):
            shares = occlusion.validation_headroom_fractions(models, configs, fractions, chance=chance, margin=margin)
            assert shares == occlusion.headroom_fractions(expected_correct, fractions, chance=chance, margin=margin)
        assert occlusion.validation_headroom_fractions(models, configs, fractions, chance=0.0, margin=0.0) == [0.1, 0.3, 0.5]
        assert occlusion.validation_headroom_fractions(models, configs, fractions, chance=100.0, margin=0.0) == []
    finally:
        clear_split_caches()
    assert refused == []
    with pytest.raises(ValueError, match=r"models has 2 model\(s\) and configs 1"):
        occlusion.validation_headroom_fractions(models, configs[:1], fractions)
