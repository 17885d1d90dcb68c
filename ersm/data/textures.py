"""Natural grayscale textures from the images that ship inside scikit-image.

The cluttered-digits benchmark (``digits.py``) puts handwritten digits on crops of
real photographs, and the "texture" occlusion fill (``occlusion.py``) paints occluders
with them. Every image listed in :data:`BACKGROUNDS` is part of the scikit-image wheel,
so nothing is downloaded, and each one has a licence stated in its scikit-image
docstring (CC0 or public domain; see ``data/README.md``). Images whose provenance is not
documented there (``moon``, ``page``) and images of printed characters (``text``,
``page``), which would look like extra digits, are left out on purpose.

Each texture is converted to gray, downsampled by :data:`DOWNSAMPLE` so that a 48 px
crop shows texture rather than one smooth patch, and stretched to span ``[0, 1]``.
"""

from __future__ import annotations

import functools

import numpy as np
import skimage.data
from skimage.color import rgb2gray
from skimage.transform import rescale
from skimage.util import img_as_float32

#: Names of the scikit-image sample images used as textures, in a fixed order.
#: In the cluttered-digits benchmark, digit label ``k`` is *assigned* ``BACKGROUNDS[k]``.
BACKGROUNDS: tuple[str, ...] = (
    "brick",
    "grass",
    "gravel",
    "camera",
    "coins",
    "cell",
    "clock",
    "chelsea",
    "coffee",
    "astronaut",
)

#: Scale factor applied to every texture; halving makes 48 px crops look textured.
DOWNSAMPLE = 0.5


@functools.cache
def load_texture(name: str) -> np.ndarray:
    """Load one texture as a read-only gray image.

    Args:
        name: one of :data:`BACKGROUNDS`.

    Returns:
        ``float32 [H, W]`` with values spanning exactly ``[0, 1]``. The array is
        cached and shared between callers, so it is made read-only.
    """
    if name not in BACKGROUNDS:
        raise ValueError(f"name={name!r} is not a known texture; choose one of {BACKGROUNDS}")
    image = getattr(skimage.data, name)()
    gray = rgb2gray(image) if image.ndim == 3 else img_as_float32(image)
    small = rescale(gray, DOWNSAMPLE, anti_aliasing=True)
    lo, hi = small.min(), small.max()
    # Stretch to the full range so every texture has the same contrast budget;
    # callers scale it down to the range they need.
    stretched = ((small - lo) / (hi - lo)).astype(np.float32)
    stretched.flags.writeable = False
    return stretched


def random_crop(texture: np.ndarray, size: int | tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Cut a crop at a uniformly random position fully inside ``texture``.

    Args:
        texture: ``[H, W]`` array.
        size: crop side, or ``(height, width)``.
        rng: the numpy generator that decides the position (two draws).

    Returns:
        A ``[height, width]`` view into ``texture`` (copy it before writing).
    """
    height, width = (size, size) if isinstance(size, int) else size
    if height > texture.shape[0] or width > texture.shape[1]:
        raise ValueError(f"size={size!r} does not fit inside a texture of shape {texture.shape}")
    y0 = rng.integers(texture.shape[0] - height + 1)
    x0 = rng.integers(texture.shape[1] - width + 1)
    return texture[y0 : y0 + height, x0 : x0 + width]
