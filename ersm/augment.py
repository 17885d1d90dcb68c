"""Training-time augmentation: Cutout (DeVries and Taylor, 2017), the standard occlusion baseline."""
from __future__ import annotations

import torch


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
