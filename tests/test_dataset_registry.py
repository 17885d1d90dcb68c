"""Issue 33: a dataset is one registry entry (ersm/data/registry.py); everything else follows.

A toy file-based dataset is registered for the test alone, with nothing else changed: configs
accept it and take its channels, classes and size; the splits open, cut and transform it; its
capabilities are its flags; a model trains on it through the cache.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

import ersm.data
import ersm.data.splits as splits
import ersm.training.cache
from ersm.training.config import DATASETS, TrainConfig
from ersm.data.registry import REGISTRY, DatasetEntry, DatasetSpec, entry


class ToyShapes(Dataset):
    """``(image [1, 16, 16], label in 0..2, mask [1, 16, 16])``: a bright square whose size is the label."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        label = index % 3
        mask = torch.zeros(1, 16, 16, dtype=torch.bool)
        mask[:, 2:6 + 3 * label, 2:6 + 3 * label] = True
        return mask.float() * 0.9, label, mask


TOY = DatasetEntry(DatasetSpec(1, 3, 16, None, None, True), composed=False,
                   open_part=lambda root, part, download: ToyShapes(60 if part == "train" else 12),
                   train_steps=lambda side: [], eval_view=lambda side: None)


@pytest.fixture
def toy(tmp_path, monkeypatch):
    monkeypatch.setenv("ERSM_HOME", str(tmp_path))
    monkeypatch.setitem(REGISTRY, "toy_shapes", TOY)
    splits._base.cache_clear()
    yield TrainConfig(dataset="toy_shapes", n_train=24, n_val=8, n_test=12, epochs=1, batch_size=8, width=4, device="cpu")
    splits._base.cache_clear()


def test_one_entry_makes_a_dataset_everywhere(toy):
    assert "toy_shapes" in DATASETS and (toy.in_channels, toy.num_classes, toy.image_size) == (1, 3, 16)
    assert ersm.data.capabilities("toy_shapes") == {"object_masks": True, "background_swap": False, "scene_metadata": False}
    images, labels, masks = ersm.data.load_split(toy, "validation")
    assert images.shape == (8, 1, 16, 16) and masks.dtype == torch.bool and set(labels.tolist()) <= {0, 1, 2}
    assert ersm.data.load_split(toy, "test")[0].shape == (12, 1, 16, 16)
    model = ersm.training.cache.get_model(toy.replace(model="paper", proj_dim=4))
    assert model(images).shape == (8, 3)


def test_the_entry_s_flags_decide_what_a_config_may_ask(toy):
    with pytest.raises(ValueError, match="test_seed=3 applies to a composed dataset"):
        toy.replace(test_seed=3)
    with pytest.raises(ValueError, match="background_label_correlation=0.5 applies to a dataset with background swaps"):
        toy.replace(background_label_correlation=0.5)
    with pytest.raises(ValueError, match="background='swapped' applies to"):
        ersm.data.load_split(toy, "validation", background="swapped")
    with pytest.raises(ValueError, match="no per-item metadata"):
        ersm.data.split_metadata(toy, "test")


def test_an_unknown_dataset_and_an_incomplete_entry_are_refused():
    with pytest.raises(ValueError, match="dataset='mnist' is unknown"):
        entry("mnist")
    with pytest.raises(ValueError, match="dataset='mnist'"):
        TrainConfig(dataset="mnist")
    with pytest.raises(ValueError, match="needs open_part"):
        DatasetEntry(DatasetSpec(1, 3, 16, None, None, False), composed=False)
    with pytest.raises(ValueError, match="need a dataset composed"):
        DatasetEntry(DatasetSpec(1, 3, 16, None, None, False), composed=False, background_swap=True,
                     open_part=TOY.open_part, train_steps=TOY.train_steps, eval_view=TOY.eval_view)


def test_the_registry_is_a_leaf():
    """It imports nothing from ersm at import time, so that ersm.training.config can import it."""
    import ast
    from pathlib import Path
    tree = ast.parse(Path(ersm.data.registry.__file__).read_text())
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert all(not (isinstance(n, ast.ImportFrom) and (n.level or (n.module or "").startswith("ersm"))) for n in top_level)
