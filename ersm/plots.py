"""Seaborn figure helpers shared by the notebooks. Each returns a matplotlib Figure."""
from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ersm.experiments.sparsity import relative_mask
from ersm.paths import atomic_write_bytes, figures_dir

sns.set_theme(style="whitegrid", context="notebook")


def save(fig, name: str, profile: str) -> None:
    """Write ``figures/<name>.png`` for the full profile; ci figures stay inline in the notebook."""
    if profile == "full":
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
        atomic_write_bytes(figures_dir() / f"{name}.png", buffer.getvalue())


def training_curves(history: pd.DataFrame, ce_max: float | None = None):
    """Validation and test accuracy and training cross-entropy per epoch, mean and band over seeds,
    per model; ``ce_max`` draws the convergence rule's cross-entropy bar."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    frame = history.assign(val_accuracy=100 * history["val_accuracy"], test_accuracy=100 * history["test_accuracy"])
    sns.lineplot(frame, x="epoch", y="val_accuracy", hue="model", marker="o", ax=axes[0], legend=False)
    sns.lineplot(frame, x="epoch", y="test_accuracy", hue="model", marker="o", ax=axes[1], legend=False)
    sns.lineplot(frame, x="epoch", y="cross_entropy", hue="model", marker="o", ax=axes[2])
    axes[0].set_ylabel("validation accuracy (%)")
    axes[1].set_ylabel("test accuracy (%)")
    axes[2].set_ylabel("training cross-entropy")
    axes[2].set_yscale("log")
    if ce_max is not None:
        axes[2].axhline(ce_max, color="k", lw=1, ls="--", label="convergence bar")
    axes[2].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return fig


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
    """Test images and each model's mask (seed 0) side by side, every mask on one fixed [0, 1] scale.

    One scale for all models, so a nearly flat mask looks flat (the paper's mask never exceeds 0.5).
    """
    fig, axes = plt.subplots(len(names) + 1, n, figsize=(1.6 * n + 0.8, 1.6 * (len(names) + 1)), squeeze=False)
    shown = None
    for j in range(n):
        axes[0, j].imshow(images[j, 0], cmap="gray", vmin=0, vmax=1)
        for i, name in enumerate(names, start=1):
            mask = next(m for (k, _), m in masks.items() if k == name)
            shown = axes[i, j].imshow(mask[j, 0], cmap="magma", vmin=0, vmax=1)
    for i, title in enumerate(["image", *names]):
        axes[i, 0].set_ylabel(title, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    if shown is not None:
        fig.colorbar(shown, ax=axes.ravel().tolist(), label="mask m", shrink=0.6)
    return fig


def epoch_lines(history: pd.DataFrame, columns: list[str], ylabel: str):
    """Any per-epoch columns, one panel each, mean and band over seeds per model."""
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.4), squeeze=False)
    for ax, column in zip(axes[0], columns):
        sns.lineplot(history, x="epoch", y=column, hue="model", marker="o", ax=ax, legend=ax is axes[0, 0])
        ax.set_title(column, fontsize=9)
        ax.set_ylabel(ylabel)
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

    Each column has one colour scale for all its images, with a colour bar: ``[0, 1]`` for masks
    (so the paper's mask, capped at 0.5, is seen as it is), the column's range for other maps.
    """
    fig, axes = plt.subplots(n, len(maps) + 1, figsize=(1.5 * (len(maps) + 1), 1.5 * n + 0.6), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(images[i, 0], cmap="gray", vmin=0, vmax=1)
        axes[i, 0].contour(masks[i, 0].float().numpy(), levels=[0.5], colors="red", linewidths=0.8)
    for j, (title, values) in enumerate(maps.items(), start=1):
        shown = values[:n].float()
        low, high = (0.0, 1.0) if "mask" in title else (shown.min().item(), shown.max().item())
        for i in range(n):
            image = axes[i, j].imshow(shown[i].numpy(), cmap="magma", vmin=low, vmax=high)
        bar = fig.colorbar(image, ax=axes[:, j].tolist(), location="bottom", shrink=0.9, pad=0.02)
        bar.ax.tick_params(labelsize=5)
    for j, title in enumerate(["image", *maps]):
        axes[0, j].set_title(title, fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    return fig
