"""A step-by-step trace of the fingerprint run, to find where two CPUs part (issue 34).

``python -m ersm fingerprint`` (``ersm.portability.fingerprint``) hashes only the images and the final
weights. Two CPUs that print different hashes with every pin of portable mode in force
(ersm/portability/numerics.py) do not say *which* floating-point operation rounded differently first. A
trace does: it runs the very same steps (``ersm.portability.fingerprint.run``, with a :class:`Tracer` that
only reads tensors through hooks) and records a short hash of every intermediate result, in the
order they are computed:

step 0   ``images``  the digit bank, the resize matrices, the background textures, the resized
                     digits (numpy/OpenBLAS), the composited images, labels and masks;
         ``weights`` every parameter as initialised;
step k   ``images``  the batch drawn for step k (k = 1 .. ``steps``);
         ``forward`` the output of every module that computes (forward hooks on every submodule
                     except the ``nn.Sequential`` containers, whose output is their last child's),
                     in call order; inside the Energy-Mask Layer also ``p_hat``, ``unary``,
                     ``pairwise``, ``energy`` and ``mask``;
         ``loss``    cross-entropy, regulariser, total;
         ``grad``    every parameter's gradient, in the order backward accumulates them;
         ``weights`` every parameter after the AdamW step.

Each record is a row ``[index, step, kind, name, op, library, hash]``: ``op`` is the module
class (or what computes the value), ``library`` a key of :data:`LIBRARIES`, the best-effort map
of which library runs that op in portable mode, and ``hash`` the first 16 hex digits of the
SHA-256 of the value's bytes (C order, its own dtype). A gradient's ``op`` names the parameter's
module: its hash depends on every backward op before it, the library names the last one.

Use (``python -m ersm fingerprint``):

- ``--trace [PATH]`` writes this machine's trace (default ``<cpu>-<fingerprint>.json`` in the
  current folder), after checking that the traced run ends with the plain fingerprint;
- ``--compare TRACE`` re-runs here and prints the first record where this machine departs from
  ``TRACE`` (a path, or a name of ``ersm.portability.fingerprint.KNOWN_TRACES``, e.g.
  ``intel-xeon-998ab8edcfdfde23``), with its step, kind, module, op and library and the records
  just before it, which matched; exit 0 when every record matches, 1 when one differs. A trace of
  another torch or numpy version, another trace format or another fingerprint config is refused
  before anything runs (exit 2), naming the field, its value there and here: its steps cannot
  be compared one by one.

To find why the reference CPU (an AMD EPYC, fingerprint ``08d79f2c490dd1fb``) and an Intel Xeon
(``998ab8edcfdfde23``) differ, run on the AMD::

    python -m ersm fingerprint --trace --compare intel-xeon-998ab8edcfdfde23

and commit the trace it writes next to the Intel one (``ersm/portability/traces/``). The first departing
record names the op; everything after it differs because its inputs do.

Where single knobs move the first departure, measured on the Intel Xeon (2026-12-04, one knob
changed from portable mode at a time, against ``intel-xeon-998ab8edcfdfde23``), to read an
AMD trace's first departure by:

- MKL branch ``AUTO``, ``AVX2``, ``AVX2,STRICT``, ``AVX512`` (and oneDNN on): step 1, forward, ``stem.0``
  (the first convolution); ``SSE4_2``: step 1, forward, ``layer2.0.1.0``; ``COMPATIBLE`` without
  ``STRICT`` and ``MKL_ENABLE_INSTRUCTIONS=AVX2``: no record changes;
- MKL told the CPU is not an Intel one (its ``mkl_serv_intel_cpu*`` checks interposed with
  ``LD_PRELOAD``): no record changes, and ``MKL_CBWR=AVX2`` falls back to ``AUTO``, which then equals
  ``COMPATIBLE``; told it is a Zen as well (``mkl_serv_cpuiszen``): ``MKL_CBWR=COMPATIBLE`` is
  still *reported* but no longer honoured (the records equal ``AUTO``'s): step 1, forward, ``stem.0``;
- ``ATEN_CPU_CAPABILITY=avx512``: step 1, loss, ``cross_entropy``; ``default``: step 0, the initial
  weights;
- 1 or 4 threads instead of 2: step 1, grad, a convolution's weight gradient;
- ``OPENBLAS_CORETYPE`` ``SkylakeX`` or ``Sandybridge``: step 0, images, ``digit_alpha``; ``Zen``
  (Haswell kernels), ``OPENBLAS_NUM_THREADS=1`` and numpy's AVX-512 loops: no record changes.

File format: one JSON object ``{"header": {...}, "records": [[...], ...]}``, a record a line.
The header holds ``format``, ``torch``, ``numpy``, ``config`` (``FingerprintConfig``: steps,
batch, seed, images, canvas, threads, model, lr, weight_decay, beta), ``fingerprint``,
``cpu_model``, ``kernel_facts`` (``ersm.portability.numerics.describe()``), ``recorded`` (the date),
``columns``, ``libraries`` (this module's table) and ``hash`` (how values are hashed).
"""
from __future__ import annotations

