"""Exporting finished models out of the cache and importing them back (ersm/study/archive.py).

Tiny configs (96 images, 2 epochs) train into a temporary ``ERSM_HOME``; the exported folder and
a second cache are temporary folders too.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

import ersm.training.engine
import ersm.training.cache
from ersm.study.archive import MACHINES, export_models, import_models
from ersm.training.checkpoint import MANIFEST, PAYLOAD, load_checkpoint, save_checkpoint
from ersm.training.config import TrainConfig
from ersm.paths import cache_dir

TINY = TrainConfig(model="paper", n_train=96, n_test=64, n_val=64, epochs=2, batch_size=32, canvas=48)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ERSM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def trained():
    """Two finished models in the cache."""
    configs = [TINY, TINY.replace(seed=1)]
    models = [ersm.training.cache.get_model(config) for config in configs]
    return configs, models


def test_export_then_import_into_an_empty_cache_serves_the_same_models_without_training(trained, tmp_path, monkeypatch):
    configs, models = trained
    exported = export_models(tmp_path / "models")
    assert sorted(exported.copied) == sorted(c.digest() for c in configs) and not exported.refused
    monkeypatch.setenv("ERSM_HOME", str(tmp_path / "new machine"))
    assert not ersm.training.cache.is_cached(configs[0])
    imported = import_models(tmp_path / "models")
    assert sorted(imported.copied) == sorted(exported.copied)

    def no_training(*args, **kwargs):
        raise AssertionError("an imported model was trained again")

    monkeypatch.setattr(ersm.training.engine, "train_one_epoch", no_training)
    for config, model in zip(configs, models):
        loaded = ersm.training.cache.get_model(config)
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
        assert ersm.training.cache.training_history(config) == load_checkpoint(tmp_path / "models" / config.digest())["history"]
        assert ersm.training.cache.training_sessions(config), "the record of which machine trained it travels with it"


def test_export_drops_only_the_resume_state(trained, tmp_path):
    configs, _ = trained
    export_models(tmp_path / "models")
    original = load_checkpoint(cache_dir() / configs[0].digest())
    compact = load_checkpoint(tmp_path / "models" / configs[0].digest())
    assert set(original) - set(compact) == {"optimizer", "scheduler", "rng"}
    assert compact["history"] == original["history"] and compact["epoch"] == original["epoch"]
    size = lambda folder: (folder / PAYLOAD).stat().st_size
    assert size(tmp_path / "models" / configs[0].digest()) < 0.5 * size(cache_dir() / configs[0].digest())


def test_export_skips_a_model_still_training_and_is_idempotent(trained, tmp_path):
    configs, _ = trained
    unfinished = TINY.replace(seed=2, epochs=3)
    ersm.training.cache.train(unfinished, cache_dir() / unfinished.digest(), stop_after_epoch=1)
    first = export_models(tmp_path / "models")
    assert first.unfinished == [unfinished.digest()]
    assert not (tmp_path / "models" / unfinished.digest()).exists()
    again = export_models(tmp_path / "models")
    assert again.copied == [] and sorted(again.present) == sorted(first.copied)


@pytest.mark.parametrize("damage", ["payload", "config", "renamed"])
def test_a_damaged_entry_is_refused_by_name_and_the_rest_is_copied(trained, tmp_path, monkeypatch, damage):
    configs, _ = trained
    export_models(tmp_path / "models")
    folder = tmp_path / "models" / configs[0].digest()
    if damage == "payload":
        data = bytearray((folder / PAYLOAD).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (folder / PAYLOAD).write_bytes(bytes(data))
    elif damage == "config":   # a consistent checkpoint of another config under this config's name
        save_checkpoint(folder, {**load_checkpoint(folder), "config": TINY.replace(seed=7).to_dict()})
    else:                      # served under another config's key
        folder.rename(tmp_path / "models" / "0123456789abcdef")
        folder = tmp_path / "models" / "0123456789abcdef"
    monkeypatch.setenv("ERSM_HOME", str(tmp_path / "new machine"))
    with pytest.warns(UserWarning, match=folder.name):
        imported = import_models(tmp_path / "models")
    assert imported.refused == [folder.name] and imported.copied == [configs[1].digest()]
    assert not (cache_dir() / folder.name).exists()


def test_import_replaces_a_corrupt_cache_entry_and_keeps_a_good_one(trained, tmp_path):
    configs, _ = trained
    export_models(tmp_path / "models")
    (cache_dir() / configs[0].digest() / MANIFEST).write_text(json.dumps({"sha256": "0" * 64, "epoch": 2}))
    before = (cache_dir() / configs[1].digest() / PAYLOAD).read_bytes()
    imported = import_models(tmp_path / "models")
    assert imported.copied == [configs[0].digest()] and imported.present == [configs[1].digest()]
    assert load_checkpoint(cache_dir() / configs[0].digest()) is not None
    assert (cache_dir() / configs[1].digest() / PAYLOAD).read_bytes() == before, "a good entry is not rewritten"


def test_the_digest_on_another_machine(monkeypatch):
    here = TINY.digest()
    assert TINY.digest(machine=("cpu", "portable")) == here   # the tests run portable on the CPU
    monkeypatch.setenv("ERSM_KERNELS", "native")
    assert TINY.digest() == TINY.digest(machine=("cpu", "native")) != here
    assert len({TINY.digest(machine=m) for m in MACHINES}) == len(MACHINES)


def test_bad_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not-there"):
        import_models(tmp_path / "not-there")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="destination=.*file"):
        export_models(tmp_path / "file" / "models", cache=tmp_path)


def test_the_command_line_round_trip(trained, tmp_path, home):
    env = {"ERSM_HOME": str(home), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "ersm", "models", "export", str(tmp_path / "models")], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "2 copied, 0 already there" in out
    shutil.rmtree(cache_dir())
    out = subprocess.run([sys.executable, "-m", "ersm", "models", "import", str(tmp_path / "models")], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "2 copied" in out and ersm.training.cache.is_cached(TINY)
    failed = subprocess.run([sys.executable, "-m", "ersm", "models", "import", str(tmp_path / "nowhere")], env=env,
                            capture_output=True, text=True)
    assert failed.returncode == 2 and "nowhere" in failed.stderr


def test_export_can_leave_out_another_runs_models(trained, tmp_path, home):
    """A cache holding the exploratory models beside a new run's exports only the new ones."""
    configs, _ = trained
    other_run = tmp_path / "other"
    (other_run / configs[0].digest()).mkdir(parents=True)
    outcome = export_models(tmp_path / "new", exclude=[other_run])
    assert outcome.copied == [configs[1].digest()] and outcome.excluded == [configs[0].digest()]
    assert "1 excluded" in outcome.summary()
    with pytest.raises(FileNotFoundError, match="exclude=.*nowhere"):
        export_models(tmp_path / "new", exclude=[tmp_path / "nowhere"])
    env = {"ERSM_HOME": str(home), "PATH": "/usr/bin:/bin"}
    failed = subprocess.run([sys.executable, "-m", "ersm", "models", "import", str(tmp_path / "new"), "--exclude",
                             str(other_run)], env=env, capture_output=True, text=True)
    assert failed.returncode == 2 and "--exclude" in failed.stderr and "export only" in failed.stderr
