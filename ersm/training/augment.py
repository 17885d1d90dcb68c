"""Training-time augmentation: Cutout (DeVries and Taylor, 2017), the standard occlusion baseline.

``cutout`` works on a batch with an explicit generator (the engine's per-epoch one, for tensor
data); :class:`Cutout` is the same operation as a per-image torchvision-style transform drawing from
torch's global generator (which ``ersm.data.SeededTransform`` seeds per item).
"""
from __future__ import annotations

import torch
from torch import nn

from ersm.checks import check_count


def cutout(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero one ``size x size`` square per image at a uniformly random centre ``[B, C, H, W]``.

    As in the original Cutout, the square may stick out of the image (then less is hidden).
    """
    if size < 1:
        raise ValueError(f"size={size!r} must be >= 1")
    B, _, H, W = images.shape
    cy = torch.randint(0, H, (B, 1, 1), generator=generator)
    cx = torch.randint(0, W, (B, 1, 1), generator=generator)
    rows, cols = torch.arange(H).view(1, H, 1), torch.arange(W).view(1, 1, W)
    top, left = cy - size // 2, cx - size // 2
    hidden = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return images.masked_fill(hidden.unsqueeze(1).to(images.device), 0.0)


class Cutout(nn.Module):
    """``image [C, H, W] -> image`` with one ``size x size`` square zeroed (:func:`cutout`, global generator)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        check_count("size", size, 1)
        self.size = size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return cutout(image.unsqueeze(0), self.size, None)[0]

    def extra_repr(self) -> str:
        return f"size={self.size}"