import datetime
import functools
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ersm.portability import fingerprint, numerics
from ersm.data import digits
from ersm.layer import EnergyMask

FORMAT = "ersm-fingerprint-trace/1"
COLUMNS = ("index", "step", "kind", "name", "op", "library", "hash")
KINDS = ("images", "forward", "loss", "grad", "weights")
HASH_DIGITS = 16
CONTEXT = 5  # matching records shown before the first departure
CHECKED_FIELDS = ("format", "torch", "numpy")  # besides every field of the config

# Which library runs each op in portable mode (oneDNN and NNPACK off, ATen at AVX2, MKL COMPATIBLE,STRICT,
# OpenBLAS Haswell, numpy without AVX-512): a best-effort map, from torch 2.14's CPU dispatch.
LIBRARIES = {
    "pandas+numpy": "pandas' C CSV parser (its own string-to-double) and numpy's division by 255, float64 -> float32",
    "aten-upsample-aa": "ATen's antialiased bilinear interpolation kernel (F.interpolate), vectorised at ATEN_CPU_CAPABILITY",
    "skimage": "scikit-image rgb2gray (a numpy matmul, OpenBLAS) and rescale(anti_aliasing=True): scipy.ndimage "
               "Gaussian filter and spline zoom (C loops), then numpy min/max/divide",
    "openblas-sgemm": "numpy matmul of float32 matrices -> OpenBLAS sgemm (OPENBLAS_CORETYPE kernels), then np.clip",
    "numpy-simd": "numpy's own SIMD loops (AVX2 with NPY_DISABLE_CPU_FEATURES): compositing (1 - a) * under + a",
    "exact": "integer draws, indexing, copies and views: no floating-point rounding",
    "torch-rng": "torch's CPU generator (mt19937) and ATen's uniform_ (kaiming_uniform_ init), ones/zeros for batch norm",
    "im2col+mkl-sgemm": "ATen slow_conv2d (oneDNN and NNPACK off): im2col / col2im copies and MKL sgemm (MKL_CBWR branch)",
    "mkl-sgemm": "MKL sgemm through ATen's cpublas (addmm / mm), MKL_CBWR branch",
    "aten-vec": "ATen's own vectorised CPU kernels at ATEN_CPU_CAPABILITY: elementwise arithmetic, reductions "
                "(sum, mean, norm), batch norm statistics and transform, AdamW's single-tensor update",
    "aten-vec-sleef": "ATen's vectorised transcendental kernels at ATEN_CPU_CAPABILITY (SLEEF exp / log / log1p): "
                      "softplus, sigmoid, log_softmax",
    "dwconv+aten-vec-sleef": "depthwise 3x3 conv (ATen slow_conv2d per group: im2col + MKL sgemm), ATen vectorised "
                             "multiply and channel sum, then softplus (SLEEF)",
}
FORWARD_LIBRARIES = {
    "Conv2d": "im2col+mkl-sgemm", "BatchNorm2d": "aten-vec", "ReLU": "aten-vec", "AdaptiveAvgPool2d": "aten-vec",
    "Flatten": "exact", "Linear": "mkl-sgemm", "EnergyMask": "aten-vec",  # the layer's output: x * mask
    "EnergyMask.p_hat": "aten-vec", "EnergyMask.unary": "aten-vec-sleef", "EnergyMask.pairwise": "dwconv+aten-vec-sleef",
    "EnergyMask.energy": "aten-vec", "EnergyMask.mask": "aten-vec-sleef",
}
GRAD_LIBRARIES = {  # the last op that writes each gradient (the backward of the parameter's own module)
    "Conv2d.weight": "im2col+mkl-sgemm", "Conv2d.bias": "aten-vec", "BatchNorm2d.weight": "aten-vec",
    "BatchNorm2d.bias": "aten-vec", "Linear.weight": "mkl-sgemm", "Linear.bias": "aten-vec",
}
LOSS_LIBRARIES = {"cross_entropy": "aten-vec-sleef", "regularizer": "aten-vec", "total": "aten-vec"}
ENERGY_TERMS = ("unary", "pairwise", "energy", "mask")  # recorded after the layer's forward; p_hat before its score conv


