"""The training engine: cache, determinism, resume, corrupt checkpoints, NaN guard, config checks, CLI.

Every test trains tiny configs (96 images, 2 epochs) into a temporary ``ERSM_HOME``, so nothing
here touches the repository's ``runs/``. Run with ``ERSM_THREADS=1`` on a shared machine.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import warnings

import pytest
import torch

import ersm.training.checkpoint
import ersm.training.engine
import ersm.study.convergence
import ersm.training.cache
from ersm.training.augment import cutout
from ersm.training.checkpoint import load_checkpoint
from ersm.cli import main
from ersm.training.config import ERSM_ONLY_FIELDS, TrainConfig, from_dict
from ersm.layer import energy_masks
from ersm.loss import Objective
from ersm.paths import cache_dir

TINY = TrainConfig(model="paper", n_train=96, n_test=64, n_val=64, epochs=2, batch_size=32, canvas=48)
STEPS_PER_EPOCH = 3  # ceil(96 / 32)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """A fresh cache per test: ``ersm.paths`` reads ERSM_HOME at call time."""
    monkeypatch.setenv("ERSM_HOME", str(tmp_path))
    return tmp_path


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), f"{key} differs"


def history(run_dir, drop=("seconds",)) -> list[dict]:
    """metrics.jsonl without the wall-clock field, which legitimately differs run to run."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in drop} for r in records]


def count_epochs(monkeypatch) -> list[int]:
    """Wrap the engine's ``train_one_epoch`` so the test sees which epochs actually ran."""
    ran, original = [], ersm.training.engine.train_one_epoch

    def counting(run, epoch):
        ran.append(epoch)
        return original(run, epoch)

    monkeypatch.setattr(ersm.training.engine, "train_one_epoch", counting)
    return ran


# --- cache ---------------------------------------------------------------------------------

def test_second_get_model_is_a_cache_hit(monkeypatch):
    ran = count_epochs(monkeypatch)
    first = ersm.training.cache.get_model(TINY)
    assert ran == [0, 1]
    assert (cache_dir() / TINY.digest() / "checkpoint.pt").exists()

    def no_training(*args, **kwargs):
        raise AssertionError("a cached config must not be trained again")

    monkeypatch.setattr(ersm.training.engine, "train_one_epoch", no_training)
    second = ersm.training.cache.get_model(TINY)
    assert_same_weights(first, second)
    assert not second.training


def test_clean_training_cross_entropy_reads_the_training_images_in_eval_mode():
    """What the convergence rule reads for an augmented model: the un-augmented split, BatchNorm's running statistics."""
    config = TINY.replace(model="dense", augmentation="cutout", cutout_size=16)
    value = ersm.study.convergence.clean_training_cross_entropy(config)
    model = ersm.training.cache.get_model(config)
    images, labels, _ = ersm.data.load_split(config, "train")
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model.eval()(images), labels).item()
        in_train_mode = torch.nn.functional.cross_entropy(model.train()(images), labels).item()
    assert value == pytest.approx(expected, rel=1e-5)
    assert abs(value - in_train_mode) > 1e-2  # running statistics, not the batch's


def test_validation_correct_is_the_recorded_validation_accuracy_image_by_image():
    """What the stability test compares: one bool per validation image, whose mean is the last epoch's record."""
    correct = ersm.study.convergence.validation_correct(TINY)
    assert correct.dtype == bool and correct.shape == (TINY.n_val,)
    assert correct.mean() == pytest.approx(ersm.training.cache.training_history(TINY)[-1]["val_accuracy"], abs=1e-6)
    assert 0 < correct.sum() < TINY.n_val   # a tiny model gets some right, not all


def test_longer_config_is_a_different_cache_entry(monkeypatch):
    # the epoch count is part of the config, so it must not reuse (or extend) the 2-epoch model
    ersm.training.cache.get_model(TINY)
    ran = count_epochs(monkeypatch)
    ersm.training.cache.get_model(TINY.replace(epochs=3))
    assert ran == [0, 1, 2]


# --- determinism and resume ------------------------------------------------------------------

def test_same_config_trains_bit_identically(tmp_path):
    a = ersm.training.cache.train(TINY, tmp_path / "a")
    b = ersm.training.cache.train(TINY, tmp_path / "b")
    assert_same_weights(a, b)
    assert history(tmp_path / "a") == history(tmp_path / "b")
    assert len(history(tmp_path / "a")) == TINY.epochs
    assert (tmp_path / "a" / "config.json").read_text() == (tmp_path / "b" / "config.json").read_text()


