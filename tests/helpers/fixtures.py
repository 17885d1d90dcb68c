"""Tiny real-dataset files in their on-disk formats (the layouts of tests/test_data.py's writers),
with a learnable signal: each class has its own mean colour."""
from __future__ import annotations

import pickle

import numpy as np
from PIL import Image
import torch
from torch import nn


def write_cifar(root, per_batch: int = 4, test: int = 6, seed: int = 0) -> None:
    """A learnable tiny CIFAR-10 (class = mean colour) in torchvision's format (tests/test_data.py's layout)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (10, 3))
    for name, count in {**{f"data_batch_{k}": per_batch for k in range(1, 6)}, "test_batch": test}.items():
        labels = rng.integers(0, 4, count)
        noise = rng.integers(0, 256, (count, 3, 1024))
        pixels = (0.6 * palette[labels][:, :, None] + 0.4 * noise).astype(np.uint8).reshape(count, 3072)
        with open(folder / name, "wb") as file:
            pickle.dump({"data": pixels, "labels": [int(k) for k in labels]}, file)
    with open(folder / "batches.meta", "wb") as file:
        pickle.dump({"label_names": [f"class{k}" for k in range(10)]}, file)


def write_pet(root, n_trainval: int = 6, n_test: int = 2) -> None:
    """A tiny Oxford-IIIT Pet: JPEG photos, trimaps (1 pet, 2 background, 3 border), split lists."""
    folder = root / "oxford-iiit-pet"
    (folder / "images").mkdir(parents=True)
    (folder / "annotations" / "trimaps").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in (("trainval", n_trainval), ("test", n_test)):
        lines = []
        for k in range(count):
            image_id, label = f"breed{k % 3}_{split}{k}", k % 3
            Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / "images" / f"{image_id}.jpg")
            trimap = np.full((40, 50), 2, np.uint8)
            trimap[10:30, 15:35] = 1
            Image.fromarray(trimap).save(folder / "annotations" / "trimaps" / f"{image_id}.png")
            lines.append(f"{image_id} {label + 1} 1 1\n")
        (folder / "annotations" / f"{split}.txt").write_text("".join(lines))


def randomise_batchnorm(model, seed: int = 1) -> None:
    """Non-trivial BatchNorm running statistics and affine parameters, so that BN folding is exercised."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                n = bn.num_features
                bn.weight.copy_(0.5 + torch.rand(n, generator=generator))
                bn.bias.copy_(0.2 * torch.randn(n, generator=generator))
                bn.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
                bn.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=generator))
