"""Backbones and where the Energy-Mask Layer goes.

Every backbone is an ``nn.Sequential`` with named stages ``stem, layer1, ..., head`` so that
``insert_energy_mask(model, after="layer2")`` and ``split_at(model, "layer2")`` work by name.
A dense model and its ERSM twin differ only by the inserted layer: same stages, same
initialisation for the same seed (the layer's parameters are created after the backbone's).

- ``SmallCNN``: a 4-stage CNN for 1-channel 48x48 or 56x56 images (about 0.1 M parameters);
  ``layer2`` ends at 1/4 resolution (a 12x12 token grid on a 48x48 canvas).
- ``resnet20``: the CIFAR ResNet-20 of He et al. (2016, section 4.2): a 3x3 stem of 16 channels,
  then three stages of three basic blocks with 16, 32 and 64 channels (strides 1, 2, 2), 6n + 2
  = 20 weighted layers at n = 3, about 0.27 M parameters. Deviation from that paper: where a
  stage halves the resolution, the shortcut is a 1x1 strided convolution with BatchNorm (its
  option B, torchvision's ``BasicBlock`` downsample), not the zero-padded identity (option A).
  The blocks are torchvision's ``BasicBlock``, so ``ersm.compute.sparse_exec`` runs them. ``layer2``
  ends at 1/2 resolution (a 24x24 token grid on a 48x48 canvas); ``layer3`` is the last stage
  (there is no ``layer4``).
- ``resnet18_cifar``: torchvision's ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no
  max-pool), as in DeVries and Taylor (2017); ``layer2`` ends at 1/2 resolution.
- ``resnet_imagenet("resnet18" | "resnet50")``: torchvision's ResNets with their ImageNet stem
  (7x7 conv, stride 2, max-pool), e.g. for Oxford-IIIT Pet at 224 px; ``layer2`` ends at 1/8
  resolution (28x28 tokens at 224 px). Random weights unless ``pretrained=True`` (torchvision's
  ImageNet weights; the classifier is then replaced to fit ``num_classes``).

``build_model(..., normalize=(mean, std))`` puts a :class:`Normalize` stage named ``normalize``
in front of the stem. Normalisation is part of the model (not of the data) on purpose: every
image tensor the package hands around (occlusion fills, deletion curves, plots) stays in
``[0, 1]``.
"""
from __future__ import annotations

import functools
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
import torchvision
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock

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


RESNET20_CHANNELS = (16, 32, 64)
RESNET20_BLOCKS = 3  # n in 6n + 2


