"""Figures a reader can read (issue 29): mask panels relative to each image's peak, with the
absolute scale written down; 05's map grid with every image beside its maps; training curves
that read validation-split histories and older test-split ones alike."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from ersm.study import plots  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def scene(n: int = 4, side: int = 24, tokens: int = 6):
    """``images [n, 1, side, side]``, object masks ``[n, 1, side, side]`` and a mask map ``[n, tokens, tokens]``
    at the paper's scale (about 5e-4) whose peak sits on the object."""
    generator = torch.Generator().manual_seed(0)
    images = 0.2 * torch.rand(n, 1, side, side, generator=generator)
    objects = torch.zeros(n, 1, side, side, dtype=torch.bool)
    objects[:, :, 4:12, 4:12] = True
    images[objects] = 0.9
    paper = 5e-4 * (0.5 + 0.5 * torch.rand(n, tokens, tokens, generator=generator))
    paper[:, 1:3, 1:3] = 1e-3
    return images, objects, paper


def image_rows(fig) -> dict[float, list[float]]:
    """Column (rounded x centre) -> the y centres of its image panels, top to bottom, as drawn."""
    fig.canvas.draw()
    columns: dict[float, list[float]] = {}
    for ax in fig.axes:
        if ax.images:
            box = ax.get_position()
            columns.setdefault(round((box.x0 + box.x1) / 2, 3), []).append((box.y0 + box.y1) / 2)
    return {x: sorted(ys, reverse=True) for x, ys in sorted(columns.items())}


def test_map_grid_puts_every_image_beside_its_maps():
    """The colour bars took their room from the map columns only, so the image column kept the full
    height and drifted: it looked one row longer than the maps, its last image without maps."""
    images, objects, paper = scene()
    fig = plots.map_grid(images, objects, {"ERSM paper mask": paper, "magnitude (dense)": paper.neg()}, n=3)
    columns = list(image_rows(fig).values())
    assert len(columns) == 3 and all(len(rows) == 3 for rows in columns)
    for rows in columns[1:]:
        np.testing.assert_allclose(rows, columns[0], atol=1e-3)  # same rows as the image column


def test_map_grid_shows_masks_relative_and_states_their_scale():
    images, objects, paper = scene()
    fig = plots.map_grid(images, objects, {"ERSM paper mask": paper, "magnitude (dense)": paper}, n=3)
    mask_panels = [ax for ax in fig.axes if ax.images and ax.get_subplotspec().colspan.start == 1]
    assert len(mask_panels) == 3
    for ax in mask_panels:
        shown = np.asarray(ax.images[0].get_array())
        assert shown.max() == pytest.approx(1.0) and ax.images[0].get_clim() == (0.0, 1.0)  # not a black panel
    bars = [inset for ax in fig.axes for inset in ax.child_axes]  # each colour bar sits inset in its slot
    labels = [bar.get_xlabel() for bar in bars if "m / max m" in bar.get_xlabel()]
    assert labels == ["m / max m (per image)\nmax m 0.001"]  # the absolute scale, here one value for all three


def test_map_grid_refuses_more_rows_than_a_map_has():
    images, objects, paper = scene(n=4)
    with pytest.raises(ValueError, match=r"n=3 images asked for, but maps\['short mask'\] holds 2"):
        plots.map_grid(images, objects, {"short mask": paper[:2]}, n=3)


def test_mask_examples_shows_each_mask_relative_with_its_peak_in_the_title():
    images, _, paper = scene()
    masks = {("ERSM paper", 0): paper[:, None], ("ERSM paper", 1): paper[:, None] * 2,
             ("ERSM hardconcrete", 0): torch.ones_like(paper[:, None])}
    fig = plots.mask_examples(images, masks, ["ERSM paper", "ERSM hardconcrete"], n=3)
    panels = [ax for ax in fig.axes if ax.images and ax.get_title().startswith("max m")]
    assert len(panels) == 6
    for ax in panels:
        assert np.asarray(ax.images[0].get_array()).max() == pytest.approx(1.0)
        assert ax.images[0].get_clim() == (0.0, 1.0)
    assert {ax.get_title() for ax in panels} == {"max m 0.001", "max m 1"}  # seed 0's paper mask, not seed 1's
    bars = [ax for ax in fig.axes if "m / max m" in ax.get_ylabel()]
    assert len(bars) == 1 and "max m" in bars[0].get_ylabel().split("\n")[1]
    with pytest.raises(ValueError, match="names: 'ERSM meanfield' has no mask"):
        plots.mask_examples(images, masks, ["ERSM meanfield"], n=3)


def history(kind: str) -> pd.DataFrame:
    """Two models x 3 epochs: ``kind`` "old" (test-split columns), "new" (val_ columns) or "mixed"."""
    rows = []
    for model, style in (("dense", None), ("ERSM paper", "old" if kind != "new" else "new"),
                         ("ERSM calibrated", "new" if kind != "old" else "old")):
        for epoch in (1, 2, 3):
            row = {"model": model, "seed": 0, "epoch": epoch, "val_accuracy": 0.5, "cross_entropy": 1.0 / epoch}
            if style == "old":
                row |= {"test_accuracy": 0.4, "mean_mask": 5e-4 * epoch, "share_mask_below_0.1": 1.0}
            elif style == "new":
                row |= {"val_mean_mask": 0.05 * epoch, "val_share_mask_below_0.1": 0.5}
            rows.append(row)
    return pd.DataFrame(rows)


@pytest.mark.parametrize("kind, split", [("old", "test split, older histories"), ("new", "validation"),
                                         ("mixed", "validation; test split, older histories")])
def test_training_curves_read_old_and_new_histories_and_name_the_split(kind, split):
    fig = plots.training_curves(history(kind), ce_max=0.05)
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels[0] == "validation accuracy (%)" and not any("test accuracy" in label for label in labels)
    assert labels[1] == f"mean mask m\n({split})"
    statistic = plots.mask_statistic(history(kind), "mean_mask")
    assert statistic.values.notna().sum() == 6 and statistic.label == split  # the dense rows stay NaN
    lines = fig.axes[1].get_lines()
    assert len({line.get_linestyle() for line in lines if len(line.get_xdata()) == 3}) == (2 if kind == "mixed" else 1)


def test_training_curves_of_dense_models_only_have_no_mask_panel():
    fig = plots.training_curves(history("new").query("model == 'dense'"))
    assert [ax.get_ylabel() for ax in fig.axes] == ["validation accuracy (%)", "training cross-entropy"]


def test_epoch_lines_take_the_old_column_names_for_either_split():
    """Notebook 02 asks for "mean_mask" and "share_mask_below_0.1"; new histories hold them as val_."""
    fig = plots.epoch_lines(history("new"), ["mean_mask", "share_mask_below_0.1"], "value")
    assert [ax.get_title() for ax in fig.axes] == ["mean_mask\n(validation)", "share_mask_below_0.1\n(validation)"]
    fig = plots.epoch_lines(history("old"), ["mean_mask"], "value")
    assert fig.axes[0].get_title() == "mean_mask\n(test split, older histories)"
    with pytest.raises(ValueError, match="columns: 'val_loss' is not in the history"):
        plots.epoch_lines(history("new"), ["val_loss"], "value")
