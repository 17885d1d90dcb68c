"""A quick look at a dataset: images with their ground-truth masks outlined.

Works with any dataset whose items are ``(image [C, H, W], label, mask [1, H, W])``.
The figure is built with matplotlib's object-oriented API (no pyplot), so it leaves no
global figure behind and is displayed once in a notebook when returned.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure


def plot_examples(dataset, n: int = 8, ncols: int = 8, seed: int = 0) -> Figure:
    """Draw ``n`` randomly chosen items in a grid of ``ncols`` columns.

    Each panel shows the image (gray when it has one channel), the mask's outline in red,
    and a title with the label and, when the dataset has ``meta(i)["background"]``, the
    background. The items are ``np.random.default_rng(seed).choice(len(dataset), n)``
    without replacement.
    """
    if not 1 <= n <= len(dataset):
        raise ValueError(f"n={n!r} must be between 1 and the dataset size {len(dataset)}")
    if ncols < 1:
        raise ValueError(f"ncols={ncols!r} must be at least 1")
    indices = np.sort(np.random.default_rng(seed).choice(len(dataset), size=n, replace=False))
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    figure = Figure(figsize=(1.6 * ncols, 1.8 * nrows), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, index in zip(axes, indices):
        image, label, mask = dataset[int(index)]
        if image.shape[0] == 1:
            ax.imshow(image[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0)
        else:
            ax.imshow(image.permute(1, 2, 0).numpy())
        # An all-True mask (CIFAR-10) has no edge, so nothing is drawn for it.
        if mask.any() and not mask.all():
            ax.contour(mask[0].numpy().astype(float), levels=[0.5], colors="red", linewidths=0.8)
        title = f"{label}"
        if hasattr(dataset, "meta"):
            title += f" / {dataset.meta(int(index))['background']}"
        ax.set_title(title, fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    return figure