def test_different_seed_trains_differently(tmp_path):
    # guards the determinism test against passing because nothing depends on the seed
    a = ersm.training.cache.train(TINY, tmp_path / "a")
    b = ersm.training.cache.train(TINY.replace(seed=1), tmp_path / "b")
    assert not torch.equal(a.state_dict()["stem.0.weight"], b.state_dict()["stem.0.weight"])


@pytest.mark.parametrize("recipe", [
    dict(),                                                       # AdamW, no augmentation
    dict(optimizer="sgd", augmentation="cutout", cutout_size=8),  # SGD momentum + per-epoch cutout draws
])
def test_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch, recipe):
    config = TINY.replace(epochs=3, **recipe)
    ran = count_epochs(monkeypatch)
    ersm.training.cache.train(config, tmp_path / "a", stop_after_epoch=1)
    assert ran == [0]
    assert load_checkpoint(tmp_path / "a")["epoch"] == 1
    resumed = ersm.training.cache.train(config, tmp_path / "a")
    assert ran == [0, 1, 2], "the resumed run must start at epoch 2, not retrain epoch 1"
    straight = ersm.training.cache.train(config, tmp_path / "b")
    assert_same_weights(resumed, straight)
    assert history(tmp_path / "a") == history(tmp_path / "b")


def test_sessions_say_which_machine_trained_which_epochs(tmp_path, monkeypatch):
    config = TINY.replace(epochs=3)
    monkeypatch.setattr(ersm.portability.numerics, "cpu_model", lambda: "first CPU")
    ersm.training.cache.train(config, cache_dir() / config.digest(), stop_after_epoch=1)   # a session that ends after epoch 1
    monkeypatch.setattr(ersm.portability.numerics, "cpu_model", lambda: "second CPU")
    ersm.training.cache.get_model(config)                                                   # resumed elsewhere
    ersm.training.cache.get_model(config)                                                   # a cache hit trains nothing
    sessions = ersm.training.cache.training_sessions(config)
    assert [(s["event"], s.get("from_epoch", s.get("epoch"))) for s in sessions] == [("start", 0), ("end", 1), ("start", 1), ("end", 3)]
    assert [s["cpu_model"] for s in sessions if s["event"] == "start"] == ["first CPU", "second CPU"]
    start = sessions[0]
    assert start["device"] == "cpu" and start["kernels"] == ersm.portability.numerics.kernel_mode() and start["world_size"] == 1
    assert start["aten_capability"] == torch.backends.cpu.get_cpu_capability() and start["utc"].endswith("+00:00")
    assert all(s["wall_seconds"] >= 0 for s in sessions if s["event"] == "end")
    assert ersm.training.cache.training_sessions(TINY.replace(seed=9)) == []  # never trained: no records

    from ersm.experiments.common import trained_on
    (record,) = trained_on({"paper": [config, config.replace(seed=9)]})   # the untrained seed 9 is left out
    assert record["machines"] == [f"cpu: first CPU, {ersm.portability.numerics.kernel_mode()} kernels",
                                  f"cpu: second CPU, {ersm.portability.numerics.kernel_mode()} kernels"]
    assert record["sessions"] == 2 and record["config"] == config.digest() and record["seed"] == 0
    sessions_file = cache_dir() / config.digest() / ersm.training.cache.SESSIONS
    sessions_file.write_text("".join(line + "\n" for line in sessions_file.read_text().splitlines()[2:]))  # epoch 1 unrecorded
    assert trained_on({"paper": [config]})[0]["machines"] == [f"cpu: second CPU, {ersm.portability.numerics.kernel_mode()} kernels", "not recorded"]
    sessions_file.unlink()   # a model trained before the records existed
    assert trained_on({"paper": [config]})[0]["machines"] == ["not recorded"]


# --- corrupt checkpoints -----------------------------------------------------------------------

def flip_bytes(run_dir):
    path = run_dir / "checkpoint.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(run_dir):
    path = run_dir / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def delete_manifest(run_dir):
    (run_dir / "checkpoint.json").unlink()


def swap_payload(run_dir):
    # a perfectly loadable checkpoint with wrong (zeroed) weights: only the hash can catch it
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    state["model"] = {k: torch.zeros_like(v) for k, v in state["model"].items()}
    torch.save(state, run_dir / "checkpoint.pt")


