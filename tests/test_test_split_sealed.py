"""Training and tuning never read the test split (issue 29).

Every way into a split is made to refuse ``"test"``: the public split functions (they all pass
through ``ersm.data.splits._check``), the names ``ersm.training.cache`` imported from ``ersm.data``, the
digit generator itself (``ClutteredDigits("test", ...)``) and the real datasets' official test
part (``ersm.data.splits._base(..., part="test")``). Then tiny configs go through the public
training entry points (``ersm.training.cache``, the ``ersm train`` command, ``ersm.fit``), the tuning
protocol (``ersm.study.tuning.tune`` and ``trial_report``) and the convergence rule, on the cluttered
digits and on a CIFAR-10 fixture (Dataset path). Any read of the test split fails the test,
even one that a caller swallowed (every refused request is also recorded).

The last test checks that dropping the test evaluation left torch's global random stream as it
was, so models keep the weights their (unchanged) config hashes name.

Each test trains into a temporary ``ERSM_HOME``; a few seconds on one CPU thread in all.
"""
from __future__ import annotations

import pytest
import torch

import ersm.data
import ersm.data.digits
import ersm.data.splits as splits
import ersm.training.engine
import ersm.study.convergence
import ersm.training.cache
from ersm.study import convergence, tuning
from ersm.cli import main
from ersm.training.config import TrainConfig
from ersm.paths import cache_dir, data_dir
from helpers.fixtures import write_cifar
from helpers.sealed import TestSplitRead, clear_split_caches, seal_test_split

TINY = TrainConfig(model="paper", n_train=64, n_val=32, n_test=32, epochs=1, batch_size=32, width=8)
CIFAR = TrainConfig(dataset="cifar10", model="paper", width=8, proj_dim=8, n_train=16, n_val=4, n_test=6, epochs=1,
                    batch_size=8, device="cpu")


@pytest.fixture
def sealed(tmp_path, monkeypatch) -> list[str]:
    """Every road to the test split raises :class:`TestSplitRead` (``helpers/sealed.py``); returns the
    list of refused requests, so that a swallowed refusal still fails the test."""
    monkeypatch.setenv("ERSM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ERSM_DATA", str(tmp_path / "data"))
    yield seal_test_split(monkeypatch)
    clear_split_caches()


def test_the_guards_catch_every_road_to_the_test_split(sealed):
    """The guards are live: without this, the tests below could pass by guarding nothing."""
    roads = [lambda: ersm.data.load_split(TINY, "test"), lambda: ersm.data.load_split(TINY, "test", "swapped"),
             lambda: ersm.data.split_metadata(TINY, "test"), lambda: ersm.data.evaluation_set(TINY, "test"),
             lambda: splits.load_split(TINY, "test", "aligned"), lambda: splits._digits(*splits._digit_args(TINY, "test", "random")),
             lambda: ersm.data.ClutteredDigits("test", 4), lambda: splits._real_base(CIFAR, "test", False)]
    for road in roads:
        with pytest.raises(TestSplitRead):
            road()
    assert len(sealed) == len(roads)
    sealed.clear()
    ersm.data.load_split(TINY, "validation")  # the other splits stay open
    assert not sealed


def test_training_a_config_reads_no_test_split(sealed, capsys):
    model = ersm.training.cache.get_model(TINY)  # trains
    assert not model.training
    history = ersm.training.cache.training_history(TINY)  # from the cache
    assert [record["epoch"] for record in history] == [1]
    record = history[0]
    assert {"val_accuracy", "val_mean_mask", *(f"val_share_mask_below_{t}" for t in ersm.training.engine.MASK_THRESHOLDS)} <= set(record)
    assert not {"test_accuracy", "mean_mask"} & set(record)
    ersm.study.convergence.clean_training_cross_entropy(TINY)
    assert ersm.study.convergence.validation_correct(TINY).shape == (TINY.n_val,)
    resumed = TINY.replace(epochs=2, seed=1)  # a run stopped and resumed loads its data twice
    ersm.training.cache.train(resumed, cache_dir() / resumed.digest(), stop_after_epoch=1)
    ersm.training.cache.get_model(resumed)
    assert main(["train", "--set", "model=calibrated", "--set", "n_train=32", "--set", "n_val=16", "--set", "n_test=16",
                 "--set", "epochs=1", "--set", "width=8"]) == 0
    assert "test_accuracy" not in capsys.readouterr().out
    assert not sealed


