"""Backbones and where the Energy-Mask Layer goes.

Both backbones are ``nn.Sequential`` with named stages ``stem, layer1, ..., head`` so that
``insert_energy_mask(model, after="layer2")`` and ``split_at(model, "layer2")`` work by name.
A dense model and its ERSM twin differ only by the inserted layer: same stages, same
initialisation for the same seed (the layer's parameters are created after the backbone's).

- ``SmallCNN``: a 4-stage CNN for 1-channel 48x48 or 56x56 images (about 0.1 M parameters);
  ``layer2`` ends at 1/4 resolution (a 12x12 token grid on a 48x48 canvas).
- ``resnet18_cifar``: torchvision's ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no
  max-pool), as in DeVries and Taylor (2017); ``layer2`` ends at 1/2 resolution.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models import resnet18

from ersm.layer import EnergyMask, energy_masks


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def classifier_head(channels: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


class SmallCNN(nn.Sequential):
    """``x [B, in_channels, H, W] -> logits [B, num_classes]``; ``width`` channels in the stem."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        w = width
        super().__init__(OrderedDict(
            stem=conv_bn_relu(in_channels, w),
            layer1=conv_bn_relu(w, w, stride=2),
            layer2=nn.Sequential(conv_bn_relu(w, 2 * w, stride=2), conv_bn_relu(2 * w, 2 * w)),
            layer3=conv_bn_relu(2 * w, 4 * w, stride=2),
            head=classifier_head(4 * w, num_classes),
        ))


def resnet18_cifar(in_channels: int = 3, num_classes: int = 10) -> nn.Sequential:
    """ResNet-18 (torchvision blocks) with a 3x3 stride-1 stem and no max-pool, as named stages."""
    net = resnet18(num_classes=num_classes)
    stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False), net.bn1, net.relu)
    return nn.Sequential(OrderedDict(
        stem=stem, layer1=net.layer1, layer2=net.layer2, layer3=net.layer3, layer4=net.layer4,
        head=nn.Sequential(net.avgpool, nn.Flatten(), net.fc),
    ))


def stage_channels(stage: nn.Module) -> int:
    """Output channels of a stage: those of its last BatchNorm2d or Conv2d."""
    for module in reversed(list(stage.modules())):
        if isinstance(module, nn.BatchNorm2d):
            return module.num_features
        if isinstance(module, nn.Conv2d):
            return module.out_channels
    raise ValueError(f"cannot tell the output channels of stage {type(stage).__name__}: it has no Conv2d or BatchNorm2d")


def insert_energy_mask(model: nn.Module, after: str = "layer2", **layer_kwargs) -> nn.Module:
    """Put one EnergyMask right after the stage named ``after``; returns ``model`` (changed in place).

    Works for the backbones here and for torchvision ResNets (``layer1`` ... ``layer4``). The
    stage becomes ``nn.Sequential(stage, EnergyMask(...))``; ``layer_kwargs`` go to EnergyMask.
    """
    stage = getattr(model, after, None) if isinstance(after, str) else None
    if not isinstance(stage, nn.Module):
        names = [name for name, _ in model.named_children()]
        raise ValueError(f"after={after!r} is not a stage of {type(model).__name__}; its stages are {names}")
    if any(isinstance(module, EnergyMask) for module in stage.modules()):
        raise ValueError(f"after={after!r}: that stage already holds an EnergyMask")
    setattr(model, after, nn.Sequential(stage, EnergyMask(stage_channels(stage), **layer_kwargs)))
    return model


def split_at(model: nn.Sequential, stage: str) -> tuple[nn.Sequential, nn.Sequential]:
    """``(encoder, head)`` such that ``head(encoder(x)) == model(x)``; the encoder ends with ``stage``.

    The two halves share the model's modules (no copy). ``encoder(x)`` is the (masked, for an
    ERSM model) feature map ``[B, C, h, w]`` that the deletion tests edit token by token.
    """
    names = [name for name, _ in model.named_children()]
    if stage not in names:
        raise ValueError(f"stage={stage!r} is not a stage of the model; its stages are {names}")
    cut = names.index(stage) + 1
    children = list(model.named_children())
    return nn.Sequential(OrderedDict(children[:cut])), nn.Sequential(OrderedDict(children[cut:]))


BACKBONES = {"small_cnn": SmallCNN, "resnet18": resnet18_cifar}


def build_model(backbone: str = "small_cnn", in_channels: int = 1, num_classes: int = 10,
                energy_mask: dict | None = None, after: str = "layer2", width: int | None = None) -> nn.Module:
    """A dense backbone, or (``energy_mask`` = EnergyMask kwargs) its ERSM twin.

    ``width`` sets the SmallCNN's stem channels (32 if ``None``); the ResNet's are fixed.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone={backbone!r} must be one of {sorted(BACKBONES)}")
    if width is not None and backbone != "small_cnn":
        raise ValueError(f"width={width!r} applies to backbone='small_cnn' only, not backbone={backbone!r}")
    extra = {} if width is None else {"width": width}
    model = BACKBONES[backbone](in_channels=in_channels, num_classes=num_classes, **extra)
    if energy_mask is not None:
        insert_energy_mask(model, after=after, **energy_mask)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def energy_terms_of(model: nn.Module):
    """The ``EnergyTerms`` of the model's single EnergyMask from its last forward."""
    layers = [layer for _, layer in energy_masks(model)]
    if len(layers) != 1:
        raise ValueError(f"model has {len(layers)} EnergyMask layers; expected exactly one")
    if layers[0].terms is None:
        raise RuntimeError("the EnergyMask has not run a forward pass yet")
    return layers[0].terms
