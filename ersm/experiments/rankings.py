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

Where the stage is (:func:`locate_stage`). An ERSM model holds exactly one EnergyMask and the
stage is where that layer is: the features are the layer's output and the unmasked stage output
is the layer's *input*, i.e. the output of the module it masks, whatever that module is called
and however the model is built (``nn.Sequential`` stages, a torchvision ResNet with
``insert_energy_mask(model, after="layer3")``, a custom ``forward``). A dense model has no such
layer; the caller names the stage (``stage="layer2"``, or a dotted name such as
``"layer3.1"``). Both tensors are read by one forward hook on that module (the EnergyMask, or
the named stage), during the model's own forward pass: nothing is sliced to find them.

The head, ``head(features) == model(images)`` for the unedited features, is what feature-space
deletion runs on edited features. Two ways to get it, with the same numbers where both apply:

- the model is a plain ``nn.Sequential`` (the package's ``SmallCNN`` and ``resnet18_cifar``)
  and the stage's output is that of one of its top-level children (``layer2`` ending with the
  EnergyMask): ``ersm.split_at`` at that child, as before. The images go through the encoder
  half only, and each head call costs only the layers after the stage.
- anything else (a torchvision ResNet, whose ``avgpool -> flatten -> fc`` is not a sequence of
  children; a stage inside a child): :class:`HookedHead`, the whole model run on a one-image
  probe with a forward hook that replaces the stage's output by the given features. Each call
  costs the layers after the stage on the features plus the layers up to the stage on one
  image. stage_view then runs the full model on the images (the features come from the hook
  on the way) and refuses a stage where ``head(features)`` does not reproduce the model's
  logits (the rest of the network reads something from before the stage, as with a skip
  connection around it).

Why both. Measured on the ci SmallCNN (width 16, 1000 images of 48x48, one CPU thread), one
feature-space curve of 17 steps costs 0.86 s through split_at's head, 0.97 s through HookedHead
(+13%: the probe runs the layers up to the stage once per chunk of images) and 17 s through a
naive hook head that runs the whole model on a batch as large as the features (20x). Notebook 04
runs about a hundred such curves, so the package's models keep split_at (whose numbers the hook
path reproduces bit for bit there, ``tests/test_stage_view.py``); stage_view itself costs the
same either way (3.4 s; Grad-CAM dominates).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ersm.collection import collect_terms
from ersm.layer import EnergyMask, energy_masks
from ersm.metrics.deletion import gradcam_scores, magnitude_scores, random_scores
from ersm.models import split_at

MASK, ENERGY, MAGNITUDE, GRADCAM, RANDOM = "ERSM mask", "ERSM energy", "magnitude", "Grad-CAM", "random"
MASKED_MAGNITUDE = "magnitude (masked)"
HEAD_RTOL, HEAD_ATOL = 1e-4, 1e-5  # head(features) vs the model's logits, hook-based head only (atol scaled by max |logit|)


class StageView(NamedTuple):
    """One model seen at its masked stage, on a batch of clean images."""

    features: torch.Tensor      # [N, C, h, w], what the rest of the network receives
    head: nn.Module             # the rest of the network: head(features) == model(images)
    predicted: torch.Tensor     # [N], class predicted on the clean image
    rankings: dict              # name -> [N, h, w]
    stage: str | None = None    # qualified name of the module whose output ``features`` is


def named_module(model: nn.Module, stage) -> nn.Module:
    """``model``'s submodule with the qualified name ``stage`` (``"layer2"``, ``"layer3.1"``).

    A name that is not there raises ValueError listing the names that are, at the level where
    the lookup stopped.
    """
    if not isinstance(stage, str) or not stage:
        raise ValueError(f"stage={stage!r} must be the name of one of the model's modules; "
                         f"its stages are {[name for name, _ in model.named_children()]}")
    module, path = model, []
    for part in stage.split("."):
        children = dict(module.named_children())
        if part not in children:
            where = f"{'.'.join(path)!r} has" if path else f"the model ({type(model).__name__}) has stages"
            names = [".".join(path + [name]) for name in children]
            raise ValueError(f"stage={stage!r} is not a module of the model: {where} {names}")
        module, path = children[part], path + [part]
    return module


def locate_stage(model: nn.Module, stage: str | None = None) -> tuple[str, nn.Module, EnergyMask | None]:
    """``(name, module, layer)``: the module whose output is the viewed feature map.

    An ERSM model (exactly one EnergyMask): that layer, whose input is the unmasked stage
    output; ``stage`` may be left out, and if given must be a module that holds the layer.
    A dense model (no EnergyMask): the module named ``stage``, and ``layer`` is None.
    """
    layers = energy_masks(model)
    if len(layers) > 1:
        raise ValueError(f"model holds {len(layers)} EnergyMask layers ({[name for name, _ in layers]}); "
                         "a stage view needs exactly one, or none and a stage name")
    module = named_module(model, stage) if stage is not None else None
    if layers:
        name, layer = layers[0]
        if module is not None and not any(m is layer for m in module.modules()):
            raise ValueError(f"stage={stage!r} does not hold the model's EnergyMask, which sits at {name!r}; "
                             "leave stage out (an ERSM model is viewed where its layer is) or name a module that holds it")
        return name, layer, layer
    if module is None:
        raise ValueError(f"stage=None: the model holds no EnergyMask, so name the stage to view; "
                         f"its stages are {[name for name, _ in model.named_children()]}")
    return stage, module, None


