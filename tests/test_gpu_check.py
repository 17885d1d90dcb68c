"""The prepared GPU check (ersm/portability/gpu_check.py, issue 32), on the CPU: the dry run, the no-GPU line, the
argument checks, the committed CPU models and their validation accuracies, the validation split's
fingerprint, the accuracy comparison (against the mean over seeds), the scoring that never reads the
test split, the budget's kill, the estimates and the README paragraph rendered from a synthetic
check.json. The check itself needs a GPU (``make gpu-check``)."""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

import pytest
import torch

import ersm.training.config
import ersm.data.digits
import ersm.data.splits as splits
import ersm.training.cache
from ersm.portability import gpu_check
from ersm.cli import main
from ersm.training.config import TrainConfig
from helpers.sealed import seal_test_split

KNOWN_CUDA_TESTS = ("tests/test_layer.py::test_cuda_and_amp_match_cpu", "tests/test_contract.py::test_no_host_sync_on_cuda",
                    "tests/test_cuda_path.py::test_training_runs_in_bfloat16_and_evaluation_on_the_training_device",
                    "tests/test_cuda_path.py::test_a_gpu_trained_model_is_served_only_where_gpu_results_are_expected")


# --- the dry run, the no-GPU path, the arguments ----------------------------------------------------------

def test_dry_run_lists_every_step_with_its_time_within_8_minutes(capsys):
    assert main(["gpu-check", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for step in gpu_check.STEPS:
        assert f"{step.part}. {step.name}" in out and f"{step.expected_seconds:.0f} s  {step.runs}" in out
    assert {step.part for step in gpu_check.STEPS} == {1, 2, 3, 4, 5}, "every part of issue 32 has a step"
    assert [step.name for step in gpu_check.STEPS if step.part == 3] == [f"warm throughput, {n} job{'s' * (n > 1)}"
                                                                         for n in (1, 4, 16)]
    total = gpu_check.expected_total_seconds()
    assert total <= 480 and f"total {total:.0f} s" in out
    assert all(test in out for test in KNOWN_CUDA_TESTS)
    assert "models/full/" in out and "confirm profile: does not exist yet" in out
    assert "validation accuracy within 2 seed SDs of the mean of the CPU models of the same config" in out
    assert "test accuracy" not in out and "over 10 seeds (seeds 0-9): passes with" in out
    assert f"validation split: labels sha256 {gpu_check.REFERENCE_VALIDATION_SPLIT['labels_sha256']}" in out


def test_without_a_gpu_one_line_and_exit_0_writing_nothing(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("ERSM_HOME", str(tmp_path))
    assert main(["gpu-check"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 1 and "no CUDA GPU" in captured.out and captured.err == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "481", "eight", ""])
def test_a_bad_budget_is_refused_by_name_before_any_work(value, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "run_check", lambda budget: pytest.fail("the check ran"))
    monkeypatch.setattr(gpu_check, "dry_run_text", lambda budget: pytest.fail("the dry run ran"))
    assert main(["gpu-check", "--budget-seconds", value]) == 2
    assert main(["gpu-check", "--dry-run", "--budget-seconds", value]) == 2
    assert f"--budget-seconds={value!r}" in capsys.readouterr().err


def test_a_budget_in_range_is_taken_and_dry_run_with_readme_refused(capsys):
    assert gpu_check.parse_budget("300") == 300.0 and gpu_check.parse_budget(480) == 480.0
    assert main(["gpu-check", "--dry-run", "--readme"]) == 2
    assert "--dry-run and --readme" in capsys.readouterr().err


# --- inputs -------------------------------------------------------------------------------------------------

def test_cuda_test_ids_finds_decorated_and_module_marked_tests(tmp_path):
    assert set(KNOWN_CUDA_TESTS) <= set(gpu_check.cuda_test_ids())
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_a.py").write_text("import pytest, torch\n\n@pytest.mark.skipif(not torch.cuda.is_available(), "
                                     "reason='x')\ndef test_gpu():\n    pass\n\ndef test_cpu():\n    pass\n")
    (tests / "test_b.py").write_text("import pytest, torch\npytestmark = pytest.mark.skipif(not torch.cuda.is_available(),"
                                     " reason='x')\n\ndef test_one():\n    pass\n")
    assert gpu_check.cuda_test_ids(tests) == ["tests/test_a.py::test_gpu", "tests/test_b.py::test_one"]
    with pytest.raises(FileNotFoundError, match="tests_dir="):
        gpu_check.cuda_test_ids(tmp_path / "missing")


def test_reference_models_are_the_committed_full_size_models_of_one_config_over_seeds_0_to_9():
    references = gpu_check.reference_models()
    assert [(r.family, r.config.model, r.config.seed) for r in references] == [("dense", "dense", 0), ("ERSM paper", "paper", 0)]
    trained_on = json.loads((gpu_check.repo_root() / "results" / "full" / "01_training.json").read_text())["trained_on"]
    for reference in references:
        assert (reference.config.n_train, reference.config.epochs, reference.config.width) == (10000, 15, 32)
        assert reference.seeds == list(range(10)) and len(reference.seed_accuracies) == 10
        assert (reference.folder / "checkpoint.json").exists()
        # read again by another road: each seed's folder from trained_on, the last line of its metrics.jsonl
        for seed, accuracy in zip(reference.seeds, reference.seed_accuracies):
            row, = [row for row in trained_on if row["model"] == reference.family and row["seed"] == seed]
            folder = gpu_check.repo_root() / "models" / "full" / row["config"]
            config = json.loads((folder / "config.json").read_text())
            assert config == {**reference.config.to_dict(), "seed": seed}, "the same config, another seed"
            last = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
            assert last["epoch"] == 15 and accuracy == pytest.approx(100 * last["val_accuracy"], abs=1e-9)
        assert reference.cpu_accuracy == reference.seed_accuracies[0]
        assert 85 < statistics.fmean(reference.seed_accuracies) < 95 and 0.1 < statistics.stdev(reference.seed_accuracies) < 2


def test_the_reference_validation_split_is_the_one_the_cpu_models_were_scored_on():
    """Recomputes REFERENCE_VALIDATION_SPLIT as its comment says, on this CPU, from the committed data."""
    from ersm.data import load_split

    splits._digits.cache_clear()  # drawn afresh, not an earlier test's copy
    images, labels, _ = load_split(gpu_check.reference_models()[0].config, "validation")
    fingerprint = gpu_check.split_fingerprint(images, labels)
    assert len(labels) == 1000 and fingerprint["labels_sha256"] == gpu_check.REFERENCE_VALIDATION_SPLIT["labels_sha256"]
    assert fingerprint["pixel_mean"] == pytest.approx(gpu_check.REFERENCE_VALIDATION_SPLIT["pixel_mean"], rel=0, abs=1e-12)
    assert gpu_check.same_split(fingerprint)
    assert not gpu_check.same_split({**fingerprint, "pixel_mean": fingerprint["pixel_mean"] + 1e-6})
    assert not gpu_check.same_split({**fingerprint, "labels_sha256": "0" * 16})
    assert load_split(gpu_check.reference_models()[1].config, "validation")[1].equal(labels), "both families share the split"


def test_reference_models_name_the_file_and_the_missing_field(tmp_path):
    results = tmp_path / "results" / "full" / "01_training.json"
    results.parent.mkdir(parents=True)
    results.write_text(json.dumps({"accuracy": []}))
    with pytest.raises(ValueError, match=f"{results}.*'trained_on'"):
        gpu_check.reference_models(tmp_path)
    for seeds in ([1], [1, 2], [0, 0, 1]):  # one seed only; no seed 0; seed 0 twice
        rows = [{"model": "dense", "seed": seed, "config": "x"} for seed in seeds]
        results.write_text(json.dumps({"accuracy": [], "trained_on": rows}))
        with pytest.raises(ValueError, match=r"one trained_on row of 'dense' per seed, .* seed 0 among them; found seeds "
                                             + re.escape(str(seeds))):
            gpu_check.reference_models(tmp_path)


def committed_copy(root: Path) -> Path:
    """A repository root holding copies of the committed dense and ERSM paper models of seeds 0 and 1 and a
    results file whose trained_on names them; returns the results file."""
    source = json.loads((gpu_check.repo_root() / "results" / "full" / "01_training.json").read_text())["trained_on"]
    rows = [row for row in source if row["model"] in ("dense", "ERSM paper") and row["seed"] in (0, 1)]
    for row in rows:
        shutil.copytree(gpu_check.repo_root() / "models" / "full" / row["config"], root / "models" / "full" / row["config"])
    results = root / "results" / "full" / "01_training.json"
    results.parent.mkdir(parents=True)
    results.write_text(json.dumps({"trained_on": rows}))
    return results


def test_reference_models_refuse_another_config_and_a_corrupt_checkpoint_which_they_leave_in_place(tmp_path):
    results = committed_copy(tmp_path)
    references = gpu_check.reference_models(tmp_path)
    assert [(r.family, r.seeds) for r in references] == [("dense", [0, 1]), ("ERSM paper", [0, 1])]
    rows = json.loads(results.read_text())["trained_on"]
    dense_1 = tmp_path / "models" / "full" / next(r["config"] for r in rows if r["model"] == "dense" and r["seed"] == 1)
    config = json.loads((dense_1 / "config.json").read_text())
    (dense_1 / "config.json").write_text(json.dumps({**config, "lr": config["lr"] * 2}))
    with pytest.raises(ValueError, match=r"'dense' seed 1\) is not the config of seed 0 .*\['lr'\] differ"):
        gpu_check.reference_models(tmp_path)
    (dense_1 / "config.json").write_text(json.dumps(config))
    payload = dense_1 / "checkpoint.pt"
    data = bytearray(payload.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte altered: the SHA-256 no longer matches the manifest
    payload.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="corrupt checkpoint"), \
            pytest.raises(ValueError, match=f"{dense_1} holds no verified checkpoint"):
        gpu_check.reference_models(tmp_path)
    assert payload.exists() and (dense_1 / "checkpoint.json").exists(), "a committed model is never discarded"


# --- the accuracy comparison --------------------------------------------------------------------------------

def test_cuda_accuracy_within_two_seed_sds_of_the_mean_of_the_cpu_models():
    seeds = [90.0, 91.0, 92.0]  # mean 91.0, SD 1.0, so the tolerance is 2.0 points around 91.0
    inside = gpu_check.compare_accuracy(92.9, 90.0, seeds)
    assert inside["within"] and inside["split"] == "validation"
    assert inside["cpu_seed_sd"] == pytest.approx(1.0) and inside["tolerance"] == pytest.approx(2.0)
    assert inside["cpu_seed_mean"] == pytest.approx(91.0) and inside["difference"] == pytest.approx(1.9)
    assert (inside["cpu_seeds"], inside["cpu_accuracy"], inside["cpu_seed"]) == (3, 90.0, 0)
    assert inside["difference_from_cpu_seed"] == pytest.approx(2.9), "outside 2 SDs of seed 0 alone, within of the mean"
    assert "within 2 seed SDs of the mean of the CPU models of the same config over their 3 seeds" in inside["rule"]
    assert not gpu_check.compare_accuracy(93.1, 90.0, seeds)["within"]
    assert not gpu_check.compare_accuracy(88.9, 92.0, seeds)["within"], "too low is as wrong as too high"
    assert gpu_check.compare_accuracy(89.0, 92.0, seeds)["within"], "exactly 2 SDs is within"
    assert not gpu_check.compare_accuracy(92.0, 91.0, seeds, sds=0.5)["within"]


@pytest.mark.parametrize("kwargs, argument", [
    (dict(cuda_accuracy=101.0), "cuda_accuracy=101.0"), (dict(cpu_accuracy=True), "cpu_accuracy=True"),
    (dict(seed_accuracies=[91.0]), "seed_accuracies=[91.0]"), (dict(seed_accuracies=[0.9, 101.0]), "seed_accuracies="),
    (dict(sds=0), "sds=0"),
])
def test_compare_accuracy_refuses_bad_arguments_by_name(kwargs, argument):
    arguments = dict(cuda_accuracy=91.0, cpu_accuracy=91.0, seed_accuracies=[90.0, 92.0], **{})
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=argument.replace("[", r"\[").replace("]", r"\]")):
        gpu_check.compare_accuracy(**arguments)


# --- the budget ----------------------------------------------------------------------------------------------

def test_a_child_past_the_budget_is_killed_with_the_workers_it_started(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "RESERVE_SECONDS", 0.0)
    monkeypatch.setattr(gpu_check, "MIN_START_SECONDS", 0.0)
    grandchild = tmp_path / "grandchild.pid"
    script = ("import subprocess, sys, time; worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              f"open({str(grandchild)!r}, 'w').write(str(worker.pid)); time.sleep(60)")
    started = time.monotonic()
    outcome = gpu_check.run_child([sys.executable, "-c", script], gpu_check.Deadline(3.0), tmp_path / "log")
    assert outcome.status == "stopped at the budget" and outcome.result is None
    assert time.monotonic() - started < 15
    assert not running(int(grandchild.read_text())), "the child's own worker outlived the budget"


def running(pid: int) -> bool:
    """Alive and not a zombie (a container's init may not reap a killed orphan at once)."""
    for _ in range(50):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        if state in ("Z", "X"):
            return False
        time.sleep(0.1)
    return True


def test_a_unit_is_not_started_without_enough_budget_and_a_failure_is_reported(tmp_path, monkeypatch):
    deadline = gpu_check.Deadline(gpu_check.RESERVE_SECONDS + gpu_check.MIN_START_SECONDS - 1)
    skipped = gpu_check.run_child([sys.executable, "-c", "pass"], deadline, tmp_path / "log")
    assert skipped.status == "skipped" and "not started" in skipped.log_tail
    monkeypatch.setattr(gpu_check, "MIN_START_SECONDS", 0.0)
    failed = gpu_check.run_child([sys.executable, "-c", "raise SystemExit('broken on purpose')"],
                                 gpu_check.Deadline(60.0), tmp_path / "log")
    assert failed.status == "failed" and "broken on purpose" in failed.log_tail


def model_result(accuracy: float, split: dict | None = None) -> dict:
    return {"validation_accuracy": accuracy, "validation_split": split or dict(gpu_check.REFERENCE_VALIDATION_SPLIT),
            "train_seconds": 30.0, "images_per_second": 5000.0, "config": "0" * 16, "device": "a GPU",
            "epoch_seconds": 29.0, "peak_memory_mib": 300.0}


@pytest.mark.parametrize("result, status, why", [
    (model_result(93.5), "passed", None),  # 2.5 points from seed 0's 91.0, but 1.5 from the mean 92.0 (SD 1.0)
    (model_result(94.1), "failed", "more than 2 seed SDs"),
    (model_result(89.9), "failed", "from the mean of the CPU models of the same config, 92.00% over 3 seeds"),
    (model_result(92.0, {"labels_sha256": "f" * 16, "pixel_mean": 0.3}), "failed", "the validation split here"),
])
def test_a_model_step_passes_only_with_the_same_validation_split_and_an_accuracy_within_2_sds_of_the_mean(
        result, status, why, tmp_path, monkeypatch):
    reference = gpu_check.reference_models()[0]._replace(cpu_accuracy=91.0, seed_accuracies=[91.0, 92.0, 93.0])
    monkeypatch.setattr(gpu_check, "run_child", lambda *args, **kwargs: gpu_check.Outcome("passed", 40.0, result, ""))
    step = gpu_check.model_step(reference, gpu_check.Deadline(100.0), tmp_path)
    assert step["status"] == status and step["seconds"] == 40.0 and step["train_seconds"] == 30.0
    assert (why is None and "why" not in step) or why in step["why"]
    comparison = step["comparison"]
    assert (comparison["cpu_seed_mean"], comparison["cpu_seed_sd"], comparison["cpu_seeds"], comparison["cpu_accuracy"]) \
        == (92.0, 1.0, 3, 91.0)
    assert step["cpu_model_seeds"] == list(range(10)) and "test_accuracy" not in step
    spec = json.loads((tmp_path / "dense.spec.json").read_text())
    assert spec["config"] == {**reference.config.to_dict(), "device": "cuda"}


# --- the scoring of a model trained in step 2: validation only ----------------------------------------------

TINY = TrainConfig(model="paper", n_train=64, n_val=32, n_test=32, epochs=1, batch_size=32, width=8, device="cpu")


def guard_is_live(refused: list[str]) -> None:
    for road in (lambda: ersm.data.load_split(TINY, "test"), lambda: ersm.data.load_split(TINY, "test"),
                 lambda: splits._digits(*splits._digit_args(TINY, "test", "random"))):
        with pytest.raises(AssertionError, match="asked for the test split"):
            road()
    assert len(refused) == 3
    refused.clear()


def test_a_trained_model_is_scored_on_the_validation_split_never_the_test_split(tmp_path, monkeypatch):
    monkeypatch.setenv("ERSM_HOME", str(tmp_path))
    refused = seal_test_split(monkeypatch)
    run_dir = tmp_path / "run"
    ersm.training.cache.train(TINY, run_dir=run_dir, progress=False)
    scores = gpu_check.score_validation(TINY, run_dir)
    assert refused == [], refused
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert scores["validation_accuracy"] == pytest.approx(100 * history[-1]["val_accuracy"])
    assert scores["epoch_seconds"] == pytest.approx(sum(record["seconds"] for record in history))
    images, labels, _ = ersm.data.load_split(TINY, "validation")
    assert scores["validation_split"] == gpu_check.split_fingerprint(images, labels) and len(labels) == TINY.n_val
    guard_is_live(refused)


def test_train_unit_reads_the_validation_split_never_the_test_split(tmp_path, monkeypatch):
    """``train_unit`` whole, on the CPU: its CUDA calls are stubbed and ``ersm.training.cache.train`` trains the
    tiny config on the CPU; the test split is sealed throughout."""
    monkeypatch.setenv("ERSM_HOME", str(tmp_path))
    refused = seal_test_split(monkeypatch)
    train, resolve = ersm.training.cache.train, ersm.training.config.resolve_device
    monkeypatch.setattr(ersm.training.config, "resolve_device",  # config.device="cuda" resolves to CUDA, torch left as it is
                        lambda name: torch.device("cuda") if name == "cuda" else resolve(name))
    for name, value in (("reset_peak_memory_stats", None), ("synchronize", None), ("get_device_name", "a GPU"),
                        ("max_memory_allocated", 2**20)):
        monkeypatch.setattr(torch.cuda, name, lambda *args, value=value, **kwargs: value)
    monkeypatch.setattr(ersm.training.cache, "train", lambda config, **kwargs: train(config.replace(device="cpu"), **kwargs))
    result = gpu_check.train_unit({"config": TINY.replace(device="cuda").to_dict(), "run_dir": str(tmp_path / "run")})
    assert refused == [], refused
    assert set(result) == {"config", "device", "train_seconds", "images_per_second", "validation_accuracy",
                           "validation_split", "epoch_seconds", "peak_memory_mib"}
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert result["validation_accuracy"] == pytest.approx(100 * history[-1]["val_accuracy"])
    images, labels, _ = ersm.data.load_split(TINY, "validation")
    assert result["validation_split"] == gpu_check.split_fingerprint(images, labels)
    guard_is_live(refused)


@pytest.mark.parametrize("counts, code, status", [((4, 0, 0, 0), 0, "passed"), ((4, 0, 0, 4), 0, "failed"),
                                                  ((4, 1, 0, 0), 1, "failed"), ((3, 0, 0, 0), 0, "failed")])
def test_the_cuda_tests_pass_only_when_every_one_ran_and_passed(counts, code, status, tmp_path, monkeypatch):
    def fake_pytest(argv, deadline, log, result=None, env=None):
        report = next(Path(arg.split("=", 1)[1]) for arg in argv if arg.startswith("--junitxml="))
        tests, failures, errors, skipped = counts
        report.write_text(f'<testsuites><testsuite tests="{tests}" failures="{failures}" errors="{errors}" '
                          f'skipped="{skipped}"/></testsuites>')
        return gpu_check.Outcome("passed" if code == 0 else "failed", 30.0, None, "")

    monkeypatch.setattr(gpu_check, "cuda_test_ids", lambda: list(KNOWN_CUDA_TESTS))
    monkeypatch.setattr(gpu_check, "run_child", fake_pytest)
    assert gpu_check.cuda_tests_step(gpu_check.Deadline(100.0), tmp_path)["status"] == status


def test_junit_counts(tmp_path):
    report = tmp_path / "report.xml"
    report.write_text('<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="2" tests="4">'
                      '</testsuite></testsuites>')
    assert gpu_check.junit_counts(report) == {"tests": 4, "failures": 1, "errors": 0, "skipped": 2}


# --- estimates and the README paragraph -------------------------------------------------------------------

def throughput_row(jobs: int, status: str = "passed", steady: float = 100.0, wall: float = 50.0) -> dict:
    return {"part": 3, "name": gpu_check.throughput_step_name(jobs), "status": status, "seconds": 60.0, "jobs": jobs,
            "models_per_minute": wall / 15, "model_epochs_per_minute": wall, "steady_models_per_minute": steady / 15,
            "steady_model_epochs_per_minute": steady, "device_memory_used_mib": 3 * 1024.0}


def test_estimates_use_the_best_finished_rate_and_say_when_a_profile_does_not_exist(tmp_path):
    plan = {"profile": "full", "exists": True, "models": 306, "model_epochs": 5046, "counted_in": "models/full"}
    rows = [throughput_row(1, steady=100.0, wall=60.0), throughput_row(4, steady=300.0, wall=200.0),
            throughput_row(16, status="stopped at the budget", steady=900.0, wall=900.0)]
    estimated = gpu_check.estimate(plan, rows)
    assert estimated["minutes"] == pytest.approx(5046 / 300.0) and estimated["at_jobs"] == 4
    assert estimated["minutes_wall_clock"] == pytest.approx(5046 / 200.0)
    assert gpu_check.estimate(plan, [throughput_row(1, status="failed")])["minutes"] is None
    assert gpu_check.plan_size("confirm") == {"profile": "confirm", "exists": False}
    full = gpu_check.plan_size("full")
    assert full["models"] >= 300 and full["model_epochs"] >= 15 * full["models"]
    assert gpu_check.plan_size("ci", root=tmp_path)["models"] is None


def synthetic_check() -> dict:
    model = {"part": 2, "name": "full-size dense, seed 0", "status": "passed", "seconds": 38.0, "train_seconds": 31.4,
             "family": "dense",
             "images_per_second": 5123.0, "comparison": gpu_check.compare_accuracy(92.6, 93.1, [93.1, 92.9, 92.0, 90.8])}
    # mean 92.2, SD 1.05 over 4 seeds
    return {"budget_seconds": 480.0, "wall_seconds": 402.3, "passed": True,
            "provenance": {"commit": "0123456789abcdef", "utc": "2027-01-05T10:00:00+00:00", "device": "cuda: NVIDIA H200",
                           "cuda": "13.0", "versions": {"torch": "2.11.0"}},
            "steps": [{"part": 1, "name": "cuda tests", "status": "passed", "seconds": 41.0, "tests": list(KNOWN_CUDA_TESTS),
                       "counts": {"tests": 4, "failures": 0, "errors": 0, "skipped": 0}},
                      model, throughput_row(1), throughput_row(16, steady=1500.0, wall=900.0),
                      {"part": 4, "name": "sparse-execution timings", "status": "not available yet", "seconds": 0.0}],
            "estimates": {"full": gpu_check.estimate({"profile": "full", "exists": True, "models": 306, "model_epochs": 5046,
                                                      "counted_in": "models/full"}, [throughput_row(16, steady=1500.0, wall=900.0)]),
                          "confirm": {"profile": "confirm", "exists": False}}}


def test_readme_paragraph_is_rendered_from_check_json(tmp_path):
    source = tmp_path / "check.json"
    source.write_text(json.dumps(synthetic_check()))
    text = gpu_check.readme_paragraph(gpu_check.load_check(source), source=source)
    for expected in ("2027-01-05", "`0123456`", "NVIDIA H200", "torch 2.11.0", "CUDA 13.0", "passed, 402 s of the 480 s budget",
                     "CUDA tests: 4 of 4 passed", "92.6% validation accuracy against a mean of 92.2% for the CPU models of "
                     "the same config (seed SD 1.05 points over 4 seeds; seed 0: 93.1%), within 2 seed SDs of that mean "
                     "(the pass rule: validation accuracy within 2 seed SDs of the mean of the CPU models of the same "
                     "config over their seeds)", "31 s per model",
                     "5,123 training images/s", "`ersm warm --jobs 16`: 60.0 full-size models/min by the wall clock, 100.0 in "
                     "the steady state, 3.0 GiB", "306 trainings (5,046 model-epochs", "about 3 min on one GPU (16 jobs",
                     "Sparse-execution timings: not available yet.", "The `confirm` profile does not exist yet."):
        assert expected in text, expected
    assert text.endswith("\n") and "\n" not in text[:-1]


def test_readme_paragraph_says_what_did_not_pass():
    check = synthetic_check()
    check["passed"] = False
    check["steps"][1]["comparison"] = gpu_check.compare_accuracy(89.0, 93.1, [93.1, 92.9, 92.0, 90.8])
    check["steps"][3] = {**check["steps"][3], "status": "stopped at the budget"}
    text = gpu_check.readme_paragraph(check)
    assert "not passed" in text and "outside 2 seed SDs of that mean" in text and "test accuracy" not in text
    assert "Warm throughput, 16 jobs: stopped at the budget after 60 s." in text


@pytest.mark.parametrize("remove, named", [(("wall_seconds",), "'wall_seconds'"), (("provenance", "cuda"), "'provenance.cuda'"),
                                           (("steps", 2, "jobs"), "'jobs'")])
def test_a_check_json_without_a_field_is_refused_naming_the_file_and_field(remove, named, tmp_path):
    check = copy.deepcopy(synthetic_check())
    holder = check
    for key in remove[:-1]:
        holder = holder[key]
    del holder[remove[-1]]
    source = tmp_path / "check.json"
    source.write_text(json.dumps(check))
    with pytest.raises(ValueError) as error:
        gpu_check.readme_paragraph(gpu_check.load_check(source), source=source)
    assert str(source) in str(error.value) and named in str(error.value)


def test_update_readme_writes_between_the_markers_and_refuses_a_readme_without_them(tmp_path):
    source, readme = tmp_path / "check.json", tmp_path / "README.md"
    source.write_text(json.dumps(synthetic_check()))
    readme.write_text("# Title\n\n<!-- gpu-check -->\nold\n<!-- /gpu-check -->\n\nafter\n")
    gpu_check.update_readme(source, readme)
    text = readme.read_text()
    assert text.startswith("# Title\n\n<!-- gpu-check -->\n**GPU check**") and text.endswith("<!-- /gpu-check -->\n\nafter\n")
    assert "old" not in text
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="lacks the markers <!-- gpu-check -->"):
        gpu_check.update_readme(source, readme)


def test_update_readme_without_a_check_json_says_no_gpu_check_has_run_and_writes_nothing(tmp_path, monkeypatch, capsys):
    readme = tmp_path / "README.md"
    before = "# Title\n\n<!-- gpu-check -->\nold\n<!-- /gpu-check -->\n"
    readme.write_text(before)
    with pytest.raises(FileNotFoundError, match="missing.json does not exist: `make gpu-check` has not run on a GPU yet"):
        gpu_check.update_readme(tmp_path / "missing.json", readme)
    assert readme.read_text() == before and sorted(path.name for path in tmp_path.iterdir()) == ["README.md"]
    monkeypatch.setenv("ERSM_HOME", str(tmp_path))  # the repository root: results/gpu/check.json and README.md
    assert main(["gpu-check", "--readme"]) == 2
    error = capsys.readouterr().err
    assert f"{tmp_path / 'results' / 'gpu' / 'check.json'} does not exist" in error and "has not run on a GPU yet" in error
    assert readme.read_text() == before and sorted(path.name for path in tmp_path.iterdir()) == ["README.md"]


def test_the_record_is_written_atomically_as_strict_json(tmp_path, monkeypatch):
    monkeypatch.setenv("ERSM_HOME", str(tmp_path))
    path = gpu_check.write_record({"value": float("nan"), "steps": []})
    assert path == tmp_path / "results" / "gpu" / "check.json"
    assert json.loads(path.read_text()) == {"value": None, "steps": []}
    assert not [name for name in os.listdir(path.parent) if name.endswith(".tmp")]


# --- the whole check, its child processes replaced by their results --------------------------------------

def fake_children(argv, deadline, log, result=None, env=None):
    """``run_child`` with each child's result made up: pytest passes, models reach the CPU models' mean."""
    if "pytest" in argv:
        report = next(Path(arg.split("=", 1)[1]) for arg in argv if arg.startswith("--junitxml="))
        report.write_text(f'<testsuite tests="{len(gpu_check.cuda_test_ids())}" failures="0" errors="0" skipped="0"/>')
        return gpu_check.Outcome("passed", 30.0, None, "")
    kind, spec = argv[argv.index("unit") + 1], json.loads(Path(argv[argv.index("unit") + 2]).read_text())
    if kind == "train":
        accuracy = {"dense": 90.3, "paper": 90.0}[spec["config"]["model"]]  # the CPU models' validation means
        return gpu_check.Outcome("passed", 40.0, model_result(accuracy), "")
    assert env["ERSM_CACHE"].startswith(str(Path(log).parent)), "throughput trains into a scratch cache"
    row = throughput_row(spec["jobs"], steady=100.0 * spec["jobs"], wall=50.0 * spec["jobs"])
    unit_result = {key: row[key] for key in row if key not in ("part", "name", "status", "seconds", "jobs")}
    return gpu_check.Outcome("passed", 60.0, unit_result, "")


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch):
    """A check whose GPU, provenance and children are made up; its record goes to ``tmp_path``."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check, "device_provenance", lambda: {"commit": "0" * 40, "utc": "2027-01-05T10:00:00+00:00",
                                                                 "device": "cuda: a GPU", "cuda": "13.0",
                                                                 "versions": {"torch": torch.__version__}})
    monkeypatch.setattr(gpu_check, "run_child", fake_children)
    monkeypatch.setattr(gpu_check, "check_path", lambda: tmp_path / "check.json")
    return tmp_path / "check.json"


def test_the_whole_check_writes_every_step_and_the_estimates(fake_gpu, capsys):
    assert gpu_check.run_check(480) == 0
    check = gpu_check.load_check(fake_gpu)
    assert [step["name"] for step in check["steps"]] == [step.name for step in gpu_check.STEPS]
    assert [step["status"] for step in check["steps"]] == ["passed"] * 6 + ["not available yet", "passed"]
    assert check["passed"] and check["estimates"]["confirm"] == {"profile": "confirm", "exists": False, "minutes": None}
    full = check["estimates"]["full"]
    assert full["at_jobs"] == 16 and full["minutes"] == pytest.approx(full["model_epochs"] / 1600.0)
    assert "PASSED: written" in capsys.readouterr().out
    assert "The `confirm` profile does not exist yet." in gpu_check.readme_paragraph(check, fake_gpu)


def test_a_check_stopped_by_an_error_keeps_what_ran(fake_gpu, monkeypatch):
    def broken(record, references, deadline):
        record["steps"].append({"name": "cuda tests", "status": "passed"})
        raise RuntimeError("a bug on purpose")

    monkeypatch.setattr(gpu_check, "run_steps", broken)
    with pytest.raises(RuntimeError, match="a bug on purpose"):
        gpu_check.run_check(480)
    check = gpu_check.load_check(fake_gpu)
    assert check["passed"] is False and check["error"] == "RuntimeError: a bug on purpose"
    assert check["steps"] == [{"name": "cuda tests", "status": "passed"}]
