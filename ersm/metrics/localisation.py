"""Localisation: does a map (mask, energy, Grad-CAM) sit on the object's ground-truth mask?

Protocols (`docs/protocols.md#localisation`):
- Pointing game (Zhang et al., 2016; Quantus ``pointing_game.py``): a hit when the map's
  argmax lies inside the mask. Quantus uses no tolerance and leaves an empty mask undefined;
  we raise on empty masks and offer a square (Chebyshev) ``tolerance`` in pixels, which some
  works set to 15 px on 224-px images (scale it to the canvas).
- Energy-based pointing game (Score-CAM; Wang et al., 2020; Quantus
  ``attribution_localisation.py``): the share of the map's non-negative mass inside the mask.
- Per-image pixel AUROC and the IoU of the top-k pixels (k = object area): threshold-free.

Conventions: ``maps`` are ``[N, h, w]`` or ``[N, 1, h, w]``, higher = more object-like, at token
or pixel resolution; ``masks`` are bool ``[N, H, W]`` or ``[N, 1, H, W]``, True on the object.
A map whose size differs from the mask's is upsampled bilinearly (``align_corners=False``)
before scoring. Ties in a ranking go to the lower row-major pixel index. Scores come back as
``[N]`` tensors (float64 shares, bool hits).

Undefined cases, decided here: an empty mask raises ``ValueError`` in the pointing game and
top-k IoU (there is nothing to hit); a map with no positive mass gives NaN in
``energy_pointing`` and ``background_mass`` (0 would read as "all on the background" and
1 - 0 as "all background mass"; neither is what a blank map says), so average them with
``nanmean`` and report how many were NaN; an all-True or all-False mask gives NaN in
``pixel_auroc``, as ROC AUC needs both classes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ersm.checks import check_count


def upsample_to(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``maps [N, h, w] -> [N, H, W]`` (float64), bilinear with ``align_corners=False``."""
    maps = maps.to(torch.float64)
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]


def pointing_game(maps: torch.Tensor, masks: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """Hits ``[N]`` bool: the upsampled map's argmax (first pixel on ties) lies in the mask.

    With ``tolerance = t`` the mask is first dilated by a ``(2t+1) x (2t+1)`` square, i.e. a hit
    is a pixel within Chebyshev distance ``t`` of the object.
    """
    check_count("tolerance", tolerance, 0, " (pixels)")
    maps, masks = _prepare(maps, masks, allow_empty=False)
    if tolerance:
        window = 2 * tolerance + 1
        masks = F.max_pool2d(masks.unsqueeze(1).float(), window, stride=1, padding=tolerance)[:, 0] > 0
    peak = maps.flatten(1).argmax(1, keepdim=True)  # torch.argmax returns the first maximum
    return masks.flatten(1).gather(1, peak)[:, 0]


def energy_pointing(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share ``[N]`` of the map's non-negative mass (upsampled, then clamped at 0) in the mask.

    NaN for a map with no positive mass.
    """
    maps, masks = _prepare(maps, masks)
    mass = maps.clamp(min=0).flatten(1)
    total = mass.sum(1)
    inside = (mass * masks.flatten(1)).sum(1)
    return torch.where(total > 0, inside / total.clamp(min=torch.finfo(total.dtype).tiny), torch.nan)


def background_mass(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share ``[N]`` of the map's non-negative mass off the object: ``1 - energy_pointing``."""
    return 1.0 - energy_pointing(maps, masks)


def pixel_auroc(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-image ROC AUC ``[N]`` of the upsampled map as a pixel classifier of the mask.

    Computed for all images at once as the Mann-Whitney statistic with average ranks for
    ties, which equals ``sklearn.metrics.roc_auc_score`` (the tests check it). NaN where the
    mask holds only one class.
    """
    maps, masks = _prepare(maps, masks)
    values, labels = maps.flatten(1), masks.flatten(1)
    positives = labels.sum(1).double()
    negatives = labels.shape[1] - positives
    ranks = _average_ranks(values)
    u = (ranks * labels).sum(1) - positives * (positives + 1) / 2
    defined = (positives > 0) & (negatives > 0)
    return torch.where(defined, u / (positives * negatives).clamp(min=1), torch.nan)


def topk_iou(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """IoU ``[N]`` of the ``k`` highest-scoring pixels with the mask, ``k`` = the mask's area.

    Ties at the cut go to the lower row-major index (stable sort). As both sets hold ``k``
    pixels, ``IoU = i / (2k - i)`` with ``i`` the overlap.
    """
    maps, masks = _prepare(maps, masks, allow_empty=False)
    values, labels = maps.flatten(1), masks.flatten(1)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    k = labels.sum(1, keepdim=True)
    top = torch.arange(values.shape[1]).unsqueeze(0) < k  # first k positions of each ordering
    overlap = (labels.gather(1, order) & top).sum(1).double()
    return overlap / (2 * k[:, 0] - overlap)


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks along dim 1, tied values sharing the mean of their ranks: ``[N, P]`` float64."""
    order = torch.sort(values, dim=1, stable=True).indices
    ordered = values.gather(1, order)
    n, p = values.shape
    position = torch.arange(1, p + 1, dtype=torch.float64).expand(n, -1)
    # a new run of equal values starts where the sorted value changes
    starts = torch.ones(n, p, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    run = starts.cumsum(1) - 1  # run id of each sorted position
    run_sum = torch.zeros(n, p, dtype=torch.float64).scatter_add_(1, run, position)
    run_len = torch.zeros(n, p, dtype=torch.float64).scatter_add_(1, run, torch.ones(n, p, dtype=torch.float64))
    mean_rank = run_sum.gather(1, run) / run_len.gather(1, run)
    return torch.empty(n, p, dtype=torch.float64).scatter_(1, order, mean_rank)


def _prepare(maps, masks, allow_empty: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate, squeeze the channel dim, upsample: ``-> maps [N, H, W] float64, masks [N, H, W] bool``."""
    maps, masks = _squeeze("maps", maps), _squeeze("masks", masks)
    if masks.dtype != torch.bool:
        raise ValueError(f"masks must be a bool tensor (True on the object), got masks with dtype {masks.dtype}")
    if maps.shape[0] != masks.shape[0]:
        raise ValueError(f"maps has {maps.shape[0]} images but masks has {masks.shape[0]}")
    if maps.is_complex() or not torch.isfinite(maps).all():
        raise ValueError("maps contains non-finite values (NaN or inf)")
    if not allow_empty:
        empty = (~masks.flatten(1).any(1)).nonzero()[:, 0].tolist()
        if empty:
            raise ValueError(f"masks {empty[:10]} are empty (no object pixel); the score is undefined there")
    return upsample_to(maps, tuple(masks.shape[-2:])), masks


def _squeeze(name: str, x) -> torch.Tensor:
    if isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a tensor [N, H, W] or [N, 1, H, W] with N >= 1, got {name} with shape {shape}")
    return x.cpu()
