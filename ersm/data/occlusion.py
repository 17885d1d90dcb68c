"""Structured occlusion for the robustness claim (claim 3, `docs/design.md#the-five-claims`).

``occlusion_mask`` decides *where* to hide, ``occlude`` decides *what* to paint there.
Both work on a whole batch at once: a boolean mask ``[B, 1, H, W]`` (True = hidden) is
built with tensor operations, then ``torch.where`` fills it. All randomness comes from a
CPU ``torch.Generator`` seeded with ``seed`` (never the global RNG), so a call is
reproducible on any device; the mask is drawn first, so ``occlusion_mask(..., seed=s)``
is exactly the region that ``occlude(..., seed=s)`` paints. Note that the draw for an
image depends on the batch it sits in (its position and the batch size).

Kinds (``fraction`` is of the image area unless said otherwise):

- ``"square"``: one square of side ``round(sqrt(fraction * H * W))`` (at most
  ``min(H, W)``) at a random position fully inside the image.
- ``"rectangle"``: one rectangle of the same area with a random aspect ratio,
  log-uniform in [1/3, 3], fully inside the image.
- ``"object"``: a fraction of each image's *object* pixels (``masks``): the
  ``ceil(fraction * area)`` object pixels nearest (Chebyshev distance, random tie-break)
  to a random object pixel, plus every background pixel strictly closer than the
  farthest of them. The covered object share is exact, and the occluder is a solid block
  rather than a silhouette that would trace the object's outline.
- ``"grid"``: hide-and-seek (Singh & Lee, 2017): the image is cut into ``grid x grid``
  cells and ``round(fraction * grid**2)`` of them are hidden, chosen per image. The
  covered share is a multiple of ``1 / grid**2`` (exact when ``grid`` divides H and W).

Fills: ``"zero"``; ``"mean"`` (per-channel mean of the batch passed, or ``fill_value``);
``"noise"`` (uniform [0, 1]); ``"texture"`` (a random crop of a scikit-image texture,
see ``textures.py``, the same on every channel).
"""

from __future__ import annotations

import math

import torch

from .textures import BACKGROUNDS, load_texture

KINDS = ("square", "rectangle", "object", "grid")
FILLS = ("zero", "mean", "noise", "texture")
MAX_ASPECT = 3.0


def occlusion_mask(
    images: torch.Tensor,
    fraction: float,
    kind: str = "square",
    seed: int = 0,
    masks: torch.Tensor | None = None,
    grid: int = 8,
) -> torch.Tensor:
    """Where :func:`occlude` hides pixels, as ``bool [B, 1, H, W]`` (True = hidden).

    Args:
        images: ``[B, C, H, W]``; only its shape and device are used.
        fraction: in [0, 1], of the image area (of the object area for ``"object"``).
        kind: one of :data:`KINDS`.
        seed: seeds the CPU generator that places the occluders.
        masks: ``bool [B, 1, H, W]`` object masks, needed by ``"object"`` only.
        grid: cells per side for ``"grid"``.
    """
    _check(images, fraction, kind, masks, grid)
    generator = torch.Generator().manual_seed(seed)
    return _mask(images.shape, fraction, kind, generator, masks, grid).to(images.device)


def occlude(
    images: torch.Tensor,
    fraction: float,
    kind: str = "square",
    fill: str = "zero",
    seed: int = 0,
    masks: torch.Tensor | None = None,
    grid: int = 8,
    fill_value: float | None = None,
    texture: str = "gravel",
) -> torch.Tensor:
    """Return a copy of ``images [B, C, H, W]`` with the occluded region filled.

    Args: as :func:`occlusion_mask`, plus
        fill: one of :data:`FILLS`.
        fill_value: the constant for ``fill="mean"`` instead of the batch mean.
        texture: the texture for ``fill="texture"``, one of ``BACKGROUNDS``.
    """
    _check(images, fraction, kind, masks, grid)
    if fill not in FILLS:
        raise ValueError(f"fill={fill!r} is not one of {FILLS}")
    if fill_value is not None and fill != "mean":
        raise ValueError(f"fill_value={fill_value!r} is only used with fill='mean', got fill={fill!r}")
    if fill == "texture":
        if texture not in BACKGROUNDS:
            raise ValueError(f"texture={texture!r} is not one of {BACKGROUNDS}")
        if any(side > limit for side, limit in zip(images.shape[2:], load_texture(texture).shape)):
            raise ValueError(
                f"texture={texture!r} {load_texture(texture).shape} is smaller than "
                f"the images {tuple(images.shape[2:])}"
            )
    if fraction == 0:
        return images.clone()
    generator = torch.Generator().manual_seed(seed)
    hidden = _mask(images.shape, fraction, kind, generator, masks, grid).to(images.device)
    paint = _fill(images, fill, generator, fill_value, texture)
    return torch.where(hidden, paint, images)


# -- validation -----------------------------------------------------------------


def _check(images, fraction, kind, masks, grid) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images={shape} must be a tensor of shape [B, C, H, W]")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction={fraction!r} is outside [0, 1]")
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {KINDS}")
    if kind == "object":
        expected = (images.shape[0], 1, *images.shape[2:])
        if masks is None:
            raise ValueError("masks=None, but kind='object' needs the object masks [B, 1, H, W]")
        if tuple(masks.shape) != expected or masks.dtype != torch.bool:
            raise ValueError(f"masks={tuple(masks.shape)} ({masks.dtype}) must be bool of shape {expected}")
        empty = torch.nonzero(~masks.flatten(1).any(1)).flatten()
        if len(empty):
            raise ValueError(f"masks: image(s) {empty.tolist()} have no object pixels to occlude")
    if kind == "grid" and not 1 <= grid <= min(images.shape[2:]):
        raise ValueError(f"grid={grid!r} must be between 1 and the image side {min(images.shape[2:])}")


