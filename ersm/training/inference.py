"""Batched evaluation passes that collect logits, the mask terms and the masked features."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ersm.collection import collect_terms
from ersm.layer import energy_masks


class Outputs(NamedTuple):
    """Per image: ``logits [N, K]``; for ERSM models ``mask, unary, energy [N, 1, h, w]``, else None."""

    logits: torch.Tensor
    mask: torch.Tensor | None
    unary: torch.Tensor | None
    energy: torch.Tensor | None


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> Outputs:
    """Run ``model`` in eval mode over ``images [N, C, H, W]`` in batches, on the model's device.

    The mask terms are those of the model's first EnergyMask, read through ``collect_terms``.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    layers = [name for name, _ in energy_masks(model)]
    logits, masks, unaries, energies = [], [], [], []
    for batch in images.split(batch_size):
        with collect_terms(model) as collected:  # also right under DataParallel (ersm.layer)
            logits.append(model(batch.to(device)).float().cpu())
        if layers:
            terms = collected.concatenated(layers[0])  # this batch's terms, in batch order
            masks.append(terms.mask.cpu())
            unaries.append(terms.unary.cpu())
            energies.append(terms.energy.cpu())
    model.train(was_training)
    cat = lambda parts: torch.cat(parts) if parts else None  # noqa: E731
    return Outputs(torch.cat(logits), cat(masks), cat(unaries), cat(energies))


def correct(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[N]`` bool on the CPU: is the model's top class on ``images [N, C, H, W]`` the label ``labels [N]``?"""
    return predict(model, images).logits.argmax(1) == labels.cpu()


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of ``images`` classified right (``correct``, averaged)."""
    return correct(model, images, labels).float().mean().item()