@pytest.mark.parametrize("corrupt", [flip_bytes, truncate, delete_manifest, swap_payload])
def test_corrupt_checkpoint_warns_and_retrains(monkeypatch, corrupt):
    clean = ersm.training.cache.get_model(TINY)
    run_dir = cache_dir() / TINY.digest()
    corrupt(run_dir)

    loaded = []
    real_load = torch.load
    monkeypatch.setattr(ersm.training.checkpoint.torch, "load", lambda *a, **k: loaded.append(1) or real_load(*a, **k))
    ran = count_epochs(monkeypatch)
    with pytest.warns(UserWarning, match="corrupt checkpoint"):
        again = ersm.training.cache.get_model(TINY)
    assert loaded == [], "a checkpoint that fails verification must never reach torch.load"
    assert ran == [0, 1], "the model must be retrained from scratch"
    assert_same_weights(clean, again)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten checkpoint verifies again
        assert load_checkpoint(run_dir)["epoch"] == TINY.epochs


# --- non-finite loss -----------------------------------------------------------------------------

def test_nan_loss_stops_with_epoch_and_step_and_keeps_last_checkpoint(monkeypatch):
    calls, real = [], ersm.training.engine.ersm_objective
    poisoned_call = STEPS_PER_EPOCH + 2  # epoch 2, step 2

    def objective(logits, targets, model, beta):
        calls.append(1)
        result = real(logits, targets, model, beta)
        if len(calls) == poisoned_call:
            return Objective(result.total * float("nan"), result.cross_entropy, result.regularizer)
        return result

    monkeypatch.setattr(ersm.training.engine, "ersm_objective", objective)
    with pytest.raises(FloatingPointError, match=r"epoch 2, step 2\b"):
        ersm.training.cache.get_model(TINY)
    run_dir = cache_dir() / TINY.digest()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state = load_checkpoint(run_dir)
    assert state["epoch"] == 1
    assert len(history(run_dir)) == 1

    # once the cause is gone, training resumes from epoch 2 and matches an uninterrupted run
    monkeypatch.setattr(ersm.training.engine, "ersm_objective", real)
    resumed = ersm.training.cache.get_model(TINY)
    assert_same_weights(resumed, ersm.training.cache.train(TINY, run_dir.parent / "straight"))


def test_a_non_finite_mask_offset_stops_with_its_name_epoch_and_step(monkeypatch):
    config = TINY.replace(model="hardconcrete")
    real_step, steps = torch.optim.AdamW.step, []

    def step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        steps.append(1)
        if len(steps) == STEPS_PER_EPOCH + 1:  # epoch 2, step 1: the update blows the offset up
            with torch.no_grad():
                for parameter in self.param_groups[0]["params"]:
                    if parameter.dim() == 0:  # hardconcrete's only scalar parameter is mask_offset
                        parameter.fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    with pytest.raises(FloatingPointError, match=r"layer2\.1\.mask_offset became inf at epoch 2, step 1\b"):
        ersm.training.cache.get_model(config)
    state = load_checkpoint(cache_dir() / config.digest())
    assert state["epoch"] == 1, "the last good checkpoint stays"


@pytest.mark.parametrize("model", ["meanfield", "hardconcrete"])
def test_the_new_variants_train_through_the_engine(model):
    config = TINY.replace(model=model)
    trained = ersm.training.cache.get_model(config)
    layer = next(module for _, module in energy_masks(trained))
    assert layer.variant == model and torch.isfinite(layer.mask_offset)
    assert len(history(cache_dir() / config.digest())) == TINY.epochs


# --- config validation -----------------------------------------------------------------------------

@pytest.mark.parametrize("values, field", [
    ({"colour": "red"}, "colour"),
    ({"epochs": "3"}, "epochs"),
    ({"lr": "fast"}, "lr"),
    ({"epochs": True}, "epochs"),
    ({"beta": None}, "beta"),
    ({"background_label_correlation": 1.5}, "background_label_correlation"),
    ({"background_label_correlation": -0.1}, "background_label_correlation"),
    ({"n_train": 0}, "n_train"),
    ({"lr": float("nan")}, "lr"),
    ({"model": "sparse"}, "model"),
    ({"augmentation": "mixup"}, "augmentation"),
    ({"backbone": "vit"}, "backbone"),
    ({"neighbourhood": 6}, "neighbourhood"),
    ({"dataset": "mnist"}, "dataset='mnist'"),
    ({"backbone": "resnet34"}, "backbone='resnet34'"),
    ({"pretrained": True}, "pretrained=True needs one of the backbones"),
    ({"pretrained": 1}, "pretrained"),
    ({"backbone": "resnet18_imagenet", "pretrained": True}, "dataset='cluttered_digits' has 1"),  # 1 channel
    ({"dataset": "cifar10", "background_label_correlation": 0.5}, "background_label_correlation=0.5 applies"),
])
def test_bad_config_is_refused_naming_the_field(values, field):
    with pytest.raises(ValueError, match=field):
        from_dict(values)