# -- where ------------------------------------------------------------------------


def _mask(shape, fraction, kind, generator, masks, grid) -> torch.Tensor:
    batch, _, height, width = shape
    if fraction == 0:
        return torch.zeros(batch, 1, height, width, dtype=torch.bool)
    if kind == "object":
        return _object_mask(masks.cpu(), fraction, generator)
    if kind == "grid":
        return _grid_mask(batch, height, width, fraction, grid, generator)
    area = fraction * height * width
    if kind == "square":
        side = min(round(math.sqrt(area)), height, width)
        sizes = torch.full((batch, 2), side)
    else:
        aspect = torch.exp((torch.rand(batch, generator=generator) * 2 - 1) * math.log(MAX_ASPECT))
        rows = (area * aspect).sqrt().round().clamp(1, height)
        cols = (area / rows).round().clamp(1, width)
        rows = (area / cols).round().clamp(1, height)  # re-balance when cols hit the border
        sizes = torch.stack([rows, cols], 1).long()
    return _boxes(sizes, height, width, generator)


def _boxes(sizes: torch.Tensor, height: int, width: int, generator) -> torch.Tensor:
    """One box per image, ``sizes [B, 2]`` as (rows, cols), placed uniformly inside."""
    room = torch.tensor([height, width]) - sizes + 1
    start = (torch.rand(sizes.shape, generator=generator) * room).long()
    y, x = torch.arange(height), torch.arange(width)
    inside_y = (y >= start[:, :1]) & (y < start[:, :1] + sizes[:, :1])  # [B, H]
    inside_x = (x >= start[:, 1:]) & (x < start[:, 1:] + sizes[:, 1:])  # [B, W]
    return (inside_y[:, :, None] & inside_x[:, None, :])[:, None]


def _grid_mask(batch, height, width, fraction, grid, generator) -> torch.Tensor:
    hidden_cells = round(fraction * grid * grid)
    order = torch.rand(batch, grid * grid, generator=generator).argsort(1)
    chosen = torch.zeros(batch, grid * grid, dtype=torch.bool)
    chosen.scatter_(1, order[:, :hidden_cells], True)
    # Cell of each pixel; integer division spreads any remainder over the cells.
    cell_y = torch.arange(height) * grid // height
    cell_x = torch.arange(width) * grid // width
    cell = cell_y[:, None] * grid + cell_x[None, :]  # [H, W]
    return chosen[:, cell][:, None]


def _object_mask(masks: torch.Tensor, fraction: float, generator) -> torch.Tensor:
    batch, _, height, width = masks.shape
    objects = masks[:, 0].flatten(1)  # [B, HW]
    area = objects.sum(1)
    # The small epsilon keeps 0.3 * 100 = 30.000000000000004 from rounding up to 31.
    wanted = torch.ceil(fraction * area.double() - 1e-9).long()  # [B]
    centre = torch.multinomial(objects.float(), 1, generator=generator)[:, 0]
    cy, cx = centre // width, centre % width
    y, x = torch.arange(height), torch.arange(width)
    distance = torch.maximum(
        (y[None, :, None] - cy[:, None, None]).abs(), (x[None, None, :] - cx[:, None, None]).abs()
    ).flatten(1)  # [B, HW], Chebyshev
    # Ties within one distance ring are broken by a random key in [0, 1).
    score = distance + torch.rand(distance.shape, generator=generator)
    score = torch.where(objects, score, torch.inf)
    rank = score.argsort(1).argsort(1)
    covered_objects = objects & (rank < wanted[:, None])
    farthest = torch.where(covered_objects, distance, -1).max(1).values  # -1 when nothing is covered
    hidden = covered_objects | (distance < farthest[:, None])
    return hidden.view(batch, 1, height, width)


# -- what ---------------------------------------------------------------------------


def _fill(images, fill, generator, fill_value, texture) -> torch.Tensor:
    """Something broadcastable to ``images`` to paint into the hidden pixels."""
    if fill == "zero":
        return torch.zeros((), dtype=images.dtype, device=images.device)
    if fill == "mean":
        if fill_value is not None:
            return torch.tensor(float(fill_value), dtype=images.dtype, device=images.device)
        return images.mean((0, 2, 3), keepdim=True)
    if fill == "noise":
        noise = torch.rand(images.shape, generator=generator, dtype=images.dtype)
        return noise.to(images.device)
    return _texture_crops(images.shape, texture, generator).to(images.device, images.dtype)


def _texture_crops(shape, texture: str, generator) -> torch.Tensor:
    """``[B, 1, H, W]`` random crops of one texture, one crop per image."""
    batch, _, height, width = shape
    source = torch.tensor(load_texture(texture))  # a copy: the cached array is read-only
    room = torch.tensor([source.shape[0] - height + 1, source.shape[1] - width + 1])
    start = (torch.rand(batch, 2, generator=generator) * room).long()
    rows = start[:, :1] + torch.arange(height)  # [B, H]
    cols = start[:, 1:] + torch.arange(width)  # [B, W]
    return source[rows[:, :, None], cols[:, None, :]][:, None]