def _basic_stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` torchvision BasicBlocks; the first one strides and, if the shape changes, projects its shortcut."""
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                   nn.BatchNorm2d(out_channels))
    layers = [BasicBlock(in_channels, out_channels, stride=stride, downsample=downsample)]
    layers += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def resnet20(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """CIFAR ResNet-20 as named stages ``stem, layer1, layer2, layer3, head``:
    ``x [B, in_channels, H, W] -> logits [B, num_classes]`` (module docstring)."""
    c1, c2, c3 = RESNET20_CHANNELS
    model = nn.Sequential(OrderedDict(
        stem=conv_bn_relu(in_channels, c1),
        layer1=_basic_stage(c1, c1, RESNET20_BLOCKS, stride=1),
        layer2=_basic_stage(c1, c2, RESNET20_BLOCKS, stride=2),
        layer3=_basic_stage(c2, c3, RESNET20_BLOCKS, stride=2),
        head=classifier_head(c3, num_classes),
    ))
    for module in model.modules():  # He et al.'s initialisation, as torchvision's ResNet applies it
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return model


def resnet18_cifar(in_channels: int = 3, num_classes: int = 10) -> nn.Sequential:
    """ResNet-18 (torchvision blocks) with a 3x3 stride-1 stem and no max-pool, as named stages."""
    net = resnet18(num_classes=num_classes)
    stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False), net.bn1, net.relu)
    return nn.Sequential(OrderedDict(
        stem=stem, layer1=net.layer1, layer2=net.layer2, layer3=net.layer3, layer4=net.layer4,
        head=nn.Sequential(net.avgpool, nn.Flatten(), net.fc),
    ))


class Normalize(nn.Module):
    """``x [B, C, H, W] -> (x - mean) / std`` per channel; ``mean`` and ``std`` are buffers (not saved)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        if len(mean) != len(std) or not all(s > 0 for s in std):
            raise ValueError(f"mean={mean!r} and std={std!r} must have one entry per channel, std > 0")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(f"x has shape {tuple(x.shape)}; Normalize expects [B, {self.mean.shape[1]}, H, W]")
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={tuple(round(v, 4) for v in self.mean.flatten().tolist())}, " \
               f"std={tuple(round(v, 4) for v in self.std.flatten().tolist())}"


class WeightsNotAvailable(RuntimeError):
    """Pretrained weights are neither in torch's hub cache nor downloadable (offline)."""


IMAGENET_WEIGHTS = {"resnet18": "ResNet18_Weights.IMAGENET1K_V1", "resnet50": "ResNet50_Weights.IMAGENET1K_V2"}


def imagenet_state_dict(depth: str) -> dict:
    """torchvision's ImageNet weights of ``resnet18`` / ``resnet50`` from torch's hub cache, else downloaded.

    Raises :class:`WeightsNotAvailable` naming the weights, their URL and the file to put in
    place when they can be neither read nor downloaded.
    """
    enum_name, member = IMAGENET_WEIGHTS[depth].split(".")
    weights = getattr(getattr(torchvision.models, enum_name), member)
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        return torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True)
    except Exception as error:  # noqa: BLE001 - offline, proxy, checksum: all mean "not available"
        raise WeightsNotAvailable(
            f"pretrained=True needs torchvision's {IMAGENET_WEIGHTS[depth]} weights, which are not in {path.parent} "
            f"and could not be downloaded ({type(error).__name__}: {error}). Download {weights.url} on a machine with "
            f"internet access and put it at {path} (or set TORCH_HOME), or use pretrained=False") from error


def resnet_imagenet(depth: str = "resnet18", in_channels: int = 3, num_classes: int = 1000,
                    pretrained: bool = False) -> nn.Sequential:
    """torchvision's ResNet-18/50 with the ImageNet stem, as named stages ``stem, layer1..4, head``.

    ``x [B, in_channels, H, W] -> logits [B, num_classes]``; with ``pretrained`` (3 input
    channels only) every weight but the classifier's comes from ImageNet.
    """
    if depth not in IMAGENET_WEIGHTS:
        raise ValueError(f"depth={depth!r} must be one of {sorted(IMAGENET_WEIGHTS)}")
    if pretrained and in_channels != 3:
        raise ValueError(f"in_channels={in_channels!r} does not fit pretrained=True: the ImageNet weights take 3 channels")
    net = getattr(torchvision.models, depth)(num_classes=num_classes)
    if pretrained:
        state = {k: v for k, v in imagenet_state_dict(depth).items() if not k.startswith("fc.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if sorted(missing) != ["fc.bias", "fc.weight"] or unexpected:
            raise WeightsNotAvailable(f"the {IMAGENET_WEIGHTS[depth]} file does not fit torchvision's {depth} "
                                      f"(missing {missing}, unexpected {unexpected})")
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return nn.Sequential(OrderedDict(
        stem=nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool),
        layer1=net.layer1, layer2=net.layer2, layer3=net.layer3, layer4=net.layer4,
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


BACKBONES = {"small_cnn": SmallCNN, "resnet20": resnet20, "resnet18": resnet18_cifar,
             "resnet18_imagenet": functools.partial(resnet_imagenet, "resnet18"),
             "resnet50_imagenet": functools.partial(resnet_imagenet, "resnet50")}


def build_model(backbone: str = "small_cnn", in_channels: int = 1, num_classes: int = 10,
                energy_mask: dict | None = None, after: str = "layer2", width: int | None = None,
                pretrained: bool = False, normalize: tuple | None = None) -> nn.Module:
    """A dense backbone, or (``energy_mask`` = EnergyMask kwargs) its ERSM twin.

    ``x [B, in_channels, H, W] in [0, 1] -> logits [B, num_classes]``. ``width`` sets the
    SmallCNN's stem channels (32 if ``None``); the ResNets' are fixed. ``pretrained`` loads
    ImageNet weights into a ``*_imagenet`` backbone (before the EnergyMask is created, so the
    layer's initialisation is the same either way). ``normalize=(mean, std)`` prepends a
    :class:`Normalize` stage.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone={backbone!r} must be one of {sorted(BACKBONES)}")
    if width is not None and backbone != "small_cnn":
        raise ValueError(f"width={width!r} applies to backbone='small_cnn' only, not backbone={backbone!r}")
    if pretrained and not backbone.endswith("_imagenet"):
        raise ValueError(f"pretrained=True needs an ImageNet backbone, not backbone={backbone!r}")
    if normalize is not None and (len(normalize) != 2 or len(normalize[0]) != in_channels):
        raise ValueError(f"normalize={normalize!r} must be (mean, std) with one entry per channel "
                         f"(in_channels={in_channels})")
    extra = {} if width is None else {"width": width}
    if pretrained:
        extra["pretrained"] = True
    model = BACKBONES[backbone](in_channels=in_channels, num_classes=num_classes, **extra)
    if normalize is not None:
        model = nn.Sequential(OrderedDict([("normalize", Normalize(*normalize)), *model.named_children()]))
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
