"""Run profiles in one place: the notebooks' parameters for ``ci``, ``full``, ``cifar10`` and ``pets``.

``ci`` equals the parameter defaults written in each notebook's ``parameters`` cell (a test
checks it), so ``pytest --nbval notebooks/`` re-executes exactly what was committed. It is a
smoke test of the code path, sized to keep the notebook suite under 20 minutes on the slowest
2-core CPU measured (an AMD EPYC) with the portable kernels (``ersm/portability/numerics.py``, about 2.5x
slower than native ones): two seeds, 1,000 training images x 6 epochs, 250 validation and 500
test images, a width-16 SmallCNN, one tuning trial (the default config),
always on the CPU (``DEVICE="cpu"``) so its outputs are the same with or without a GPU. Its
models do not converge, so every ``ci`` verdict is INCONCLUSIVE (not converged) by rule.
``full`` is sized for convergence (10,000 training images, 15 epochs, the width-32 SmallCNN:
dense reached 91% test accuracy at that size in a one-seed trial), 5 seeds (10 for dense and the
ERSM variants in claim 01, where the power analysis asked for them), 8 tuning trials per family
(``ersm/study/tuning.py``), more images in the input-space deletion tests; it runs on a GPU
when there is one (``DEVICE="auto"``) and is injected by papermill.

``cifar10`` and ``pets`` run the same notebooks on the real datasets (``DATASET``, ``BACKBONE``);
they need the internet (or the files under ``ERSM_DATA``) and in practice a GPU, and their sizes
are a plan, **unmeasured here** (no GPU, no internet): ``cifar10`` the CIFAR-stem ResNet-18 at
32 px, 45,000/5,000 training/validation images from the training split, the 10,000 test images,
30 epochs, 5 seeds, 4 tuning trials; ``pets`` torchvision's ResNet-18 (ImageNet stem, random
weights) at 224 px, the trimaps as object masks, 3,180/500 of trainval, the 3,669 test images,
60 epochs. Claims a dataset cannot support (``ersm.data.capabilities``) are reported as not
applicable: on CIFAR-10 notebook 05, object-targeted occlusion and background reliance; on Pets
background reliance. ``ci`` and ``full`` stay on the cluttered digits with the SmallCNN.

Model families are named by their display names (``ersm.experiments.common``; written out here so
this module stays free of torch), e.g. notebook 03's ``BACKGROUND_MODELS``: the families trained at
each rho of ``RHOS`` for the background-reliance claim (``ci``: dense and ERSM paper only, to stay
in the suite's budget; ``full``: every variant and control).
"""
from __future__ import annotations

DIGITS = dict(DATASET="cluttered_digits", BACKBONE="small_cnn")
COMMON = {
    "ci": dict(PROFILE="ci", SEEDS=[0, 1], EPOCHS=6, N_TRAIN=1000, N_VAL=250, N_TEST=500, CANVAS=48, WIDTH=16,
               DEVICE="cpu", TUNING_TRIALS=1, **DIGITS),
    "full": dict(PROFILE="full", SEEDS=[0, 1, 2, 3, 4], EPOCHS=15, N_TRAIN=10000, N_VAL=1000, N_TEST=1000, CANVAS=48,
                 WIDTH=32, DEVICE="auto", TUNING_TRIALS=8, **DIGITS),
    # unmeasured here (no GPU, no internet): 45,000 training / 5,000 validation images drawn from the 50,000 of
    # the training split, the whole 10,000-image test split, the CIFAR-stem ResNet-18 (CANVAS and WIDTH unused)
    "cifar10": dict(PROFILE="cifar10", SEEDS=[0, 1, 2, 3, 4], EPOCHS=30, N_TRAIN=45000, N_VAL=5000, N_TEST=10000,
                    CANVAS=32, WIDTH=32, DEVICE="auto", TUNING_TRIALS=4, DATASET="cifar10", BACKBONE="resnet18"),
    # unmeasured here: 3,180 training / 500 validation images of the 3,680 of trainval, the whole 3,669-image
    # test split, 224 px (the dataset's size), torchvision's ResNet-18 with the ImageNet stem, random weights
    "pets": dict(PROFILE="pets", SEEDS=[0, 1, 2, 3, 4], EPOCHS=60, N_TRAIN=3180, N_VAL=500, N_TEST=3669,
                 CANVAS=224, WIDTH=32, DEVICE="auto", TUNING_TRIALS=4, DATASET="oxford_pet", BACKBONE="resnet18_imagenet"),
}
# rules v3 (docs/rules.md#rules-v3-confirmatory): one confirmatory study per backbone, full's data and budget,
# model seeds 10-18, the sealed test split (TEST_SEED: ersm.data.sealed.CONFIRM_TEST_SEED; a test checks it), on
# the CPU: each study trains on one device kind (the rules), and the SmallCNN study reads the exploratory CPU trials.
# ``ersm warm`` trains them (ersm.study.confirm); the notebooks do not take these profiles yet (issue 30).
CONFIRM_PROFILES = ("confirm_small_cnn", "confirm_resnet20")
CONFIRM = {}
for _backbone, _profile in zip(("small_cnn", "resnet20"), CONFIRM_PROFILES):
    CONFIRM[_profile] = dict(PROFILE=_profile, SEEDS=list(range(10, 19)), EPOCHS=15, N_TRAIN=10000, N_VAL=1000, N_TEST=1000,
                            CANVAS=48, WIDTH=32, DEVICE="cpu", TUNING_TRIALS=8, TEST_SEED=20261204,
                            DATASET="cluttered_digits", BACKBONE=_backbone)

