"""Per-image arrays beside the results JSON (ersm/study/results.py, ersm/experiments/per_image.py)."""
import json

import numpy as np
import pytest

from ersm.study import results
from ersm.experiments import occlusion, per_image
from ersm.paths import repo_root


def test_save_writes_the_arrays_beside_the_json_and_load_reads_them(tmp_path, monkeypatch):
    monkeypatch.setenv("ERSM_HOME", str(tmp_path))
    run = results.Run("99_test", "ci", {"DEVICE": "cpu"})
    arrays = per_image.accuracy_arrays({"dense": np.array([[True, False], [True, True]])})
    run.save({"claims": []}, arrays=arrays)
    saved = next(tmp_path.rglob("99_test.json"))
    loaded = results.load_arrays(saved)
    assert list(loaded) == ["correct|dense"]
    np.testing.assert_array_equal(loaded["correct|dense"], arrays["correct|dense"])


def test_a_results_file_without_arrays_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "03_occlusion_robustness.json"
    path.write_text("{}")
    with pytest.raises(FileNotFoundError, match="03_occlusion_robustness.npz"):
        results.load_arrays(path)


@pytest.mark.parametrize("arrays, message", [({}, "non-empty dict"), ({"": np.zeros(2)}, "non-empty strings"),
                                             ({"a": [1, 2]}, r"arrays\['a'\] must be")])
def test_bad_arrays_are_refused_before_anything_is_written(arrays, message, tmp_path, monkeypatch):
    monkeypatch.setenv("ERSM_HOME", str(tmp_path))
    with pytest.raises(ValueError, match=message):
        results.Run("99_test", "ci", {}).save({"claims": []}, arrays=arrays)
    assert not list(tmp_path.rglob("99_test.*"))


def test_a_key_part_may_not_hold_the_separator():
    with pytest.raises(ValueError, match="contains '\\|'"):
        results.array_key("correct", "a|b")


def test_occlusion_correctness_round_trips_through_the_archive_layout():
    correct = {("dense", 0, "square", "zero"): np.ones((3, 4), dtype=bool), ("ERSM paper", 1, "grid", "texture"): np.zeros((3, 4), dtype=bool)}
    assert per_image.occlusion_correct(per_image.occlusion_arrays(correct)).keys() == correct.keys()


def test_the_committed_ci_occlusion_interval_recomputes_from_its_per_image_arrays():
    """A third party's check: the verdict row of claim 03 from the archive alone, no model."""
    path = repo_root() / "results" / "ci" / "03_occlusion_robustness.json"
    record = json.loads(path.read_text())
    correct = per_image.occlusion_correct(results.load_arrays(path))
    stored = record["claims"][0]
    treatment, baseline = stored["claim"].split("(", 1)[1].rstrip(")").split(" vs ")
    fractions = record["parameters"]["FRACTIONS"]
    chance = occlusion.chance_level(record["parameters"]["DATASET"])
    recomputed = occlusion.occlusion_claim(correct, fractions, treatment, baseline, chance=chance)
    for field in ("baseline", "ersm", "difference", "lo", "hi"):
        assert getattr(recomputed, field) == pytest.approx(stored[field], abs=1e-9), field