class TraceRefused(ValueError):
    """A trace that cannot be compared step by step with a run here (another torch, numpy or config)."""


def value_hash(*values) -> str:
    """First 16 hex digits of the SHA-256 of the values' bytes (tensors or arrays, C order, own dtype), in order."""
    digest = hashlib.sha256()
    for value in values:
        array = value.detach().cpu().contiguous().numpy() if isinstance(value, torch.Tensor) else np.ascontiguousarray(value)
        digest.update(array.tobytes())
    return digest.hexdigest()[:HASH_DIGITS]


@dataclass
class Trace:
    """A recorded trace: its ``header`` and ``records`` (rows of :data:`COLUMNS`)."""

    header: dict
    records: list
    source: str = "this run"

    @property
    def fingerprint(self) -> str:
        return self.header["fingerprint"]


class Tracer(fingerprint.Observer):
    """Records a hash of every intermediate result of ``ersm.portability.fingerprint.run`` (module docstring)."""

    def __init__(self) -> None:
        self.records: list[list] = []
        self._step = 0
        self._grads: list[tuple] = []  # hashed during backward, written after the loss

    def _add(self, step: int, kind: str, name: str, op: str, library: str, *values) -> None:
        self.records.append([len(self.records), step, kind, name, op, library, value_hash(*values)])

    def images(self, dataset, images, labels, masks) -> None:
        bank = digits._digit_bank()
        sides = range(round(digits.DIGIT_SIDE * digits.SCALE_RANGE[0]), digits.MAX_DIGIT_SIDE + 1)
        self._add(0, "images", "digit_bank", "mnist_5k / 255", "pandas+numpy", bank.images)
        self._add(0, "images", "resize_matrices", "F.interpolate(bilinear, antialias)", "aten-upsample-aa",
                  *(digits._resize_matrix(side) for side in sides))
        self._add(0, "images", "backgrounds", "load_texture", "skimage", *digits._background_images())
        self._add(0, "images", "digit_alpha", "clip(R @ digit @ R.T)", "openblas-sgemm", *_digit_alphas(dataset, bank))
        self._add(0, "images", "images", "composite", "numpy-simd", images)
        self._add(0, "images", "labels", "draw", "exact", labels)
        self._add(0, "images", "masks", "alpha > 0.5", "exact", masks)

    def model(self, model, optimizer) -> None:
        for name, parameter in model.named_parameters():
            self._add(0, "weights", name, "init", "torch-rng", parameter)
        owners = _parameter_owners(model)
        for name, module in model.named_modules():
            if isinstance(module, nn.Sequential):  # a container: its output is its last child's
                continue
            module.register_forward_hook(functools.partial(self._forward, name))
            if isinstance(module, EnergyMask):  # score's input is p_hat = normalize(proj(x))
                module.score.register_forward_pre_hook(functools.partial(self._p_hat, name))
        for name, parameter in model.named_parameters():
            parameter.register_post_accumulate_grad_hook(functools.partial(self._grad, name, owners[name]))

    def batch(self, step, x, y) -> None:
        self._step = step
        self._add(step, "images", "batch", "images[index], labels[index]", "exact", x, y)

    def stepped(self, step, model, result) -> None:
        objective = result.objective
        for name in ("cross_entropy", "regularizer", "total"):
            self._add(step, "loss", name, name, LOSS_LIBRARIES[name], getattr(objective, name))
        for name, op, digest in self._grads:
            self.records.append([len(self.records), step, "grad", name, op, GRAD_LIBRARIES.get(op, "?"), digest])
        self._grads = []
        for name, parameter in model.named_parameters():
            self._add(step, "weights", name, "AdamW", "aten-vec", parameter)

    def _forward(self, name, module, inputs, output) -> None:
        op = type(module).__name__
        if isinstance(module, EnergyMask):
            for term in ENERGY_TERMS:
                self._add(self._step, "forward", f"{name}:{term}", f"{op}.{term}", FORWARD_LIBRARIES[f"{op}.{term}"],
                          getattr(module.terms, term))
        self._add(self._step, "forward", name, op, FORWARD_LIBRARIES.get(op, "?"), output)

    def _p_hat(self, name, module, inputs) -> None:
        self._add(self._step, "forward", f"{name}:p_hat", "EnergyMask.p_hat", FORWARD_LIBRARIES["EnergyMask.p_hat"], inputs[0])

    def _grad(self, name, op, parameter) -> None:
        self._grads.append((name, op, value_hash(parameter.grad)))


