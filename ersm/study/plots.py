"""Seaborn figure helpers shared by the notebooks. Each returns a matplotlib Figure.

Per-epoch histories (``ersm.training.engine``): training scores the validation split only, so a history
holds ``val_accuracy`` and, for an ERSM model, the mask statistics ``val_mean_mask`` and
``val_share_mask_below_<t>``. Histories recorded before the test split was sealed hold the same
statistics on the test split, under ``mean_mask`` and ``share_mask_below_<t>`` (and a
``test_accuracy`` that nothing here plots). :func:`mask_statistic` reads either and says which
split each value came from; the figures name it in their axis labels and titles.

Masks are drawn relative to each image's peak, ``m / max m`` on one ``[0, 1]`` scale with a colour
bar, and the absolute scale (each image's ``max m``, or the range of those maxima) is written in
the panel titles or the colour-bar label: the paper's mask lies around 5e-4, which on an
absolute ``[0, 1]`` scale is a black panel that says nothing about its shape.
"""
from __future__ import annotations

import io
from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.ticker import MaxNLocator

from ersm.checks import check_count
from ersm.training.engine import MASK_THRESHOLDS, VALIDATION_PREFIX
from ersm.experiments.sparsity import relative_mask
from ersm.paths import atomic_write_bytes, figures_dir

sns.set_theme(style="whitegrid", context="notebook")

# the per-epoch mask statistics, as named in histories from before the test split was sealed;
# newer histories hold them with VALIDATION_PREFIX ("val_mean_mask", ...)
MASK_STATISTICS = ("mean_mask", *(f"share_mask_below_{t}" for t in MASK_THRESHOLDS))
VALIDATION, OLD_TEST = "validation", "test split, older histories"
RELATIVE_LABEL = "relative mask m / max m (per image)"


def save(fig, name: str, profile: str) -> None:
    """Write ``figures/<name>.png`` for the full profile; ci figures stay inline in the notebook."""
    if profile == "full":
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
        atomic_write_bytes(figures_dir() / f"{name}.png", buffer.getvalue())


class Statistic(NamedTuple):
    """A per-epoch mask statistic of a history frame (:func:`mask_statistic`), one entry per row."""

    values: pd.Series   # [rows] float; NaN where the row's history has none (dense models)
    split: pd.Series    # [rows] where each value came from: VALIDATION, OLD_TEST, or None
    label: str          # the splits present, for an axis label: "validation", OLD_TEST, both, or "not recorded"


def mask_statistic(history: pd.DataFrame, column: str) -> Statistic:
    """A per-epoch mask statistic of a history frame, from the validation split where recorded.

    ``column`` is the statistic's plain name (``"mean_mask"``, ``"share_mask_below_0.1"``; a
    ``"val_"`` name is taken as its plain name). Each row takes the validation value
    (``val_<column>``) where its history has one, else the test-split value an older history
    recorded under ``<column>``; rows without either (dense models) are NaN. The label joins
    the splits present with ``"; "`` when the frame mixes old and new histories.
    """
    name = column[len(VALIDATION_PREFIX):] if column.startswith(VALIDATION_PREFIX) else column
    if name not in MASK_STATISTICS:
        raise ValueError(f"column={column!r} is not a per-epoch mask statistic; those are {list(MASK_STATISTICS)} "
                         f"(or with the prefix {VALIDATION_PREFIX!r})")
    missing = pd.Series(np.nan, index=history.index, dtype=float)
    validation = history[VALIDATION_PREFIX + name] if VALIDATION_PREFIX + name in history else missing
    old = history[name] if name in history else missing
    values = validation.where(validation.notna(), old).astype(float)
    split = pd.Series(np.where(validation.notna(), VALIDATION, np.where(old.notna(), OLD_TEST, None)), index=history.index)
    present = [kind for kind in (VALIDATION, OLD_TEST) if (split == kind).any()]
    return Statistic(values, split, "; ".join(present) or "not recorded")


def _split_style(statistic: Statistic) -> dict:
    """``lineplot`` arguments that draw old (test-split) histories dashed when a frame mixes both splits."""
    present = [kind for kind in (VALIDATION, OLD_TEST) if (statistic.split == kind).any()]
    return dict(style="split", style_order=present) if len(present) > 1 else {}