def test_a_dataset_config_reads_no_test_split(sealed):
    write_cifar(data_dir())
    ersm.training.cache.get_model(CIFAR)
    assert "val_mean_mask" in ersm.training.cache.training_history(CIFAR)[0]
    assert not sealed


def test_tuning_and_the_convergence_rule_read_no_test_split(sealed):
    selected, grid = tuning.tune(TINY, 2, families=("hardconcrete",))
    tuning.trial_report(TINY, grid, {k: selected["dense"][k] for k in tuning.SPACES["dense"]})
    table = convergence.assess({"ERSM paper": [TINY, TINY.replace(seed=1)]})
    assert len(table) == 2
    assert not sealed


def test_fit_refuses_test_data_by_name_before_any_work(monkeypatch):
    monkeypatch.setattr(ersm.training.engine, "train_one_epoch", lambda *a: pytest.fail("trained although test= was passed"))
    torch.manual_seed(0)
    model = ersm.build_model("small_cnn", in_channels=1, num_classes=4, width=8, energy_mask=dict(proj_dim=8))
    images, labels = torch.rand(8, 1, 24, 24), torch.arange(8) % 4
    for test in ((images, labels), None):
        with pytest.raises(ValueError, match=r"test=.*never scores the test split.*claim notebooks only"):
            ersm.fit(model, (images, labels), epochs=1, beta=1.0, test=test)
    with pytest.raises(ValueError, match=r"draws_after_scoring=-1 must be an integer >= 0"):
        ersm.fit(model, (images, labels), epochs=1, beta=1.0, draws_after_scoring=-1)


def test_the_dropped_test_evaluation_leaves_the_random_stream_and_so_the_weights_as_they_were(monkeypatch):
    """Scoring the test split as a Dataset drew one number per epoch from torch's global generator (its
    DataLoader's base seed), and the hard-concrete gate draws its training noise from that generator.
    ``draws_after_scoring=1`` (what ``ersm.training.cache`` passes for the real datasets) must reproduce the old
    stream, so that a real-dataset config's weights stay the ones its unchanged hash names."""
    images, labels = torch.rand(24, 1, 24, 24, generator=torch.Generator().manual_seed(0)), torch.arange(24) % 4
    validation = torch.utils.data.TensorDataset(images[:8], labels[:8])

    def run(**kwargs) -> dict:
        torch.manual_seed(0)
        model = ersm.build_model("small_cnn", in_channels=1, num_classes=4, width=8,
                                 energy_mask=dict(proj_dim=8, variant="hardconcrete"))
        fitted = ersm.fit(model, (images, labels), epochs=3, beta=1.0, batch_size=8, validation=validation, **kwargs)
        return fitted.model.state_dict()

    evaluate = ersm.training.engine.evaluate

    def evaluate_then_score_a_test_dataset(model, data, num_workers=0):  # the old loop: validation, then test
        scored = evaluate(model, data, num_workers)
        evaluate(model, torch.utils.data.TensorDataset(images[8:16], labels[8:16]), num_workers)
        return scored

    with monkeypatch.context() as patch:
        patch.setattr(ersm.training.engine, "evaluate", evaluate_then_score_a_test_dataset)
        before = run()
    now = run(draws_after_scoring=1)
    assert all(torch.equal(before[key], now[key]) for key in before)
    without = run()  # the check can tell: leaving the draw out changes the noise, hence the weights
    assert not all(torch.equal(before[key], without[key]) for key in before)
