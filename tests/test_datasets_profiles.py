"""The real-data profiles ``cifar10`` and ``pets``: parameters, capabilities, the not-applicable
paths, the notebook-editing script, and ``reproduce(profile="cifar10")`` end to end on tiny
CIFAR-10 fixture files (real on-disk format) under a temporary ERSM_HOME / ERSM_DATA.

The end-to-end runs keep the cifar10 profile's DATASET but swap the ResNet-18 for a width-4
SmallCNN to stay in the time budget (the CIFAR-stem ResNet-18 itself trains on the fixture in
tests/test_engine.py). ``ersm warm`` trains the profile's models, then all five notebooks run
through papermill and must train nothing more: 38 s on a quiet 2-core CPU (about 3x that
while another process trains).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ersm.data import capabilities, load_split
from ersm.experiments import accuracy, common, mask_quality, occlusion
from ersm.study.profiles import COMMON, PROFILE_NAMES, SPECIFIC, parameters, validate
from ersm.study.plan import warm
from ersm.study.reproduce import declared_parameters, reproduce
from helpers.fixtures import write_cifar, write_pet

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))


def test_profiles_are_ci_full_cifar10_pets_and_the_digit_profiles_are_unchanged():
    assert PROFILE_NAMES == ("ci", "full", "cifar10", "pets")
    for name in ("ci", "full"):
        assert COMMON[name]["DATASET"] == "cluttered_digits" and COMMON[name]["BACKBONE"] == "small_cnn"
    assert COMMON["cifar10"]["DATASET"] == "cifar10" and COMMON["cifar10"]["BACKBONE"] == "resnet18"
    assert COMMON["pets"]["DATASET"] == "oxford_pet" and COMMON["pets"]["BACKBONE"] in ("resnet18_imagenet", "resnet50_imagenet")
    assert COMMON["cifar10"]["DEVICE"] == COMMON["pets"]["DEVICE"] == "auto"
    assert COMMON["cifar10"]["N_TRAIN"] + COMMON["cifar10"]["N_VAL"] <= 50000 and COMMON["cifar10"]["N_TEST"] <= 10000
    assert COMMON["pets"]["N_TRAIN"] + COMMON["pets"]["N_VAL"] <= 3680 and COMMON["pets"]["N_TEST"] <= 3669
    assert all(set(entry) == set(PROFILE_NAMES) for entry in SPECIFIC.values())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_profile_validates_against_every_notebook_and_ci_is_the_default(path):
    declared = declared_parameters(path)
    assert declared["DATASET"] == "cluttered_digits" and declared["BACKBONE"] == "small_cnn"
    for profile in PROFILE_NAMES:
        given = parameters(path.stem, profile)
        validate(path.stem, given, declared)
        assert set(given) == set(declared), (profile, set(declared) ^ set(given))
    assert parameters(path.stem, "ci") == declared


def test_every_profile_builds_a_valid_base_config():
    for profile in PROFILE_NAMES:
        p = COMMON[profile]
        base = common.base_config(p["CANVAS"], p["N_TRAIN"], p["N_TEST"], p["EPOCHS"], dataset=p["DATASET"],
                                  backbone=p["BACKBONE"], n_val=p["N_VAL"], width=p["WIDTH"], device=p["DEVICE"])
        assert base.dataset == p["DATASET"] and base.backbone == p["BACKBONE"]
    digits = common.base_config(48, 10, 10, 1)
    assert digits.dataset == "cluttered_digits" and digits.cutout_size == 16
    assert common.base_config(48, 10, 10, 1, dataset="cifar10").cutout_size == 32 // 3
    with pytest.raises(ValueError, match=r"dataset='imagenet'"):
        common.base_config(48, 10, 10, 1, dataset="imagenet")
    with pytest.raises(ValueError, match=r"backbone='vgg'"):
        common.base_config(48, 10, 10, 1, backbone="vgg")


def test_capabilities():
    assert capabilities("cluttered_digits") == {"object_masks": True, "background_swap": True, "scene_metadata": True}
    assert capabilities("cifar10") == {"object_masks": False, "background_swap": False, "scene_metadata": False}
    assert capabilities("oxford_pet") == {"object_masks": True, "background_swap": False, "scene_metadata": False}
    with pytest.raises(ValueError, match=r"dataset='mnist'"):
        capabilities("mnist")


def test_not_applicable_entries_are_printed_and_carry_no_verdict(capsys):
    assert occlusion.not_applicable("cluttered_digits") == []
    cifar = occlusion.not_applicable("cifar10")
    assert [e["claim"] for e in cifar] == [occlusion.OBJECT_CLAIM, occlusion.BACKGROUND_CLAIM]
    assert [e["claim"] for e in occlusion.not_applicable("oxford_pet")] == [occlusion.BACKGROUND_CLAIM]
    assert all(e["status"] == "not applicable" and "verdict" not in e for e in cifar)
    out = capsys.readouterr().out
    assert "object-targeted occlusion: not applicable on cifar10" in out and "background reliance: not applicable on oxford_pet" in out
    assert occlusion.conditions_for("cluttered_digits") == occlusion.conditions_for("oxford_pet") == occlusion.CONDITIONS
    assert all(kind != "object" for kind, _ in occlusion.conditions_for("cifar10"))
    assert mask_quality.applicable("oxford_pet") == (True, [])
    ok, entries = mask_quality.applicable("cifar10")
    assert not ok and entries[0]["claim"] == "mask quality" and "mask quality: not applicable on cifar10" in capsys.readouterr().out


def test_mask_quality_refuses_a_dataset_without_object_masks_before_any_work():
    with pytest.raises(ValueError, match=r"dataset='cifar10' has no object masks"):
        mask_quality.check_dataset("cifar10")
    with pytest.raises(ValueError, match=r"dataset='cifar10'"):  # the maps are not even looked at
        mask_quality.localisation_scores(None, None, 1, dataset="cifar10")
    mask_quality.check_dataset("oxford_pet")


def test_pet_trimaps_serve_as_object_masks_for_occlusion_and_localisation(tmp_path, monkeypatch):
    monkeypatch.setenv("ERSM_DATA", str(tmp_path))
    write_pet(tmp_path, n_trainval=4, n_test=3)
    base = common.base_config(224, 2, 3, 1, dataset="oxford_pet", backbone="resnet18_imagenet", n_val=1, device="cpu")
    images, labels, masks = load_split(base, "test")
    assert images.shape == (3, 3, 224, 224) and masks.any() and not masks.all()
    occluded = occlusion.occlude(images, 0.5, kind="object", fill="zero", seed=0, masks=masks)
    hidden = (occluded != images).any(1, keepdim=True)
    assert (hidden & masks).sum() > 0
    maps = masks[:, 0, ::16, ::16].float()  # a perfect map at 14 x 14
    scores = mask_quality.localisation_scores(maps, masks, 15, dataset="oxford_pet")
    assert scores["pointing game"].tolist() == [1.0, 1.0, 1.0]


TINY = dict(SEEDS=[0, 1], EPOCHS=1, N_TRAIN=12, N_VAL=4, N_TEST=6, CANVAS=32, WIDTH=4, DEVICE="cpu", TUNING_TRIALS=1,
            BACKBONE="small_cnn")
TINY_SPECIFIC = {"01_training": dict(ACCURACY_SEEDS=[0, 1, 2]),  # one added seed: the plan must list it too
                 "02_emergent_sparsity": dict(SWEEP={"beta": [5.0]}, N_BOOT=200),
                 "03_occlusion_robustness": dict(FRACTIONS=[0.0, 0.5], RHOS=[0.9]),
                 "04_deletion_vs_magnitude": dict(STEPS=4, N_BOOT=200, N_INPUT=4, N_ROAD=4),
                 "05_mask_quality": dict(N_BOOT=200)}


def tiny_cifar10(stem: str, profile: str) -> dict:
    """The cifar10 profile at fixture size (a width-4 SmallCNN on the CIFAR-10 fixture)."""
    return {**parameters(stem, profile), **TINY, **TINY_SPECIFIC.get(stem, {})}


@pytest.fixture
def cifar_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ERSM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ERSM_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the kernel imports this checkout's ersm
    write_cifar(tmp_path / "data", per_batch=4, test=6)
    return tmp_path / "home"


def check_records(home: Path, stems: list[str]) -> dict:
    records = {path.stem: json.loads(path.read_text()) for path in (home / "results" / "cifar10").glob("0*.json")}
    assert sorted(records) == sorted(stems)
    for record in records.values():
        assert record["profile"] == "cifar10" and record["parameters"]["DATASET"] == "cifar10"
    assert records["05_mask_quality"]["claims"] == []
    assert [e["claim"] for e in records["05_mask_quality"]["not_applicable"]] == ["mask quality"]
    assert "mask quality: not applicable on cifar10" in (home / "runs" / "cifar10" / "05_mask_quality.ipynb").read_text()
    assert records["01_training"]["claims"]
    seeds_of = {}
    for row in records["01_training"]["accuracy"]:
        seeds_of.setdefault(row["model"], []).append(row["seed"])
    assert all(seeds_of[name] == ([0, 1, 2] if name in accuracy.COMPARED else [0, 1]) for name in common.ALL_MODELS), seeds_of
    if "03_occlusion_robustness" in records:
        assert ([e["claim"] for e in records["03_occlusion_robustness"]["not_applicable"]]
                == [occlusion.OBJECT_CLAIM, occlusion.BACKGROUND_CLAIM])
        assert all(row["kind"] != "object" for row in records["03_occlusion_robustness"]["curves"])
        assert records["03_occlusion_robustness"]["background"] == []
    if "04_deletion_vs_magnitude" in records:
        assert records["04_deletion_vs_magnitude"]["claims"]
    return records


def cache_state(home: Path) -> dict:
    """Cache entry -> its checkpoint manifest (the epoch and the checkpoint's hash)."""
    return {path.parent.name: path.read_text() for path in (home / "runs" / "cache").glob("*/checkpoint.json")}


def test_warm_then_reproduce_cifar10_runs_all_five_notebooks_training_nothing_more(cifar_home):
    """``warm`` trains every model of the profile; then every notebook runs through
    ``reproduce(profile="cifar10")`` by papermill and trains nothing (38 s on a quiet 2-core CPU)."""
    assert warm("cifar10", parameters_for=tiny_cifar10) > 0
    warmed = cache_state(cifar_home)
    claims = reproduce("cifar10", notebooks_dir=ROOT / "notebooks", parameters_for=tiny_cifar10)
    assert cache_state(cifar_home) == warmed, "a notebook trained a model that ersm.study.plan does not list"
    records = check_records(cifar_home, [p.stem for p in NOTEBOOKS])
    assert all(stem in claims.read_text() for stem in ("01_training", "03_occlusion_robustness", "04_deletion_vs_magnitude"))
    assert records["02_emergent_sparsity"]["claims"] and records["04_deletion_vs_magnitude"]["claims"]
