"""The CUDA path of training (issue 32): AMP in training, evaluation on the training device, a
GPU-trained model served from the cache only where GPU results are expected, and the GPU check's
own training unit (``ersm.portability.gpu_check.train_unit``) scoring the validation split, never the test split.

Skipped without CUDA; ``make gpu-check`` (ersm/portability/gpu_check.py) runs every test so marked and
requires each to pass. Tiny configs, a few seconds on a GPU."""
from __future__ import annotations

import json

import pytest
import torch

import ersm
import ersm.data.digits
import ersm.data.splits as splits
import ersm.training.cache
from ersm.portability import gpu_check
from ersm.training.config import TrainConfig
from ersm.training.engine import fit
from ersm.paths import cache_dir
from ersm.training.cache import get_model, is_cached
from helpers.sealed import seal_test_split

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TINY = TrainConfig(model="paper", n_train=96, n_val=32, n_test=32, epochs=1, batch_size=32, width=8, device="auto")


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """A fresh model cache per test (``ersm.paths`` reads ERSM_HOME at call time)."""
    monkeypatch.setenv("ERSM_HOME", str(tmp_path))
    return tmp_path


def tiny_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 48, 48, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def test_training_runs_in_bfloat16_and_evaluation_on_the_training_device():
    torch.manual_seed(0)
    model = ersm.build_model("small_cnn", width=8, energy_mask=dict(proj_dim=8, variant="paper"))
    calls = []  # (training mode, input device type, logits dtype) of every forward
    model.register_forward_hook(lambda module, inputs, output: calls.append((module.training, inputs[0].device.type,
                                                                             output.dtype)))
    fitted = fit(model, tiny_data(64, 1), epochs=1, beta=1.0, batch_size=32, device="cuda", validation=tiny_data(32, 2))
    training = [call for call in calls if call[0]]
    evaluation = [call for call in calls if not call[0]]
    assert len(training) == 2 and evaluation, calls
    assert all(device == "cuda" and dtype == torch.bfloat16 for _, device, dtype in training), training
    assert all(device == "cuda" for _, device, _ in evaluation), evaluation
    assert all(parameter.device.type == "cuda" for parameter in fitted.model.parameters())
    assert 0.0 <= fitted.history[-1]["val_accuracy"] <= 1.0


def test_a_gpu_trained_model_is_served_only_where_gpu_results_are_expected(monkeypatch):
    model = get_model(TINY, progress=False)
    assert next(model.parameters()).device.type == "cuda"
    gpu_key = TINY.digest()
    assert gpu_key == TINY.digest(machine=("cuda", None)) != TINY.digest(machine=("cpu", "portable"))
    assert (cache_dir() / gpu_key / "checkpoint.json").exists() and is_cached(TINY)
    sessions = [json.loads(line) for line in (cache_dir() / gpu_key / "sessions.jsonl").read_text().splitlines()]
    assert sessions[0]["device"] == torch.cuda.get_device_name(), sessions
    assert TINY.replace(device="cuda").digest() == gpu_key, "auto and cuda resolve to one device, so to one entry"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same cache seen from a CPU-only machine
    assert TINY.digest() != gpu_key and not is_cached(TINY), "a GPU-trained model must not be served on the CPU"


def test_the_gpu_checks_training_unit_scores_the_validation_split_never_the_test_split(tmp_path, monkeypatch):
    refused = seal_test_split(monkeypatch)
    config = TINY.replace(device="cuda")
    result = gpu_check.train_unit({"config": config.to_dict(), "run_dir": str(tmp_path / "run")})
    assert refused == [], refused
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert result["validation_accuracy"] == 100 * history[-1]["val_accuracy"] and "test_accuracy" not in history[-1]
    images, labels, _ = ersm.data.load_split(config, "validation")
    assert result["validation_split"] == gpu_check.split_fingerprint(images, labels)
    assert result["device"] == torch.cuda.get_device_name() and result["peak_memory_mib"] > 0
    with pytest.raises(AssertionError, match="asked for the test split"):  # the guard is live
        ersm.data.load_split(config, "test")
    splits._digits.cache_clear()