def training_curves(history: pd.DataFrame, ce_max: float | None = None):
    """Per epoch, mean and band over seeds, per model: validation accuracy, the mean mask (ERSM
    models; when any row has one) and the training cross-entropy; ``ce_max`` draws the
    convergence rule's cross-entropy bar.

    Training never scores the test split, so no test accuracy is drawn (older histories' is
    left out too). The mean mask comes from the validation split; rows of older histories give
    their test-split value instead, and the axis label says which split the panel shows.
    """
    statistic = mask_statistic(history, "mean_mask")
    with_mask = bool(statistic.values.notna().any())
    frame = history.assign(val_accuracy=100 * history["val_accuracy"], mean_mask=statistic.values, split=statistic.split)
    fig, axes = plt.subplots(1, 3 if with_mask else 2, figsize=(15 if with_mask else 10.5, 3.8))
    palette = _palette(frame)
    sns.lineplot(frame, x="epoch", y="val_accuracy", hue="model", marker="o", ax=axes[0], legend=False, palette=palette)
    axes[0].set_ylabel("validation accuracy (%)")
    if with_mask:
        style = _split_style(statistic)
        sns.lineplot(frame.dropna(subset=["mean_mask"]), x="epoch", y="mean_mask", hue="model", marker="o", ax=axes[1],
                     legend="auto" if style else False, palette=palette, **style)
        if style:  # the models are named in the last panel's legend; this one adds the line style of each split
            handles, labels = axes[1].get_legend_handles_labels()
            keep = [k for k, label in enumerate(labels) if label in (VALIDATION, OLD_TEST)]
            axes[1].legend([handles[k] for k in keep], [labels[k] for k in keep], fontsize=7)
        axes[1].set_ylabel(f"mean mask m\n({statistic.label})")
        if (statistic.values.dropna() > 0).all():  # the variants' masks differ by orders of magnitude (paper ~5e-4)
            axes[1].set_yscale("log")
    sns.lineplot(frame, x="epoch", y="cross_entropy", hue="model", marker="o", ax=axes[-1], palette=palette)
    axes[-1].set_ylabel("training cross-entropy")
    axes[-1].set_yscale("log")
    if ce_max is not None:
        axes[-1].axhline(ce_max, color="k", lw=1, ls="--", label="convergence bar")
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return fig


def _palette(frame: pd.DataFrame) -> dict:
    """One colour per model, the same in every panel even where a panel leaves some models out."""
    models = list(dict.fromkeys(frame["model"]))
    return dict(zip(models, sns.color_palette(n_colors=len(models))))


