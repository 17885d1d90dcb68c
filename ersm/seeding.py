"""One place for seeds, threads and deterministic kernels (DESIGN §4)."""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seed Python, NumPy and torch; fix the CPU thread count; ask for deterministic kernels.

    ``threads`` defaults to ``ERSM_THREADS`` or the number of cores. On the CPU the same seed
    then gives bit-identical weights run after run on the same machine kind. On CUDA TF32 is
    disabled so that runs compare, and cuDNN is put in deterministic mode.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    threads = threads or int(os.environ.get("ERSM_THREADS", "0")) or os.cpu_count() or 1
    torch.set_num_threads(threads)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (for per-epoch generators), stable across runs."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0]) >> 1


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
