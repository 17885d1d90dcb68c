"""The ERSM regulariser and training objective.

Paper:  L_reg = (1/N) * sum_i m_i * E_i,  N = number of tokens (batch included)
        L     = cross_entropy + beta * L_reg

The weight is ``layer.terms.gate_open``: the mask ``m`` itself for the "paper", "calibrated"
and "meanfield" variants (the paper's regulariser), and for "hardconcrete" (ours) the
probability ``pi_i = P(z_i > 0)`` that the gate is open, ``L_reg = mean(pi * E)``, in training and
in evaluation alike.

With several Energy-Mask Layers in one model we sum their ``L_reg`` (the paper uses one layer
and does not say). The regulariser reads ``layer.terms`` from the layer's last forward, so call
it right after the forward pass whose loss you are computing.

Quirk (documented, not fixed): ``m * E`` is small both when every mask is 0.5 with ``E_un -> 0``
and when every mask goes to 0 with ``E_un -> inf``; both are degenerate minima of ``L_reg``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ersm.layer import energy_masks


def regularization_loss(model: nn.Module) -> torch.Tensor:
    """Sum over the model's EnergyMask modules of ``mean(gate_open * energy)`` from their last forward.

    ``gate_open`` is the mask (``mean(m * E)``, the paper's) except for "hardconcrete" (``mean(pi * E)``).

    Returns a 0-d tensor; ``0`` for a model without any EnergyMask. Raises ``RuntimeError``
    naming a module that has not run a forward pass yet.
    """
    total = None
    for name, layer in energy_masks(model):
        if layer.terms is None:
            raise RuntimeError(f"EnergyMask {name!r} has not run a forward pass; call model(x) before regularization_loss(model)")
        term = (layer.terms.gate_open * layer.terms.energy).mean()
        total = term if total is None else total + term
    if total is None:
        parameter = next(model.parameters(), None)
        return torch.zeros((), device=parameter.device if parameter is not None else None)
    return total


class Objective(NamedTuple):
    """``total = cross_entropy + beta * regularizer`` (0-d tensors)."""

    total: torch.Tensor
    cross_entropy: torch.Tensor
    regularizer: torch.Tensor


def ersm_objective(logits: torch.Tensor, targets: torch.Tensor, model: nn.Module, beta: float) -> Objective:
    """The paper's training loss for ``logits [B, K]`` and ``targets [B]`` after ``model``'s forward."""
    if not beta >= 0:
        raise ValueError(f"beta={beta!r} must be >= 0")
    cross_entropy = F.cross_entropy(logits.float(), targets)
    regularizer = regularization_loss(model)
    return Objective(cross_entropy + beta * regularizer, cross_entropy, regularizer)
