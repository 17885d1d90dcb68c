"""ERSM: a reference implementation of Energy-Regularized Spatial Masking."""
from ersm.layer import EnergyMask, EnergyTerms, energy_masks
from ersm.loss import ersm_objective, regularization_loss
from ersm.models import SmallCNN, build_model, insert_energy_mask, resnet18_cifar, split_at

__all__ = [
    "EnergyMask", "EnergyTerms", "energy_masks", "ersm_objective", "regularization_loss",
    "SmallCNN", "build_model", "insert_energy_mask", "resnet18_cifar", "split_at",
]
__version__ = "0.1.0"
