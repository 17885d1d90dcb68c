"""Portable CPU numerics: the same trained weights on any x86-64 CPU with AVX2.

Trained weights depend on the floating-point kernels torch runs, and on the CPU those are chosen
at run time from the processor it finds. Measured on this project's machines (torch 2.14.1, two
threads, deterministic algorithms), each of these changes the weights of a small conv net after
40 AdamW steps:

- ATen's own vectorised kernels (``ATEN_CPU_CAPABILITY``: AVX-512 where present, else AVX2);
- oneDNN convolutions: their blocking follows the ISA *and* the cache sizes of the CPU, so even
  with ``ONEDNN_MAX_CPU_ISA`` pinned an AMD and an Intel machine disagree (and oneDNN has no
  switch for cache sizes);
- NNPACK convolutions (used when oneDNN is off), which block by cache size as well;
- MKL's GEMM: its CNR branch ``AVX2`` is honoured on Intel CPUs only (on others MKL falls back to
  its automatic branch), while ``COMPATIBLE`` (SSE2 without the approximate reciprocals, whose
  results differ between vendors) is the branch MKL documents for reproducibility across vendors;
- the benchmark images themselves: numpy's OpenBLAS picks its GEMM kernels by CPU model
  (``SkylakeX`` on an AVX-512 Intel, ``Haswell`` on AVX2 machines and AMD Zen), and the kernels
  round the digit-resizing products differently;
- numpy's own SIMD loops (its AVX-512 and AVX2 versions of ``exp``, ``log``, ... differ in the
  last bits), which the metrics use.

**Portable mode** (the default) therefore pins what can be pinned and switches off what cannot:
ATen at AVX2, MKL at ``COMPATIBLE,STRICT`` (``STRICT``: independent of memory alignment), oneDNN
and NNPACK off, so convolutions run as ATen's im2col + MKL GEMM; OpenBLAS at its ``Haswell``
kernels and numpy without its AVX-512 loops (both exist on every AVX2 CPU). The thread count is
fixed by :func:`ersm.training.seeding.seed_everything`. The price is speed: a SmallCNN training step took about
2.5x as long as with native kernels (measured side by side, 2026-11; README, Performance).
``ERSM_KERNELS=native`` opts out for speed; results then depend on the CPU and say so in their
provenance.

The environment variables must be in place before numpy is imported (numpy and OpenBLAS read
them when they load) and before torch first dispatches a CPU kernel (ATen) or calls MKL, which
is why ``import ersm`` applies them first thing. If torch ran kernels before
that, the pins cannot take effect: :func:`apply` then warns loudly and says what to do.
:func:`describe` records what was in force for every results file.
"""
from __future__ import annotations

import ctypes
import functools
import os
import platform
import re
import warnings
from pathlib import Path

MODE_VARIABLE = "ERSM_KERNELS"
MODES = ("portable", "native")
PINS = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE,STRICT",
    "OPENBLAS_CORETYPE": "Haswell",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",  # numpy 2.4's AVX-512 dispatch targets
}
OPENBLAS_CORE = "Haswell"
EXPECTED_CAPABILITY = "AVX2"
MKL_BRANCHES = {1: "off", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 8: "SSE4_2", 9: "AVX", 10: "AVX2"}  # mkl_cbwr.h
MKL_COMPATIBLE = 3


class PortabilityWarning(RuntimeWarning):
    """The portable kernels could not be put in force: results will depend on this CPU."""


def kernel_mode() -> str:
    """``ERSM_KERNELS`` (``portable`` unless set); any other value is refused."""
    mode = os.environ.get(MODE_VARIABLE, "portable")
    if mode not in MODES:
        raise ValueError(f"{MODE_VARIABLE}={mode!r} must be one of {MODES}")
    return mode