def _parameter_owners(model: nn.Module) -> dict[str, str]:
    """``{parameter name: "<module class>.<attribute>"}``, e.g. ``"Conv2d.weight"``."""
    return {f"{module_name}.{attribute}" if module_name else attribute: f"{type(module).__name__}.{attribute}"
            for module_name, module in model.named_modules() for attribute, _ in module.named_parameters(recurse=False)}


def _digit_alphas(dataset, bank) -> list[np.ndarray]:
    """Each item's resized digit, ``clip(R @ digit @ R.T, 0, 1)``, recomputed from its meta as ``ClutteredDigits._render`` does."""
    alphas = []
    for index in range(len(dataset)):
        meta = dataset.meta(index)
        resize = digits._resize_matrix(round(meta["scale"] * digits.DIGIT_SIDE))
        alphas.append(np.clip(resize @ bank.images[meta["source_digit"]] @ resize.T, 0.0, 1.0))
    return alphas


# -- recording and files --------------------------------------------------------------------------------


def record(config: fingerprint.FingerprintConfig | None = None, plain: str | None = None) -> Trace:
    """Run the fingerprint plainly (unless its hash ``plain`` is given) and traced; the two must end alike."""
    config = config or fingerprint.FingerprintConfig()
    plain = plain or fingerprint.run(config)
    tracer = Tracer()
    traced = fingerprint.run(config, tracer)
    if traced != plain:
        raise RuntimeError(f"the traced fingerprint run ended with {traced}, the plain one with {plain}: the hooks "
                           "changed the computation, so the trace would not describe the fingerprint")
    return Trace(header(config, traced, len(tracer.records)), tracer.records)


def header(config: fingerprint.FingerprintConfig, digest: str, count: int) -> dict:
    """The header of a trace of ``count`` records recorded here with ``config`` (module docstring)."""
    return {
        "format": FORMAT, "torch": torch.__version__, "numpy": np.__version__, "config": config.as_dict(),
        "fingerprint": digest, "cpu_model": numerics.cpu_model(), "kernel_facts": numerics.describe(),
        "recorded": datetime.date.today().isoformat(), "records": count, "columns": list(COLUMNS),
        "libraries": LIBRARIES, "hash": f"first {HASH_DIGITS} hex digits of SHA-256 of the value's bytes (C order, own dtype)",
    }