SPECIFIC = {
    # rules v2: 1 point in both (v1: 0.5 in full). ACCURACY_SEEDS: the seeds of dense and of each ERSM variant in the
    # accuracy claim (ersm.experiments.accuracy.claim_families); full's 10 come from the power analysis of its 5-seed
    # run (amendment v2.4, docs/rules.md); every other family and claim keeps SEEDS
    "01_training": {"ci": dict(MARGIN=1.0, ACCURACY_SEEDS=[0, 1]), "full": dict(MARGIN=1.0, ACCURACY_SEEDS=list(range(10)))},
    "02_emergent_sparsity": {"ci": dict(SWEEP_SEED=0, SWEEP={"lambda_unary": [5.0], "beta": [5.0]}, N_BOOT=2000),
                             "full": dict(SWEEP_SEED=0, SWEEP={"lambda_unary": [0.2, 5.0], "lambda_pair": [0.0], "beta": [5.0]},
                                          N_BOOT=2000)},
    "03_occlusion_robustness": {"ci": dict(FRACTIONS=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5], RHOS=[0.5, 0.9],
                                           BACKGROUND_MODELS=["dense", "ERSM paper"]),
                                "full": dict(FRACTIONS=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5], RHOS=[0.5, 0.7, 0.9],
                                             BACKGROUND_MODELS=["dense", "ERSM paper", "ERSM calibrated", "ERSM meanfield",
                                                                "ERSM hardconcrete", "ERSM paper, beta=0", "ERSM calibrated, beta=0",
                                                                "ERSM meanfield, beta=0", "ERSM hardconcrete, beta=0"])},
    # ALL_PROTOCOLS: the families scored under every deletion protocol and ranking; every other family (the other
    # variants and every beta=0 control) gets the primary protocol with the energy, mask and magnitude rankings, which is
    # all its verdict rows read (ci: to stay in the suite's budget; full: every family)
    "04_deletion_vs_magnitude": {"ci": dict(STEPS=16, N_BOOT=1000, N_INPUT=50, N_ROAD=50, ALL_PROTOCOLS=["dense", "ERSM paper"]),
                                 "full": dict(STEPS=16, N_BOOT=2000, N_INPUT=100, N_ROAD=100,
                                              ALL_PROTOCOLS=["dense", "ERSM paper", "ERSM calibrated", "ERSM meanfield",
                                                             "ERSM hardconcrete", "ERSM paper, beta=0", "ERSM calibrated, beta=0",
                                                             "ERSM meanfield, beta=0", "ERSM hardconcrete, beta=0"])},
    # RHO: the spurious split of notebook 05 (background mass share, reported); the largest of 03's RHOS, so its
    # dense and ERSM paper models are those notebook 03 trained (the cache)
    "05_mask_quality": {"ci": dict(TOLERANCE=3, N_BOOT=1000, RHO=0.9), "full": dict(TOLERANCE=4, N_BOOT=2000, RHO=0.9)},
}
# the real-data profiles take full's claim parameters; RHOS, BACKGROUND_MODELS and RHO are unused there (background
# reliance is not applicable, ersm.data.capabilities); 05's tolerance is the 15-of-224 convention at 224 px
# and 01's ACCURACY_SEEDS are the profile's SEEDS (no power analysis has been run on a real dataset)
for _notebook, _entry in SPECIFIC.items():
    for _real in ("cifar10", "pets"):
        _entry[_real] = dict(_entry["full"], **({"ACCURACY_SEEDS": list(COMMON[_real]["SEEDS"])} if _notebook == "01_training" else {}))
    _entry["pets"].update({"TOLERANCE": 15} if _notebook == "05_mask_quality" else {})

PROFILE_NAMES = tuple(COMMON)


def parameters(notebook: str, profile: str) -> dict:
    """The parameters that ``profile`` gives ``notebook`` (its stem, e.g. ``"01_training"``)."""
    if profile not in COMMON:
        raise ValueError(f"profile={profile!r} is unknown; choose one of {list(COMMON)}")
    if notebook not in SPECIFIC:
        raise ValueError(f"notebook={notebook!r} has no profile entry; known notebooks are {sorted(SPECIFIC)}")
    return {**COMMON[profile], **SPECIFIC[notebook][profile]}


def validate(notebook: str, given: dict, declared: dict) -> None:
    """Refuse parameter names the notebook does not declare and values of the wrong type.

    ``declared`` maps name -> default value, as read from the notebook's parameters cell.
    papermill itself only warns about unknown names, so this runs before papermill does.
    """
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ValueError(f"{notebook}: unknown parameter(s) {unknown}; the notebook declares {sorted(declared)}")
    for name, value in given.items():
        default = declared[name]
        ok = isinstance(value, type(default)) and not (isinstance(value, bool) and not isinstance(default, bool))
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ValueError(f"{notebook}: parameter {name}={value!r} has type {type(value).__name__}; "
                             f"the notebook's default {default!r} is a {type(default).__name__}")
