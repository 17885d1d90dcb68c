"""A fingerprint of the CPU numerics training depends on: ``python -m ersm fingerprint``.

Renders 128 images of the cluttered-digits benchmark (numpy, OpenBLAS, scikit-image and torch's
resampling), trains a tiny SmallCNN with an Energy-Mask Layer on them for 30 AdamW steps (``ersm.training.engine.train_step``,
the step every training run takes), and
hashes the images and the weights. Two machines that print the same hash run the same floating-point
kernels for everything the notebooks train; a different hash means every committed number
may differ. ``REFERENCE`` holds the hash of portable mode (ersm/portability/numerics.py) per torch
version, measured where the committed ``ci`` notebooks were executed; ``OTHER_CPUS`` the
portable-mode hashes measured on CPUs that compute differently all the same.

Portable mode does not make every x86-64 CPU agree (measured 2026-11-30): an AMD EPYC without
AVX-512 and an Intel Xeon with it print different hashes with every pin in force on both. On
the AMD the images and the hash stay the same whatever MKL's thread count, instruction limit or
OpenBLAS's cache-size setting, and MKL's ``COMPATIBLE`` branch gives other products than its
automatic one; the cause is not found. ``reference_problem`` therefore tells, before nbval
runs, whether this CPU can reproduce the committed outputs at all.

Finding where two CPUs part (issue 34): ``python -m ersm fingerprint --trace [PATH]`` runs the
same steps with hooks (``ersm.portability.trace``) and writes a hash of every intermediate result: the
images, each module's output, the loss, each gradient and the weights after each step.
``python -m ersm fingerprint --compare TRACE`` re-runs here and prints the first record where
this machine departs from ``TRACE``. ``KNOWN_TRACES`` lists the committed traces (``ersm/portability/traces/``);
no AMD trace exists yet. On an AMD EPYC (the reference until 2026-12-04), run::

    python -m ersm fingerprint --trace --compare intel-xeon-998ab8edcfdfde23

which writes this machine's trace (e.g. ``amd-epyc-7b13-08d79f2c490dd1fb.json``; commit it into
``ersm/portability/traces/`` and list it in ``KNOWN_TRACES``) and names the first step, module, op and library
whose result differs from the Intel Xeon's. See ``ersm.portability.trace`` for the file format, and for where
single knobs (MKL branch, ATen capability, threads, OpenBLAS core) move the first departure on the
Intel Xeon, to tell by the AMD's first departing record which library is the likely cause.

The run itself is :func:`run` with a :class:`FingerprintConfig`; the plain fingerprint and the
traced run call it alike (the trace only observes through hooks), and :func:`ersm.portability.trace.record`
checks that the traced run ends with the plain fingerprint.
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ersm.checks import is_integer
from ersm.portability import numerics
from ersm.data import ClutteredDigits
from ersm.training.engine import train_step
from ersm.models import build_model
from ersm.training.seeding import seed_everything

# the portable-mode hash of the CPU where the committed ci notebooks were executed: an Intel Xeon with AVX-512
# (2026-12-04, issue 29's re-execution; it was the reference until 2026-11-30 too); tests/test_numerics.py checks that
# a machine prints it or one of OTHER_CPUS
REFERENCE = {"2.14.1+cu130": "998ab8edcfdfde23"}
# portable-mode hashes of other CPUs, which cannot reproduce the committed outputs (nbval is skipped there)
OTHER_CPUS = {"2.14.1+cu130": {"08d79f2c490dd1fb": "an AMD EPYC, with and without AVX-512 (2026-11-30 to 2026-12-03; "
                                                   "the reference then)"}}
# committed traces of the fingerprint run (python -m ersm fingerprint --trace), by name: ersm/portability/traces/<name>.json
TRACES_FOLDER = Path(__file__).resolve().parent / "traces"
KNOWN_TRACES = {"intel-xeon-998ab8edcfdfde23": "an Intel Xeon with AVX-512, portable mode, torch 2.14.1+cu130 (2026-12)"}


def _default_model() -> dict:
    return {"backbone": "small_cnn", "width": 8, "energy_mask": {"proj_dim": 8}}


@dataclass(frozen=True)
class FingerprintConfig:
    """Everything the fingerprint run depends on besides the machine; the defaults are the fingerprint's."""

    steps: int = 30
    batch: int = 32
    seed: int = 0
    images: int = 128
    canvas: int = 48
    threads: int = 2
    model: dict = field(default_factory=_default_model)  # build_model keyword arguments
    lr: float = 3e-3
    weight_decay: float = 5e-4
    beta: float = 1.0

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "images", "threads"):
            value = getattr(self, name)
            if not is_integer(value, numpy=False) or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1")

    def as_dict(self) -> dict:
        return asdict(self)