def tuning_tradeoff(report: pd.DataFrame):
    """Every ERSM tuning trial: validation accuracy against mask sparsity and against mask AUROC."""
    frame = report[report["family"] != "dense"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, x, label in ((axes[0], "sparsity", "mask sparsity on validation (1 - kept mass)"),
                         (axes[1], "mask_auroc", "mask pixel AUROC on validation")):
        sns.scatterplot(frame, x=x, y="val_accuracy", hue="family", style="selected", s=60, ax=ax, legend=ax is axes[1])
        ax.set_xlabel(label)
        ax.set_ylabel("validation accuracy (%)")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return fig


def mask_histograms(masks: dict, names: list[str]):
    """Histograms of raw mask values and of the relative mask m / max(m), per model (seed 0)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for name in names:
        mask = next(m for (n, _), m in masks.items() if n == name)
        relative = relative_mask(mask)
        axes[0].hist(mask.flatten().numpy(), bins=60, alpha=0.55, label=name, density=True)
        axes[1].hist(relative.flatten().numpy(), bins=60, alpha=0.55, label=name, density=True)
    axes[0].set_xlabel("mask m")
    axes[1].set_xlabel("relative mask m / max(m)")
    axes[1].axvline(0.5, color="k", lw=1, ls="--")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def mask_examples(images, masks: dict, names: list[str], n: int = 6):
    """The first ``n`` test images and each model's mask, one row per model, on one colour scale.

    Args:
        images: ``[N, C, H, W]`` in ``[0, 1]`` (``C`` = 1 grey, 3 RGB).
        masks: ``(model name, seed) -> mask [N, 1, h, w]`` (``sparsity.mask_frame``); each row
            shows the first seed listed for its name, named in the row label.
        names: the models to show, one row each, in this order.
        n: images (columns) to show.

    Each mask panel shows the relative mask ``m / max m`` of that image on one ``[0, 1]`` scale
    (one colour bar), so the shape of a mask is seen whatever its size, and a flat mask is a
    flat panel; the panel's title gives the absolute scale, the image's ``max m``.
    """
    chosen = {name: _first_mask(masks, name) for name in names}
    n = _check_count(n, images=len(images), **{f"masks[{name!r}]": len(mask) for name, (_, mask) in chosen.items()})
    fig, axes = plt.subplots(len(names) + 1, n, figsize=(1.6 * n + 1.2, 1.75 * (len(names) + 1)), squeeze=False)
    shown = None
    for j in range(n):
        _show_image(axes[0, j], images[j])
        for i, name in enumerate(names, start=1):
            mask = chosen[name][1][j].detach().float().cpu()     # [1, h, w]
            peak = mask.max().item()
            shown = axes[i, j].imshow(relative_mask(mask[None])[0, 0].numpy(), cmap="magma", vmin=0, vmax=1)
            axes[i, j].set_title(f"max m {_number(peak)}", fontsize=7, pad=2)
    axes[0, 0].set_ylabel("image", fontsize=7)
    for i, name in enumerate(names, start=1):
        axes[i, 0].set_ylabel(f"{name}\nseed {chosen[name][0]}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
        ax.grid(False)
    fig.tight_layout()
    if shown is not None:
        bar = fig.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.6)
        bar.set_label(f"{RELATIVE_LABEL}\nabsolute scale: max m in each panel's title", fontsize=8)
    return fig


def _first_mask(masks: dict, name: str) -> tuple[object, torch.Tensor]:
    """``(seed, mask)`` of the first entry of ``masks`` for model ``name``."""
    found = next(((seed, mask) for (model, seed), mask in masks.items() if model == name), None)
    if found is None:
        raise ValueError(f"names: {name!r} has no mask in masks, which holds {sorted({m for m, _ in masks})}")
    return found


def _check_count(n, **available: int) -> int:
    """``n`` when every input holds at least ``n`` items; else ``ValueError`` naming the short one."""
    check_count("n", n, 1)
    for argument, count in available.items():
        if count < n:
            raise ValueError(f"n={n} images asked for, but {argument} holds {count}")
    return n


def _show_image(ax, image) -> None:
    """``image [C, H, W]`` in ``[0, 1]``: grey for one channel, colour for three."""
    image = torch.as_tensor(image).detach().float().cpu()
    if image.shape[0] == 3:
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
    else:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)


def _number(value: float) -> str:
    """Two significant digits, e.g. ``0.00048``, ``0.031``, ``1``."""
    return f"{value:.2g}"


def _span(low: float, high: float) -> str:
    """``"0.00048 to 0.00071"``, or one number when both read the same."""
    return _number(low) if _number(low) == _number(high) else f"{_number(low)} to {_number(high)}"


def epoch_lines(history: pd.DataFrame, columns: list[str], ylabel: str):
    """Any per-epoch columns, one panel each, mean and band over seeds per model.

    A mask statistic (``"mean_mask"``, ``"share_mask_below_<t>"``, or its ``val_`` name) is read
    with :func:`mask_statistic`: the validation value, else an older history's test-split
    value; the panel's title names the split. Other columns are drawn as they are.
    """
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.4), squeeze=False)
    for ax, column in zip(axes[0], columns):
        name = column[len(VALIDATION_PREFIX):] if column.startswith(VALIDATION_PREFIX) else column
        style = {}
        if name in MASK_STATISTICS:
            statistic = mask_statistic(history, name)
            frame = history.assign(**{column: statistic.values, "split": statistic.split}).dropna(subset=[column])
            title, style = f"{name}\n({statistic.label})", _split_style(statistic)
        elif column in history:
            frame, title = history, column
        else:
            raise ValueError(f"columns: {column!r} is not in the history; its columns are {list(history.columns)}")
        sns.lineplot(frame, x="epoch", y=column, hue="model", marker="o", ax=ax, legend=ax is axes[0, -1],
                     palette=_palette(history), **style)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(ylabel)
    if axes[0, -1].get_legend() is not None:  # beside the panels, not over the first one's lines
        sns.move_legend(axes[0, -1], "center left", bbox_to_anchor=(1.02, 0.5), fontsize=7, title_fontsize=8)
    fig.tight_layout()
    return fig


def robustness_curves(curves: pd.DataFrame):
    """Accuracy against occluded share, one panel per (kind, fill), mean and band over seeds."""
    grid = sns.relplot(curves, x="fraction", y="accuracy", hue="model", col="kind", row="fill", kind="line",
                       marker="o", height=2.8, aspect=1.2, errorbar=("ci", 95))
    grid.set_axis_labels("occluded share", "accuracy (%)")
    return grid.figure


def deletion_curves(curves: dict[str, np.ndarray], title: str):
    """Mean curve per ranking method over the removed share ``[S]``."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, values in curves.items():
        ax.plot(np.linspace(0, 1, values.shape[-1]), values.mean(axis=0), label=name)
    ax.set_xlabel("share of tokens removed")
    ax.set_ylabel("probability of the predicted class")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def map_grid(images, masks, maps: dict, n: int = 6):
    """Image with its ground-truth outline, then each token map, for the first ``n`` images.

    Args:
        images: ``[N, C, H, W]`` in ``[0, 1]``.
        masks: ground-truth object masks ``[N, 1, H, W]`` (drawn as a red outline).
        maps: column title -> token map ``[N, h, w]``; a title containing ``"mask"`` marks an
            Energy-Mask map ``m``.
        n: images (rows) to show.

    One row per image, one column per map, each column with its colour bar in a row of its
    own beneath the grid. The bars get their own row (not space taken from their column), so
    every column keeps the same row heights and each image stays beside its maps. Mask columns
    show ``m / max m`` of each image on ``[0, 1]``; the colour-bar label gives the absolute
    scale, the range of the shown images' ``max m``. Other maps share the column's range.
    """
    n = _check_count(n, images=len(images), masks=len(masks), **{f"maps[{t!r}]": len(v) for t, v in maps.items()})
    columns = len(maps) + 1
    fig = plt.figure(figsize=(1.5 * columns, 1.5 * n + 1.0))
    grid = fig.add_gridspec(n + 1, columns, height_ratios=[1.0] * n + [0.07], hspace=0.12, wspace=0.1)
    axes = np.array([[fig.add_subplot(grid[i, j]) for j in range(columns)] for i in range(n)])
    for i in range(n):
        _show_image(axes[i, 0], images[i])
        axes[i, 0].contour(masks[i, 0].float().cpu().numpy(), levels=[0.5], colors="red", linewidths=0.8)
    for j, (title, values) in enumerate(maps.items(), start=1):
        shown = torch.as_tensor(values[:n]).detach().float().cpu()       # [n, h, w]
        if "mask" in title:
            peaks = shown.flatten(1).amax(1)
            shown, low, high = relative_mask(shown), 0.0, 1.0
            label = f"m / max m (per image)\nmax m {_span(peaks.min().item(), peaks.max().item())}"
        else:
            low, high, label = shown.min().item(), shown.max().item(), "shared by the column"
        for i in range(n):
            image = axes[i, j].imshow(shown[i].numpy(), cmap="magma", vmin=low, vmax=high)
        slot = fig.add_subplot(grid[n, j])
        slot.axis("off")
        # the bar is 80% of its column wide, so that neighbouring bars' end labels do not run together
        bar = fig.colorbar(image, cax=slot.inset_axes([0.1, 0.0, 0.8, 1.0]), orientation="horizontal")
        if "mask" in title:
            bar.set_ticks([0.0, 0.5, 1.0])
        else:
            bar.ax.xaxis.set_major_locator(MaxNLocator(3))
        bar.ax.tick_params(labelsize=5)
        bar.set_label(label, fontsize=6, labelpad=1)
    for j, title in enumerate(["image", *maps]):
        axes[0, j].set_title(title, fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
        ax.grid(False)
    return fig