def test_int_for_float_field_is_the_same_config():
    # ``--set lr=1`` and ``lr=1.0`` must name the same cache entry
    assert from_dict({"lr": 1}) == from_dict({"lr": 1.0})
    assert from_dict({"lr": 1}).digest() == from_dict({"lr": 1.0}).digest()
    assert isinstance(from_dict({"lr": 1}).lr, float)


def other_value(field: dataclasses.Field, base: TrainConfig = TrainConfig()):
    """A valid value different from the field's value in ``base``."""
    alternatives = {"backbone": ["resnet18"], "model": ["paper", "calibrated"], "insert_after": ["layer1"],
                    "neighbourhood": [4], "augmentation": ["cutout", "none"], "optimizer": ["sgd"],
                    "background_label_correlation": [0.5], "dataset": ["cifar10"], "pretrained": [True]}
    current = getattr(base, field.name)
    if field.name in alternatives:
        return next(value for value in alternatives[field.name] if value != current)
    return current + (1 if isinstance(current, int) else 0.5)


# device: only what it resolves to counts; test_seed: the engine never reads the test split (tests/test_confirm_seal.py)
NEVER_IN_THE_HASH = ("device", "test_seed")


@pytest.mark.parametrize("field", [f for f in dataclasses.fields(TrainConfig) if f.name not in NEVER_IN_THE_HASH],
                         ids=lambda f: f.name)
def test_every_field_changes_the_cache_key_of_a_model_it_can_change(field):
    base = TrainConfig(model="meanfield" if field.name == "iterations" else "paper", augmentation="cutout",
                       **({"backbone": "resnet18_imagenet", "dataset": "cifar10"} if field.name == "pretrained" else {}))
    assert base.replace(**{field.name: other_value(field, base)}).digest() != base.digest()


@pytest.mark.parametrize("field", ERSM_ONLY_FIELDS)
def test_energy_mask_fields_do_not_split_the_cache_of_dense_models(field):
    dense = TrainConfig(model="dense")
    changed = dense.replace(**{field: other_value(next(f for f in dataclasses.fields(TrainConfig) if f.name == field))})
    assert changed.digest() == dense.digest()


def test_new_fields_at_their_defaults_keep_every_old_cache_key():
    # configs written before `dataset` and `pretrained` existed must keep their hash (their cache entry)
    assert {"dataset", "pretrained"}.isdisjoint(TrainConfig().weight_fields())
    assert TrainConfig(dataset="cifar10").weight_fields()["dataset"] == "cifar10"


def test_digit_fields_do_not_split_the_cache_of_real_datasets():
    cifar = TrainConfig(dataset="cifar10")
    assert cifar.replace(canvas=56, clutter=2).digest() == cifar.digest()
    assert (cifar.in_channels, cifar.num_classes, cifar.image_size) == (3, 10, 32)
    assert (TrainConfig(dataset="oxford_pet").num_classes, TrainConfig(canvas=56).image_size) == (37, 56)


def test_cutout_size_matters_only_with_cutout():
    assert TrainConfig(cutout_size=8).digest() == TrainConfig(cutout_size=12).digest()
    assert TrainConfig(augmentation="cutout", cutout_size=8).digest() != TrainConfig(augmentation="cutout", cutout_size=12).digest()


def test_cache_key_names_the_torch_version_device_and_kernels(monkeypatch):
    key = TrainConfig().digest()
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert TrainConfig().digest() != key
    monkeypatch.undo()
    monkeypatch.setattr("ersm.training.config.resolve_device", lambda name: torch.device("cuda"))
    assert TrainConfig().digest() != key
    monkeypatch.undo()
    monkeypatch.setenv("ERSM_KERNELS", "native")
    assert TrainConfig().digest() != key, "a natively trained model must not be served in portable mode"


