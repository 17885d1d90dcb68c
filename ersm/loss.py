"""The ERSM regulariser and training objective.

Paper:  L_reg = (1/N) * sum_i m_i * E_i,  N = number of tokens (batch included)
        L     = cross_entropy + beta * L_reg

The weight is ``EnergyTerms.gate_open``: the mask ``m`` itself for the "paper", "calibrated"
and "meanfield" variants (the paper's regulariser), and for "hardconcrete" (ours) the
probability ``pi_i = P(z_i > 0)`` that the gate is open, ``L_reg = mean(pi * E)``, in training and
in evaluation alike.

With several Energy-Mask Layers in one model we sum their ``L_reg`` (the paper uses one layer
and does not say).

Where the terms come from (the layer's contract, ``ersm.layer``'s docstring):

- ``regularization_loss(model)`` reads ``layer.terms``, the layer's *last* forward, so call it
  right after the forward pass whose loss you are computing. Single-process code only (the
  notebooks and ``ersm.training.cache`` use it); it refuses a ``DataParallel`` over several devices,
  whose replicas never hand their terms back to the wrapped layers.
- ``regularization_loss(collected)``, with ``collected`` from ``ersm.collect_terms(model)``,
  covers every forward inside the ``with`` block, of every replica::

      with ersm.collect_terms(model) as collected:
          logits = model(x)            # model may be DataParallel, DDP or compiled
      loss = F.cross_entropy(logits, y) + beta * ersm.regularization_loss(collected)

  Per layer it is the mean of ``gate_open * energy`` over *all* collected tokens (the
  token-weighted mean), so a batch split across replicas or into micro-batches gives the value
  of one pass over the whole batch (up to rounding). With one record per layer it is computed
  exactly as ``regularization_loss(model)``, bit for bit.

Quirk (documented, not fixed): ``m * E`` is small both when every mask is 0.5 with ``E_un -> 0``
and when every mask goes to 0 with ``E_un -> inf``; both are degenerate minima of ``L_reg``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ersm.collection import TermsCollector
from ersm.layer import energy_masks


def regularization_loss(source: nn.Module | TermsCollector) -> torch.Tensor:
    """Sum over the EnergyMask layers of ``mean(gate_open * energy)``.

    ``source`` is a model (each layer's last forward, ``layer.terms``) or a
    :class:`~ersm.collection.TermsCollector` (every collected forward of each layer, token-weighted).
    ``gate_open`` is the mask (``mean(m * E)``, the paper's) except for "hardconcrete" (``mean(pi * E)``).

    Returns a 0-d tensor; ``0`` for a model without any EnergyMask. Raises ``RuntimeError``
    naming a layer that has not run a forward pass yet (or none inside the collector's block).
    """
    if isinstance(source, TermsCollector):
        return _collected_loss(source)
    model = source
    if isinstance(model, nn.DataParallel) and len(model.device_ids) > 1:
        raise TypeError("regularization_loss(model) reads layer.terms, which DataParallel's replicas never set on the "
                        "wrapped model; collect the terms instead: with ersm.collect_terms(model) as collected: ...; "
                        "regularization_loss(collected)")
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


def _collected_loss(collected: TermsCollector) -> torch.Tensor:
    """The token-weighted regulariser over everything ``collected`` holds (layers summed in order)."""
    by_layer: dict[str, list] = {name: [] for name in collected.layers}
    for record in collected.records:
        by_layer[record.layer].append(record.terms)
    total = None
    for name, parts in by_layer.items():
        if not parts:
            raise RuntimeError(f"EnergyMask {name!r} ran no forward pass inside collect_terms(...); "
                               "call model(x) inside the with block")
        if len(parts) == 1:  # the very expression of regularization_loss(model)
            term = (parts[0].gate_open * parts[0].energy).mean()
        else:  # one mean over every token of every record, on the first record's device
            device = parts[0].energy.device
            term = torch.cat([(part.gate_open * part.energy).reshape(-1).to(device) for part in parts]).mean()
        total = term if total is None else total + term.to(total.device)
    if total is None:
        return torch.zeros((), device=collected.device)
    return total
class Objective(NamedTuple):
    """``total = cross_entropy + beta * regularizer`` (0-d tensors)."""

    total: torch.Tensor
    cross_entropy: torch.Tensor
    regularizer: torch.Tensor


def ersm_objective(logits: torch.Tensor, targets: torch.Tensor, model: nn.Module | TermsCollector, beta: float) -> Objective:
    """The paper's training loss for ``logits [B, K]`` and ``targets [B]`` after ``model``'s forward.

    ``model`` may be a :class:`~ersm.collection.TermsCollector` instead (see :func:`regularization_loss`).
    """
    if not beta >= 0:
        raise ValueError(f"beta={beta!r} must be >= 0")
    cross_entropy = F.cross_entropy(logits.float(), targets)
    regularizer = regularization_loss(model)
    return Objective(cross_entropy + beta * regularizer, cross_entropy, regularizer)