class Observer:
    """What a run tells as it goes (``ersm.portability.trace.Tracer`` records it); this default ignores everything.

    An observer may read tensors and register hooks, never change them: the traced run must end
    with the plain fingerprint (``ersm.portability.trace.record`` checks).
    """

    def images(self, dataset: ClutteredDigits, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor) -> None:
        """The benchmark images, before anything is trained."""

    def model(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """The freshly initialised model and its optimizer (before step 1)."""

    def batch(self, step: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """The batch of training step ``step`` (1-based), before the step."""

    def stepped(self, step: int, model: torch.nn.Module, result) -> None:
        """After training step ``step``: ``result`` is ``train_step``'s ``Step``."""


def run(config: FingerprintConfig | None = None, observer: Observer | None = None) -> str:
    """The fingerprint run: SHA-256 prefix of the images and of the weights after ``config.steps`` steps."""
    config = config or FingerprintConfig()
    observer = observer or Observer()
    seed_everything(config.seed, threads=config.threads)
    generator = torch.Generator().manual_seed(config.seed)
    dataset = ClutteredDigits("train", config.images, canvas=config.canvas, seed=config.seed)
    images, labels, masks = dataset.tensors()
    observer.images(dataset, images, labels, masks)
    model = build_model(**copy.deepcopy(config.model))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    observer.model(model, optimizer)
    for step in range(1, config.steps + 1):
        index = torch.randint(0, len(images), (config.batch,), generator=generator)
        x, y = images[index], labels[index]
        observer.batch(step, x, y)
        result = train_step(model, x, y, optimizer, beta=config.beta)  # the engine's own step
        observer.stepped(step, model, result)
    data = images.numpy().tobytes() + b"".join(p.detach().contiguous().numpy().tobytes() for p in model.parameters())
    return hashlib.sha256(data).hexdigest()[:16]


def weights_hash(steps: int = 30) -> str:
    """SHA-256 prefix of the images and of the weights after ``steps`` training steps (2 threads, seed 0)."""
    return run(FingerprintConfig(steps=steps))


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


def main(trace: str | None = None, compare: str | None = None) -> int:
    """``python -m ersm fingerprint [--trace [PATH]] [--compare TRACE]``; returns the exit status.

    Plain: prints the fingerprint and whether it is the reference (0 the same, 1 different).
    ``trace``: also writes this machine's trace (``ersm.portability.trace``) to that path (``""``: the default
    name). ``compare``: a trace file or a name in ``KNOWN_TRACES``, refused before anything runs
    when it cannot be compared (``ersm.portability.trace.TraceRefused``, a ``ValueError``); then prints where
    this machine first departs from it and returns 0 when every record matches, 1 otherwise.
    """
    if trace is None and compare is None:
        return _print_fingerprint(weights_hash())
    from ersm.portability import trace as tracing

    theirs = tracing.load(compare) if compare is not None else None
    if theirs is not None:
        tracing.check_comparable(theirs)
    ours = tracing.record()
    status = _print_fingerprint(ours.fingerprint)
    if trace is not None:
        path = tracing.write(ours, trace or None)
        print(f"trace: {path} ({len(ours.records)} records, {path.stat().st_size // 1024} KiB)")
    if theirs is None:
        return status
    text, status = tracing.report(theirs, ours)
    print(text)
    return status


def _print_fingerprint(digest: str) -> int:
    """Print ``digest`` with the kernels in force and the reference; 0 when it is the reference (or none is recorded)."""
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
