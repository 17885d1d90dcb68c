"""A fingerprint of the CPU numerics training depends on: ``python -m ersm fingerprint``.

Renders 128 images of the cluttered-digits benchmark (numpy, OpenBLAS, scikit-image and torch's
resampling), trains a tiny SmallCNN with an Energy-Mask Layer on them for 30 AdamW steps (``ersm.engine.train_step``,
the step every training run takes), and
hashes the images and the weights. Two machines that print the same hash run the same floating-point
kernels for everything the notebooks train; a different hash means every committed number
may differ. ``REFERENCE`` holds the hash of portable mode (ersm/numerics.py) per torch
version, measured where the committed ``ci`` notebooks were executed; ``OTHER_CPUS`` the
portable-mode hashes measured on CPUs that compute differently all the same.

Portable mode does not make every x86-64 CPU agree (measured 2026-11-30): an AMD EPYC without
AVX-512 and an Intel Xeon with it print different hashes with every pin in force on both. On
the AMD the images and the hash stay the same whatever MKL's thread count, instruction limit or
OpenBLAS's cache-size setting, and MKL's ``COMPATIBLE`` branch gives other products than its
automatic one; the cause is not found. ``reference_problem`` therefore tells, before nbval
runs, whether this CPU can reproduce the committed outputs at all.
"""
from __future__ import annotations

import hashlib

import torch

from ersm import numerics
from ersm.data import ClutteredDigits
from ersm.engine import train_step
from ersm.models import build_model
from ersm.seeding import seed_everything

# measured 2026-11-30 on an AMD EPYC (AVX2, no AVX-512) in portable mode, where the committed ci notebooks were
# executed; tests/test_numerics.py checks that a machine prints it or one of OTHER_CPUS
REFERENCE = {"2.14.1+cu130": "08d79f2c490dd1fb"}
# portable-mode hashes of other CPUs, which cannot reproduce the committed outputs (nbval is skipped there)
OTHER_CPUS = {"2.14.1+cu130": {"998ab8edcfdfde23": "an Intel Xeon with AVX-512 (2026-11-23; the reference until then)"}}


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


def measured_before(digest: str) -> str | None:
    """The CPU on which ``digest`` was measured before (``OTHER_CPUS``), or ``None``."""
    return OTHER_CPUS.get(torch.__version__, {}).get(digest)


def reference_problem(digest: str | None = None) -> str | None:
    """One line saying why this CPU cannot reproduce the committed outputs (its fingerprint is not
    ``REFERENCE``), or ``None`` when it can or no reference is recorded for this torch."""
    expected = REFERENCE.get(torch.__version__)
    if expected is None:
        return None
    digest = digest or weights_hash()
    if digest == expected:
        return None
    known = measured_before(digest)
    seen = f"as measured before on {known}" if known else "a CPU not measured before"
    return (f"nbval skipped: this CPU's portable kernels compute fingerprint {digest} ({seen}), the committed notebook "
            f"outputs were made where it is {expected}, so every trained number would differ; run `make unit` for "
            "the unit tests, and `make reproduce` to execute the notebooks afresh (their numbers will be this machine's own)")


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
    known = measured_before(digest)
    print(f"reference {expected}: {'same numerics as the committed results' if same else 'DIFFERENT numerics: committed outputs will not match'}"
          + (f" (measured before on {known})" if known else ""))
    return 0 if same else 1
