"""One setup call opens every claim notebook, and each claim module says what it trains (issue 33)."""
import json

import pytest

from ersm.experiments import accuracy, deletion, mask_quality, occlusion, sparsity
from ersm.experiments.common import CUTOUT, DENSE, PAPER
from ersm.paths import repo_root
from ersm.study import profiles
from ersm.study.setup import BASE_NAMES, base_of, setup

NOTEBOOKS = ("01_training", "02_emergent_sparsity", "03_occlusion_robustness", "04_deletion_vs_magnitude", "05_mask_quality")
CLAIM_MODULES = {"01_training": accuracy, "02_emergent_sparsity": sparsity, "03_occlusion_robustness": occlusion,
                 "04_deletion_vs_magnitude": deletion, "05_mask_quality": mask_quality}
SELECTED = {"dense": {"lr": 0.003, "weight_decay": 0.01}, "paper": {"lambda_unary": 0.5, "lambda_pair": 0.2, "beta": 2.0}}


def code_of(notebook: str) -> str:
    cells = json.loads((repo_root() / "notebooks" / f"{notebook}.ipynb").read_text())["cells"]
    return "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "code")


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_setup_reads_the_parameters_cell_once(notebook):
    namespace = {**profiles.parameters(notebook, "full"), "unrelated": 1}
    run, base, params = setup(notebook, namespace)
    assert params == profiles.parameters(notebook, "full")
    assert run.notebook == notebook and run.profile == "full"
    assert run.parameters == {k: v for k, v in params.items() if k != "PROFILE"}
    assert base == base_of(params) and base.n_train == 10000 and base.width == 32 and base.test_seed is None


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_every_notebook_opens_with_setup_and_trains_its_modules_configs(notebook):
    code = code_of(notebook)
    assert f'setup("{notebook}", globals())' in code
    assert f"{CLAIM_MODULES[notebook].__name__.rsplit('.', 1)[1]}.configs(base, params" in code
    for copied in ("Run(", "base_config(", "tuned_family("):  # the block setup replaced, and the helper configs replaced
        assert copied not in code, f"{notebook} still calls {copied}"


def test_a_missing_parameter_is_named_before_anything_is_built():
    namespace = profiles.parameters("01_training", "ci")
    del namespace["ACCURACY_SEEDS"]
    with pytest.raises(ValueError, match=r"01_training: the parameters cell lacks \['ACCURACY_SEEDS'\]"):
        setup("01_training", namespace)


def test_a_parameter_of_the_wrong_type_is_named():
    namespace = {**profiles.parameters("03_occlusion_robustness", "ci"), "RHOS": 0.9}
    with pytest.raises(ValueError, match=r"RHOS=0.9 has type float"):
        setup("03_occlusion_robustness", namespace)


def test_an_unknown_notebook_is_named():
    with pytest.raises(ValueError, match=r"notebook='06_x' has no profile entry"):
        setup("06_x", {})


def test_base_of_names_what_it_lacks_and_carries_a_sealed_seed():
    with pytest.raises(ValueError, match=r"params lacks \['WIDTH'\]"):
        base_of({name: 1 for name in BASE_NAMES if name != "WIDTH"})
    assert base_of(profiles.CONFIRM["confirm_resnet20"]).test_seed == profiles.CONFIRM["confirm_resnet20"]["TEST_SEED"]


def test_the_claim_modules_build_the_families_their_notebooks_read():
    base = base_of(profiles.parameters("01_training", "full"))
    params = {stem: profiles.parameters(stem, "full") for stem in NOTEBOOKS}
    finals = accuracy.configs(base, params["01_training"], SELECTED)
    assert len(finals[DENSE]) == 10 and len(finals[CUTOUT]) == 5      # ACCURACY_SEEDS for the compared families
    families, sweep = sparsity.configs(base, params["02_emergent_sparsity"], SELECTED)
    assert CUTOUT not in families and "paper default" in sweep and sweep["paper default"][0].lr == 0.003
    families, spurious = occlusion.configs(base, params["03_occlusion_robustness"], SELECTED)
    assert CUTOUT in families and sorted(spurious) == [0.5, 0.7, 0.9]
    assert {c.background_label_correlation for runs in spurious[0.7].values() for c in runs} == {0.7}
    assert spurious[0.9][PAPER][0].beta == 2.0 and spurious[0.9][PAPER][0].lambda_unary == 0.5
    assert set(deletion.configs(base, params["04_deletion_vs_magnitude"], SELECTED)) == set(families) - {CUTOUT}
    families, spurious = mask_quality.configs(base, params["05_mask_quality"], SELECTED)
    assert set(spurious) == {DENSE, PAPER} and spurious[DENSE][0].background_label_correlation == 0.9
    # every family a notebook reads at SEEDS is one of notebook 01's models (the same configs, so the same cache entries)
    digests = {c.digest() for runs in finals.values() for c in runs}
    assert all(c.digest() in digests for runs in families.values() for c in runs)


def test_claim_modules_train_nothing_where_a_claim_is_not_applicable():
    params = profiles.parameters("05_mask_quality", "cifar10")
    assert mask_quality.configs(base_of(params), params, SELECTED) == ({}, {})
    params = profiles.parameters("03_occlusion_robustness", "cifar10")
    assert occlusion.configs(base_of(params), params, SELECTED)[1] == {}


def test_the_notebooks_refuse_a_confirm_profile_until_they_take_it():
    with pytest.raises(ValueError, match=r"PROFILE='confirm_resnet20': the notebooks do not take the confirmatory profiles yet"):
        setup("01_training", {**profiles.parameters("01_training", "ci"), "PROFILE": "confirm_resnet20"})


def test_a_confirm_base_without_its_sealed_seed_is_refused():
    params = {k: v for k, v in profiles.CONFIRM["confirm_small_cnn"].items() if k != "TEST_SEED"}
    with pytest.raises(ValueError, match=r"params lacks \['TEST_SEED'\]"):
        base_of(params)