def _plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def sequential_cut(model: nn.Module, module: nn.Module) -> str | None:
    """The top-level child of a plain ``nn.Sequential`` ``model`` whose output is ``module``'s
    output (the child is ``module``, or a plain ``nn.Sequential`` ending, at any depth, with it),
    or None: where ``split_at`` gives the same head as :class:`HookedHead`."""
    if not _plain_sequential(model):
        return None
    for name, node in model.named_children():
        while node is not module and _plain_sequential(node) and len(node):
            node = node[-1]
        if node is module:
            return name
    return None


class HookedHead(nn.Module):
    """The network after a stage, without slicing it: ``head(features) == model(images)`` when
    ``features`` is the stage's output on ``images``.

    ``forward(features)`` runs ``model`` on ``probe`` (one image of the right shape) with a
    forward hook on the module named ``stage`` that replaces its output by ``features``; the
    layers after the stage therefore see ``features`` exactly as they would see the stage's
    output. Valid when nothing after the stage reads a tensor from before it (checked by
    :func:`stage_view`). ``features`` is not changed, and the ``terms`` of every EnergyMask are
    left as they were before the call.
    """

    def __init__(self, model: nn.Module, stage: str, probe: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.stage = stage
        self.register_buffer("probe", probe.detach()[:1].clone(), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        module = self.model.get_submodule(self.stage)
        # a copy: a layer after the stage may work in place (a ResNet block's ``out += identity``)
        handle = module.register_forward_hook(lambda _module, _inputs, _output: features.clone())
        saved = [(layer, layer.terms) for _, layer in energy_masks(self.model)]
        try:
            return self.model(self.probe.to(features.device))
        finally:
            handle.remove()
            for layer, terms in saved:
                layer.terms = terms


@torch.no_grad()
def stage_view(model: nn.Module, images: torch.Tensor, stage: str | None = None, seed: int = 0,
               batch_size: int = 500) -> StageView:
    """Features, head, predictions and every ranking for ``images [N, C, H, W]``.

    ``stage``: for a dense model, the name of the module whose output to view (required); for
    an ERSM model it may be left out (the view is where the EnergyMask is), and if given must
    hold the layer. ValueError for a model with several EnergyMask layers, a stage name that is
    not a module of the model, a stage whose output is not a ``[N, C, h, w]`` map or that runs
    other than once per forward, and (hook-based head) a stage the rest of the network does not
    read through alone.
    """
    model.eval()
    name, module, layer = locate_stage(model, stage)
    cut = sequential_cut(model, module)
    features, unmasked, masks, energies, logits = [], [], [], [], []

    def keep(_module, inputs, output):  # the stage's output (masked, for ERSM) and its input (ERSM: unmasked)
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(f"stage {name!r} outputs {shape}, not a feature map [N, C, h, w]; name a convolutional stage")
        features.append(output.detach().clone())
        if layer is not None:
            unmasked.append(inputs[0].detach().clone())

    if cut is not None:
        encoder, head = split_at(model, cut)
        run = encoder
    else:
        head, run = HookedHead(model, name, images), model
    hook = module.register_forward_hook(keep)
    try:
        for index, batch in enumerate(images.split(batch_size)):
            with collect_terms(model) as collected:
                out = run(batch)
            if layer is not None:  # the terms of this batch, through the collector (also under DataParallel)
                terms = collected.concatenated()
                masks.append(terms.mask[:, 0])
                energies.append(terms.energy[:, 0])
            if cut is None:
                logits.append(out)
            if len(features) != index + 1:
                raise ValueError(f"stage {name!r} ran {len(features) - index} times in one forward pass; "
                                 "name a module that runs exactly once")
    finally:
        hook.remove()
    features = torch.cat(features)
    unmasked = torch.cat(unmasked) if layer is not None else features
    head_logits = head(features)
    if cut is None:
        check_head(name, head_logits, torch.cat(logits))
    predicted = head_logits.argmax(1)
    rankings = {}
    if layer is not None:
        rankings[MASK] = torch.cat(masks)
        rankings[ENERGY] = -torch.cat(energies)
    rankings[MAGNITUDE] = magnitude_scores(unmasked)
    if layer is not None:
        rankings[MASKED_MAGNITUDE] = magnitude_scores(features)
    rankings[GRADCAM] = gradcam_scores(model, module, images, predicted)
    rankings[RANDOM] = random_scores(rankings[MAGNITUDE].shape, seed=seed)
    return StageView(features, head, predicted, rankings, name)


def check_head(name: str, head_logits: torch.Tensor, logits: torch.Tensor) -> None:
    """Refuse a stage where ``head(features)`` does not reproduce the model's own logits."""
    atol = HEAD_ATOL * max(1.0, float(logits.abs().max()))
    if head_logits.shape != logits.shape or not torch.allclose(head_logits, logits, rtol=HEAD_RTOL, atol=atol):
        gap = (head_logits - logits).abs().max().item() if head_logits.shape == logits.shape else float("nan")
        raise ValueError(f"stage {name!r} is not a cut of the network: the layers after it do not read the input only "
                         f"through its output (a skip connection around it?), so head(features) misses the model's "
                         f"logits by {gap:.3g}; view a stage on the network's main path")
