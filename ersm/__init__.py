"""ERSM: a reference implementation of Energy-Regularized Spatial Masking."""
# Kernel pins must be in the environment before torch computes anything (ersm/portability/numerics.py).
from ersm.portability import numerics as _numerics

_numerics.set_environment()
import torch  # noqa: E402  (after the pins, on purpose)

_numerics.apply()

from ersm.layer import EnergyMask, EnergyTerms, energy_masks  # noqa: E402
from ersm.collection import TermsCollector, collect_terms  # noqa: E402
from ersm.loss import ersm_objective, regularization_loss  # noqa: E402
from ersm.models import SmallCNN, build_model, insert_energy_mask, resnet18_cifar, split_at  # noqa: E402
from ersm.training.engine import Fitted, fit, train_step  # noqa: E402
from ersm.compute.hardening import harden  # noqa: E402

__all__ = [
    "EnergyMask", "EnergyTerms", "TermsCollector", "collect_terms", "energy_masks", "ersm_objective", "regularization_loss",
    "SmallCNN", "build_model", "insert_energy_mask", "resnet18_cifar", "split_at", "Fitted", "fit", "train_step", "harden",
]
__version__ = "0.1.0"