def test_cache_key_follows_the_resolved_device_not_its_spelling():
    assert TrainConfig(device="cpu").digest() == TrainConfig(device="auto").digest()  # no GPU in the tests
    assert TrainConfig(width=16).digest() != TrainConfig(width=32).digest()
    assert TrainConfig(backbone="resnet18", width=16).digest() == TrainConfig(backbone="resnet18", width=32).digest()


def test_device_and_width_are_checked():
    with pytest.raises(ValueError, match="device='tpu'"):
        TrainConfig(device="tpu")
    with pytest.raises(ValueError, match="width=0"):
        TrainConfig(width=0)


# --- cutout ------------------------------------------------------------------------------------------

def test_cutout_hides_one_square_per_image():
    images = torch.rand(200, 3, 48, 48) + 0.1  # no zeros of its own
    size = 8
    out = cutout(images, size, torch.Generator().manual_seed(0))
    assert images.min() > 0, "the input must not be changed in place"
    hidden = out == 0
    assert torch.equal(hidden, hidden[:, :1].expand_as(hidden)), "the same square in every channel"
    interior = 0
    for square in hidden[:, 0]:
        rows, cols = square.any(1).nonzero().flatten(), square.any(0).nonzero().flatten()
        assert len(rows) and len(cols), "every image loses something"
        box = square[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
        assert box.all() and int(square.sum()) == box.numel(), "the hidden pixels form one rectangle"
        assert len(rows) <= size and len(cols) <= size
        touches_border = rows.min() == 0 or cols.min() == 0 or rows.max() == 47 or cols.max() == 47
        if not touches_border:
            assert int(square.sum()) == size * size
            interior += 1
    assert interior > 100  # centres are uniform: most squares lie fully inside a 48 px image
    kept = ~hidden
    assert torch.equal(out[kept], images[kept])


def test_cutout_is_deterministic_per_generator():
    images = torch.rand(16, 1, 32, 32)
    a = cutout(images, 10, torch.Generator().manual_seed(3))
    b = cutout(images, 10, torch.Generator().manual_seed(3))
    c = cutout(images, 10, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_cutout_refuses_empty_square():
    with pytest.raises(ValueError, match="size"):
        cutout(torch.rand(1, 1, 8, 8), 0, torch.Generator())


# --- command line -------------------------------------------------------------------------------------

def test_cli_train_trains_into_the_cache_and_prints_the_digest(home, capsys):
    settings = ["model=paper", "n_train=64", "n_test=32", "epochs=1", "batch_size=32"]
    argv = ["train"] + [arg for s in settings for arg in ("--set", s)]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = from_dict({"model": "paper", "n_train": 64, "n_test": 32, "epochs": 1, "batch_size": 32})
    assert printed["config"] == expected.digest()
    assert printed["final"]["epoch"] == 1
    assert 0.0 <= printed["final"]["val_accuracy"] <= 1.0 and "test_accuracy" not in printed["final"]
    run_dir = home / "runs" / "cache" / expected.digest()
    assert load_checkpoint(run_dir)["epoch"] == 1


def test_cli_train_reads_a_config_file(home, tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model": "calibrated", "n_train": 64, "n_test": 32, "epochs": 1}))
    assert main(["train", "--config", str(path), "--set", "batch_size=32"]) == 0
    expected = from_dict({"model": "calibrated", "n_train": 64, "n_test": 32, "epochs": 1, "batch_size": 32})
    assert json.loads(capsys.readouterr().out)["config"] == expected.digest()


def test_python_m_ersm_help_lists_the_commands():
    done = subprocess.run([sys.executable, "-m", "ersm", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for command in ("train", "reproduce", "bench"):
        assert command in done.stdout


def test_the_history_of_a_cached_model_reads_its_checkpoint_once_and_builds_no_model(monkeypatch):
    """Issue 33: training_history verified and loaded a cached checkpoint twice and built the model."""
    first = ersm.training.cache.training_history(TINY)          # trains it
    reads = []
    original = ersm.training.cache.load_checkpoint
    monkeypatch.setattr(ersm.training.cache, "load_checkpoint", lambda *a, **k: reads.append(a[0]) or original(*a, **k))
    monkeypatch.setattr(ersm.training.cache, "make_model", lambda *a, **k: pytest.fail("a cached history needs no model"))
    assert ersm.training.cache.training_history(TINY) == first and len(reads) == 1
    assert len(first) == TINY.epochs and {"cross_entropy", "val_accuracy"} <= set(first[-1])