def default_name(trace: Trace) -> str:
    """``<cpu>-<fingerprint>.json``, e.g. ``intel-xeon-998ab8edcfdfde23.json``."""
    cpu = re.sub(r"\((r|tm)\)|\b(processor|cpu|\d+-core)\b|@.*", " ", trace.header["cpu_model"].lower())
    slug = re.sub(r"[^a-z0-9]+", "-", cpu).strip("-") or "cpu"
    return f"{slug}-{trace.fingerprint}.json"


def write(trace: Trace, path: str | Path | None = None) -> Path:
    """Write ``trace`` to ``path`` (default :func:`default_name` in the current folder), a record a line."""
    path = Path(path) if path else Path(default_name(trace))
    rows = ",\n".join(json.dumps(row, separators=(",", ":")) for row in trace.records)
    path.write_text('{"header": ' + json.dumps(trace.header, indent=1) + ',\n"records": [\n' + rows + "\n]}\n")
    return path


def resolve(argument: str | Path) -> Path:
    """A trace file: ``argument`` itself, or a committed trace named in ``ersm.portability.fingerprint.KNOWN_TRACES``."""
    path = Path(argument)
    if path.is_file():
        return path
    if str(argument) in fingerprint.KNOWN_TRACES:
        return fingerprint.TRACES_FOLDER / f"{argument}.json"
    raise FileNotFoundError(f"--compare {str(argument)!r}: no such file, nor a known trace "
                            f"(known: {', '.join(sorted(fingerprint.KNOWN_TRACES))})")


def load(argument: str | Path) -> Trace:
    """Read a trace file (a path or a known trace's name); a file that is not a trace is refused naming it."""
    path = resolve(argument)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"--compare {str(argument)!r}: {path} is not JSON ({error})") from error
    if not isinstance(data, dict) or not isinstance(data.get("header"), dict) or not isinstance(data.get("records"), list):
        raise ValueError(f"--compare {str(argument)!r}: {path} is not a fingerprint trace (no header and records)")
    return Trace(data["header"], data["records"], source=str(path))


# -- comparing ---------------------------------------------------------------------------------------------