def unsupported_reason() -> str | None:
    """Why portable kernels cannot run on this CPU (not x86-64, or no AVX2), else ``None``."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return f"this CPU is {platform.machine()}, not x86-64"
    flags = cpu_flags()
    if flags is not None and "avx2" not in flags:
        return "this x86-64 CPU has no AVX2"
    return None


DEFAULT_THREADS = 2


def thread_count() -> int:
    """``ERSM_THREADS`` if set (an integer >= 1), else ``DEFAULT_THREADS``."""
    raw = os.environ.get("ERSM_THREADS", str(DEFAULT_THREADS))
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"ERSM_THREADS={raw!r} must be an integer >= 1")
    return int(raw)


def set_environment() -> None:
    """Check ``ERSM_THREADS`` and put the pins into ``os.environ`` (portable mode only).

    Runs before torch is imported by ``ersm``; touches nothing but environment variables.
    Conflicting values of the pinned variables are refused with the variable and its value.
    """
    thread_count()
    if kernel_mode() != "portable" or unsupported_reason() is not None:
        return
    for name, value in PINS.items():
        given = os.environ.get(name)
        if given is not None and given.upper() != value.upper():
            raise ValueError(f"{name}={given!r} conflicts with portable kernels ({name}={value!r}); "
                             f"unset {name}, or set {MODE_VARIABLE}=native to run with the CPU's own kernels")
        os.environ[name] = value


def apply() -> None:
    """Switch off the cache-dependent convolution libraries and check that every pin took effect."""
    import torch

    if kernel_mode() != "portable":
        return
    reason = unsupported_reason()
    if reason is not None:
        warnings.warn(f"ersm: portable kernels are unavailable because {reason}; results will differ from the "
                      "committed notebook outputs (made on x86-64 with AVX2)", PortabilityWarning, stacklevel=2)
        return
    torch.backends.mkldnn.enabled = False
    torch.backends.nnpack.set_flags(False)
    problems = []
    capability = torch.backends.cpu.get_cpu_capability()  # fixes ATen's choice from here on
    if capability != EXPECTED_CAPABILITY:
        problems.append(f"ATen runs {capability} kernels, not {EXPECTED_CAPABILITY}")
    branch = mkl_branch()
    if branch is not None and branch != MKL_COMPATIBLE:
        problems.append(f"MKL runs its {MKL_BRANCHES.get(branch, branch)} branch, not COMPATIBLE")
    if openblas_cores() - {OPENBLAS_CORE}:
        problems.append(f"OpenBLAS runs {sorted(openblas_cores())} kernels, not {OPENBLAS_CORE}")
    if numpy_avx512():
        problems.append("numpy runs its AVX-512 loops")
    if problems:
        warnings.warn(f"ersm: portable kernels are NOT in force ({'; '.join(problems)}): numpy or torch were loaded or ran "
                      "kernels before ersm was imported. Import ersm first, or export "
                      + " ".join(f"{k}={v}" for k, v in PINS.items()) + " before starting Python. "
                      "Results will differ from the committed ones.", PortabilityWarning, stacklevel=2)


def in_force() -> bool:
    """Whether this process computes with the portable kernels."""
    import torch

    return (kernel_mode() == "portable" and unsupported_reason() is None
            and torch.backends.cpu.get_cpu_capability() == EXPECTED_CAPABILITY
            and mkl_branch() in (None, MKL_COMPATIBLE)
            and not openblas_cores() - {OPENBLAS_CORE} and not numpy_avx512()
            and not torch.backends.mkldnn.enabled and not torch._C._get_nnpack_enabled())


def openblas_cores() -> set[str]:
    """The kernel families of every OpenBLAS loaded in this process (numpy's and scipy's)."""
    from threadpoolctl import threadpool_info

    return {info.get("architecture") for info in threadpool_info() if info.get("internal_api") == "openblas"}


def numpy_avx512() -> bool:
    """Whether numpy dispatches to its AVX-512 loops in this process."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # another numpy layout: nothing to check
        return False
    return any(__cpu_features__.get(target) for target in PINS["NPY_DISABLE_CPU_FEATURES"].split())


def mkl_branch() -> int | None:
    """MKL's CNR branch code in this process (``mkl_cbwr.h``), or ``None`` where MKL is not reachable."""
    function = _mkl_cbwr_get()
    return None if function is None else int(function(1))  # 1 = MKL_CBWR_BRANCH


@functools.cache
def _mkl_cbwr_get():
    import torch

    try:
        library = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        function = library.mkl_serv_cbwr_get
    except (OSError, AttributeError):  # another build of torch, or not Linux
        return None
    function.restype, function.argtypes = ctypes.c_int, [ctypes.c_int]
    return function


@functools.cache
def cpu_flags() -> frozenset[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    match = re.search(r"^flags\s*:\s*(.*)$", text, re.MULTILINE)
    return frozenset(match.group(1).split()) if match else None


def portability_problem() -> str | None:
    """One line that says why this process cannot reproduce the committed outputs, and what to run instead."""
    instead = ("run `make unit` for the unit tests, and `make reproduce` to execute the notebooks afresh "
               "(their numbers will be this machine's own)")
    reason = unsupported_reason()
    if reason is not None:
        return f"nbval skipped: the committed notebook outputs were made with portable x86-64 AVX2 kernels and {reason}; {instead}"
    if kernel_mode() != "portable":
        return f"nbval skipped: {MODE_VARIABLE}={kernel_mode()} runs this CPU's own kernels, which cannot reproduce the committed outputs; unset it, or {instead}"
    if not in_force():
        return f"nbval skipped: the portable kernels are not in force in this process ({describe()}); {instead}"
    return None


def status_line() -> str:
    """What a notebook prints about its kernels: the same on every machine where they are portable."""
    if kernel_mode() == "native":
        return "CPU kernels: native (results depend on this CPU)"
    return f"CPU kernels: portable, {'in force' if in_force() else 'NOT in force (results depend on this CPU)'}"


def cpu_model() -> str:
    try:
        match = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    except OSError:
        match = None
    return match.group(1).strip() if match else (platform.processor() or platform.machine())


def library_versions() -> dict:
    """torch, MKL and oneDNN versions as torch reports its build."""
    import torch

    build = torch.__config__.show()
    mkl = re.search(r"Math Kernel Library Version ([\w.\-]+ ?[\w\-]* ?\d*)", build)
    onednn = re.search(r"MKL-DNN v([\d.]+)", build)
    return {"torch": torch.__version__, "mkl": mkl.group(1).strip() if mkl else None,
            "onednn": onednn.group(1) if onednn else None}


def describe() -> dict:
    """What produced a result: the CPU, the kernels chosen and the pins in force."""
    import torch

    return {
        "cpu_model": cpu_model(), "machine": platform.machine(), "cpu_has_avx512f": "avx512f" in (cpu_flags() or ()),
        "kernels": kernel_mode(), "portable_in_force": in_force(),
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_branch": MKL_BRANCHES.get(mkl_branch(), mkl_branch()), "openblas": sorted(openblas_cores()),
        "numpy_avx512": numpy_avx512(),
        "onednn_enabled": torch.backends.mkldnn.enabled, "nnpack_enabled": torch._C._get_nnpack_enabled(),
        "pins": {name: os.environ.get(name) for name in PINS}, "threads": torch.get_num_threads(),
        **library_versions(),
    }
