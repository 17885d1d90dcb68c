"""One place for seeds, threads and deterministic kernels (`docs/design.md#determinism-and-the-model-cache`)."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from ersm.portability.numerics import DEFAULT_THREADS, thread_count  # noqa: F401  (re-exported)


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seed Python, NumPy and torch; fix the CPU thread count; ask for deterministic kernels.

    ``threads`` defaults to ``ERSM_THREADS`` or 2. It is fixed rather than the core count
    because parallel reductions in the backward pass split work by thread, so gradients (and
    the trained weights) differ between thread counts; with a fixed count the same seed gives
    bit-identical weights on any machine with the same CPU kernels. On CUDA TF32 is disabled so
    that runs compare, and cuDNN is put in deterministic mode.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.set_num_threads(threads or thread_count())
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (for per-epoch generators), stable across runs."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0]) >> 1

