"""Token rankings at the masked stage, for the deletion tests (04) and mask quality (05).

Every ranking is a map ``[N, h, w]`` on the token grid of the stage after which the
Energy-Mask Layer sits, higher = more important:

- ``ERSM mask``: the mask ``m`` itself, i.e. low unary energy first (the order the layer uses);
- ``ERSM energy``: ``-E`` with the pairwise term included;
- ``magnitude``: the L2 norm over channels of the stage's output *before* the mask (the paper's
  magnitude-pruning baseline; before the mask so that it does not inherit the mask's ranking);
  for a dense model, of the same stage's output;
- ``magnitude (masked)`` (ERSM models only): the norm of the masked features ``m * x`` that the
  rest of the network sees. In feature-space deletion the mask ranking removes tokens the mask
  has already scaled down, which favours it by construction over the unmasked magnitude; this
  ranking is reported beside it as the control for that advantage;
- ``Grad-CAM``: Grad-CAM at that stage for the class predicted on the clean image;
- ``random``: a seeded random map.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ersm.layer import EnergyMask, collect_terms, energy_masks
from ersm.metrics.deletion import gradcam_scores, magnitude_scores, random_scores
from ersm.models import split_at

MASK, ENERGY, MAGNITUDE, GRADCAM, RANDOM = "ERSM mask", "ERSM energy", "magnitude", "Grad-CAM", "random"
MASKED_MAGNITUDE = "magnitude (masked)"


class StageView(NamedTuple):
    """One model seen at its masked stage, on a batch of clean images."""

    features: torch.Tensor      # [N, C, h, w], what the rest of the network receives
    head: nn.Module             # the rest of the network
    predicted: torch.Tensor     # [N], class predicted on the clean image
    rankings: dict              # name -> [N, h, w]


def stage_output(model: nn.Module, stage: str) -> nn.Module:
    """The module whose output is the stage's unmasked features."""
    block = getattr(model, stage)
    if isinstance(block, nn.Sequential) and isinstance(block[-1], EnergyMask):
        return block[0]
    return block


@torch.no_grad()
def stage_view(model: nn.Module, images: torch.Tensor, stage: str = "layer2", seed: int = 0, batch_size: int = 500) -> StageView:
    """Features, head, predictions and every ranking for ``images [N, C, H, W]``."""
    model.eval()
    encoder, head = split_at(model, stage)
    features, unmasked, masks, energies = [], [], [], []
    layer = next((name for name, _ in energy_masks(model)), None)
    # one encoder pass per batch; a hook keeps the stage's output before the mask
    hook = stage_output(model, stage).register_forward_hook(lambda _m, _i, out: unmasked.append(out.detach()))
    try:
        for batch in images.split(batch_size):
            with collect_terms(model) as collected:
                features.append(encoder(batch))
            if layer is not None:
                terms = collected.concatenated(layer)
                masks.append(terms.mask[:, 0])
                energies.append(terms.energy[:, 0])
    finally:
        hook.remove()
    features, unmasked = torch.cat(features), torch.cat(unmasked)
    predicted = head(features).argmax(1)
    rankings = {}
    if layer is not None:
        rankings[MASK] = torch.cat(masks)
        rankings[ENERGY] = -torch.cat(energies)
    rankings[MAGNITUDE] = magnitude_scores(unmasked)
    if layer is not None:
        rankings[MASKED_MAGNITUDE] = magnitude_scores(features)
    rankings[GRADCAM] = gradcam_scores(model, getattr(model, stage), images, predicted)
    rankings[RANDOM] = random_scores(rankings[MAGNITUDE].shape, seed=seed)
    return StageView(features, head, predicted, rankings)
