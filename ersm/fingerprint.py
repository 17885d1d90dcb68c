"""A fingerprint of the CPU numerics training depends on: ``python -m ersm fingerprint``.

Renders 128 images of the cluttered-digits benchmark (numpy, OpenBLAS, scikit-image and torch's
resampling), trains a tiny SmallCNN with an Energy-Mask Layer on them for 30 AdamW steps (``ersm.engine.train_step``,
the step every training run takes), and
hashes the images and the weights. Two machines that print the same hash run the same floating-point
kernels for everything the notebooks train; a different hash means every committed number
may differ. ``REFERENCE`` holds the hash of portable mode (ersm/numerics.py) per torch
version, measured where the committed ``ci`` notebooks were executed.
"""
from __future__ import annotations

import hashlib

import torch

from ersm import numerics
from ersm.data import ClutteredDigits
from ersm.engine import train_step
from ersm.models import build_model
from ersm.seeding import seed_everything

# measured 2026-11-23 on an Intel Xeon (AVX-512) in portable mode; tests/test_numerics.py checks it
# (e933b7aee2bf99cf before the validation split changed the training images)
REFERENCE = {"2.14.1+cu130": "998ab8edcfdfde23"}


def weights_hash(steps: int = 30) -> str:
    """SHA-256 prefix of the images and of the weights after ``steps`` training steps (2 threads, seed 0)."""
    seed_everything(0, threads=2)
    generator = torch.Generator().manual_seed(0)
    images, labels, _ = ClutteredDigits("train", 128, canvas=48, seed=0).tensors()
    model = build_model("small_cnn", width=8, energy_mask=dict(proj_dim=8))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    for _ in range(steps):
        index = torch.randint(0, len(images), (32,), generator=generator)
        train_step(model, images[index], labels[index], optimizer, beta=1.0)  # the engine's own step
    data = images.numpy().tobytes() + b"".join(p.detach().contiguous().numpy().tobytes() for p in model.parameters())
    return hashlib.sha256(data).hexdigest()[:16]


def main() -> int:
    digest = weights_hash()
    expected = REFERENCE.get(torch.__version__)
    facts = numerics.describe()
    print(f"weights {digest}  kernels {facts['kernels']} (in force: {facts['portable_in_force']})  "
          f"ATen {facts['aten_capability']}  MKL {facts['mkl_branch']}  oneDNN {'on' if facts['onednn_enabled'] else 'off'}  "
          f"torch {facts['torch']}  cpu {facts['cpu_model']}")
    if expected is None:
        print(f"no reference hash is recorded for torch {torch.__version__}")
        return 0
    same = digest == expected
    print(f"reference {expected}: {'same numerics as the committed results' if same else 'DIFFERENT numerics: committed outputs will not match'}")
    return 0 if same else 1