def differences(theirs: dict, ours: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """``(field, theirs, ours)`` for every leaf where two nested dicts differ (``config.model.width``)."""
    found = []
    for key in sorted(set(theirs) | set(ours), key=str):
        a, b = theirs.get(key, "<absent>"), ours.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            found += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append((f"{prefix}{key}", a, b))
    return found


def check_comparable(theirs: Trace, config: fingerprint.FingerprintConfig | None = None) -> None:
    """Refuse (:class:`TraceRefused`) a trace that a run here with ``config`` cannot match step by step."""
    config = config or fingerprint.FingerprintConfig()
    ours = {"format": FORMAT, "torch": torch.__version__, "numpy": np.__version__}
    found = differences({key: theirs.header.get(key, "<absent>") for key in CHECKED_FIELDS}, ours)
    found += differences({"config": theirs.header.get("config", "<absent>")},
                         {"config": json.loads(json.dumps(config.as_dict()))})
    if found:
        listed = "; ".join(f"{field}: theirs {a!r}, ours {b!r}" for field, a, b in found)
        raise TraceRefused(f"--compare {theirs.source}: not comparable step by step with a run here, recorded with another "
                           f"{', '.join(field for field, _, _ in found)} ({listed}); record both traces with the same "
                           "torch, numpy and fingerprint config")


@dataclass
class Departure:
    """Where ``ours`` first departs from ``theirs``: record ``index`` (either may be ``None`` past its end)."""

    index: int
    theirs: list | None
    ours: list | None
    before: list  # the matching records just before, oldest first


def _key(row: list) -> tuple:
    return row[1], row[2], row[3], row[6]  # step, kind, name, hash: op and library are descriptions


def first_departure(theirs: list, ours: list, context: int = CONTEXT) -> Departure | None:
    """The first record where ``ours`` differs from ``theirs`` (in step, kind, name or hash), or ``None``."""
    for index in range(max(len(theirs), len(ours))):
        a = theirs[index] if index < len(theirs) else None
        b = ours[index] if index < len(ours) else None
        if a is None or b is None or _key(a) != _key(b):
            return Departure(index, a, b, ours[max(0, index - context):index])
    return None


def describe_row(row: list) -> str:
    index, step, kind, name, op, library, digest = row
    return f"record {index}: step {step}, {kind}, {name} (op {op}, library {library}) {digest}"


def departing_counts(theirs: list, ours: list) -> str:
    """``kind: n of m`` differing records per kind, for two traces of the same steps."""
    total, differ = Counter(row[2] for row in theirs), Counter(a[2] for a, b in zip(theirs, ours) if _key(a) != _key(b))
    return ", ".join(f"{kind} {differ[kind]} of {total[kind]}" for kind in KINDS if total[kind])


def first_of_each_kind(theirs: list, ours: list) -> str:
    firsts = {}
    for a, b in zip(theirs, ours):
        if _key(a) != _key(b):
            firsts.setdefault(a[2], a)
    return "; ".join(f"{kind}: record {row[0]} (step {row[1]}, {row[3]}, {row[4]})" for kind, row in firsts.items())


def report(theirs: Trace, ours: Trace) -> tuple[str, int]:
    """The comparison's text and exit status: 0 when every record matches, 1 at the first departure."""
    lines = [f"trace {theirs.source}: {theirs.header.get('cpu_model')}, fingerprint {theirs.fingerprint}, "
             f"recorded {theirs.header.get('recorded')}",
             f"here: {ours.header['cpu_model']}, fingerprint {ours.fingerprint}"]
    facts = differences(theirs.header.get("kernel_facts", {}), ours.header["kernel_facts"])
    if facts:
        lines.append("kernel facts that differ: " + "; ".join(f"{f}: theirs {a!r}, ours {b!r}" for f, a, b in facts))
    departure = first_departure(theirs.records, ours.records)
    if departure is None:
        lines.append(f"all {len(ours.records)} records match: this machine computes every step as the trace's did")
        return "\n".join(lines), 0
    if departure.theirs is None or departure.ours is None or departure.theirs[1:4] != departure.ours[1:4]:
        lines.append(f"FIRST DEPARTURE at record {departure.index}: the runs take different steps here: theirs "
                     f"{describe_row(departure.theirs) if departure.theirs else '(ended)'}; ours "
                     f"{describe_row(departure.ours) if departure.ours else '(ended)'}")
    else:
        index, step, kind, name, op, library, digest = departure.theirs
        lines.append(f"FIRST DEPARTURE at record {index} of {len(theirs.records)}: step {step}, {kind}, {name}, op {op}, "
                     f"library {library} ({LIBRARIES.get(library, library)}): theirs {digest}, ours {departure.ours[6]}")
    lines.append(f"the {len(departure.before)} records before it matched:")
    lines += [f"  {describe_row(row)}" for row in departure.before]
    lines.append(f"records that differ: {departing_counts(theirs.records, ours.records)}")
    lines.append(f"first to differ of each kind: {first_of_each_kind(theirs.records, ours.records)}")
    return "\n".join(lines), 1


def compare(theirs: Trace, config: fingerprint.FingerprintConfig | None = None, ours: Trace | None = None) -> tuple[str, int]:
    """Check ``theirs`` is comparable (before running anything), record ours (unless given), report."""
    config = config or fingerprint.FingerprintConfig()
    check_comparable(theirs, config)
    ours = ours or record(config)
    return report(theirs, ours)
