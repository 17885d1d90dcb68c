"""``ersm bench``: ERSM-vs-dense overhead and data-loading ratios, measured side by side.

DESIGN §7: benchmarks print ratios measured in one run, never timed assertions in tests. Each
ratio compares two things timed in the same process, interleaved repeat by repeat (the order
alternating), after a warm-up, and reduced by the median; a machine that is busy with other
work slows both sides alike, so the ratios stay meaningful where absolute times do not.

Printed:
1. train-step time (``ersm.training.engine.train_step``: forward + objective + backward + AdamW step) and parameter count of
   the ERSM twin (every variant in ``ersm.layer.VARIANTS``: "paper", "calibrated", "meanfield"
   with its default 3 iterations, "hardconcrete" with its training-mode noise) over the dense
   backbone, for SmallCNN (48x48, batch 64, 1 channel) and ResNet-18 with the CIFAR stem (32x32,
   batch 32, 3 channels);
2. cluttered-digits generation time for 10,000 items, and generation / DataLoader throughput
   over SmallCNN training throughput;
3. on CUDA only, ResNet-18 training throughput with AMP (bfloat16, as ``ersm.training.cache`` uses).

Writes nothing but stdout.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch
from torch.utils.data import DataLoader, TensorDataset

from ersm.data import ClutteredDigits
from ersm.layer import VARIANTS
from ersm.training.engine import train_step
from ersm.models import build_model, count_parameters
from ersm.training.devices import resolve as resolve_device
from ersm.training.seeding import seed_everything

STEP_RATIO_TARGET = 1.05       # ERSM step time / dense step time, at most
PARAM_RATIO_TARGET = 1.01      # ERSM parameters / dense parameters, at most
GENERATION_SECONDS_TARGET = 10.0
LOADING_RATIO_TARGET = 5.0     # data items/s over training items/s, at least
N_GENERATE = 10_000

# (label, backbone, channels, side, batch, steps per timed repeat): ResNet-18 on a CPU takes
# about a second per step, so it is timed one step at a time and SmallCNN several.
BACKBONES = (
    ("SmallCNN 48x48 b64", "small_cnn", 1, 48, 64, 5),
    ("ResNet-18 32x32 b32", "resnet18", 3, 32, 32, 1),
)
CONTENDERS = (("dense", None),) + tuple((variant, variant) for variant in VARIANTS)  # (name, variant)


def mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Trainer:
    """One model with its AdamW optimizer and a fixed batch: ``step()`` is one training step.

    The step is the engine's own (``ersm.training.engine.train_step``: bfloat16 autocast on CUDA, the
    loss in float32, the finiteness check); the model is ``channels_last`` as ``ersm.training.cache``
    builds it; ``beta = 1`` for ERSM models and 0 for the dense one.
    """

    def __init__(self, backbone: str, channels: int, side: int, batch: int, variant: str | None,
                 device: torch.device) -> None:
        torch.manual_seed(0)  # the same backbone initialisation for the dense model and its twins
        energy_mask = None if variant is None else {"variant": variant}
        model = build_model(backbone, in_channels=channels, num_classes=10, energy_mask=energy_mask)
        self.model = model.to(device, memory_format=torch.channels_last)
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=5e-4)
        generator = torch.Generator().manual_seed(1)
        self.x = torch.rand(batch, channels, side, side, generator=generator).to(device)
        self.y = torch.randint(0, 10, (batch,), generator=generator).to(device)
        self.beta = 0.0 if variant is None else 1.0
        self.device = device

    def step(self) -> None:
        train_step(self.model, self.x, self.y, self.optimizer, beta=self.beta)


def interleaved_medians(contenders: dict[str, Callable[[], object]], repeats: int, steps: int,
                        warmup: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each contender, timed in turns (order reversed every repeat),
    ``steps`` calls a timing; shared by ``ersm bench`` and ``ersm bench-sparse``."""
    names = list(contenders)
    for name in names:
        for _ in range(warmup):
            contenders[name]()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in (names if repeat % 2 == 0 else names[::-1]):
            started = time.perf_counter()
            for _ in range(steps):
                contenders[name]()
            synchronize(device)
            times[name].append((time.perf_counter() - started) / steps)
    return {name: statistics.median(values) for name, values in times.items()}


def overhead(repeats: int, device: torch.device) -> float:
    """Section 1; returns the dense SmallCNN's training throughput (items/s) for section 2."""
    print("\n== 1. ERSM overhead over the dense backbone (train step = ersm.training.engine.train_step: forward + objective + backward + AdamW)")
    print(f"   targets: step-time ratio <= {STEP_RATIO_TARGET:.2f}, parameter ratio <= {PARAM_RATIO_TARGET:.2f}; "
          f"median of {repeats} interleaved repeats after warm-up")
    small_cnn_throughput = float("nan")
    for label, backbone, channels, side, batch, steps in BACKBONES:
        trainers = {name: Trainer(backbone, channels, side, batch, variant, device) for name, variant in CONTENDERS}
        medians = interleaved_medians({name: t.step for name, t in trainers.items()}, repeats, steps,
                                      warmup=max(2, steps), device=device)
        dense_params = count_parameters(trainers["dense"].model)
        print(f"\n   {label}: dense {medians['dense'] * 1e3:.1f} ms/step, {dense_params:,} parameters")
        for name in VARIANTS:
            step_ratio = medians[name] / medians["dense"]
            param_ratio = count_parameters(trainers[name].model) / dense_params
            print(f"   {name:>12}: {medians[name] * 1e3:8.1f} ms/step  step ratio {step_ratio:.3f} "
                  f"[{mark(step_ratio <= STEP_RATIO_TARGET)}]  parameter ratio {param_ratio:.4f} "
                  f"[{mark(param_ratio <= PARAM_RATIO_TARGET)}]")
        if backbone == "small_cnn":
            small_cnn_throughput = batch / medians["dense"]
        del trainers
    return small_cnn_throughput


def data_loading(train_items_per_second: float) -> None:
    """Section 2: generating the benchmark data and serving it, against what training consumes."""
    print(f"\n== 2. Data: ClutteredDigits('train', {N_GENERATE}, canvas=48).tensors() vs SmallCNN training")
    started = time.perf_counter()
    images, labels, masks = ClutteredDigits("train", N_GENERATE, canvas=48).tensors()
    seconds = time.perf_counter() - started
    generated = N_GENERATE / seconds
    print(f"   generation: {seconds:.1f} s (target <= {GENERATION_SECONDS_TARGET:.0f} s) "
          f"[{mark(seconds <= GENERATION_SECONDS_TARGET)}], {generated:,.0f} items/s")

    loader = DataLoader(TensorDataset(images, labels, masks), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    served = 0
    started = time.perf_counter()
    for x, _, _ in loader:
        served += len(x)
    served_rate = served / (time.perf_counter() - started)
    print(f"   DataLoader over the materialised TensorDataset (batch 64): {served_rate:,.0f} items/s")
    print(f"   SmallCNN dense training: {train_items_per_second:,.0f} items/s (section 1)")
    for name, rate in (("generation", generated), ("DataLoader", served_rate)):
        ratio = rate / train_items_per_second
        print(f"   {name} / training throughput: {ratio:,.1f}x (target >= {LOADING_RATIO_TARGET:.0f}x) "
              f"[{mark(ratio >= LOADING_RATIO_TARGET)}]")
    print("   (generation runs once per config and is cached in memory; the DataLoader ratio is the per-epoch one)")


def cuda_amp(repeats: int, device: torch.device) -> None:
    """Section 3: ResNet-18 training throughput with bfloat16 autocast, CUDA only."""
    print("\n== 3. ResNet-18 training throughput with AMP (bfloat16) on CUDA")
    if device.type != "cuda":
        print("   skipped: no CUDA device here (AMP is only used on CUDA)")
        return
    batch = 128
    trainers = {name: Trainer("resnet18", 3, 32, batch, variant, device) for name, variant in CONTENDERS}
    medians = interleaved_medians({name: t.step for name, t in trainers.items()}, repeats, steps=20,
                                  warmup=10, device=device)
    for name, seconds in medians.items():
        print(f"   {name:>12}: {batch / seconds:,.0f} items/s (batch {batch}), ratio to dense "
              f"{medians['dense'] / seconds:.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ersm bench", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per contender (default 7)")
    args = parser.parse_args([] if argv is None else argv)
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats} must be >= 1")

    seed_everything(0)  # the same threads and deterministic kernels as training
    device = resolve_device("auto")
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else (platform.processor() or platform.machine())
    load = "n/a" if not hasattr(os, "getloadavg") else ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"ersm bench: device {device.type} ({name}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cores, load average {load}")
    print("   the ratios compare runs interleaved in this process; absolute times depend on the machine's load")
    started = time.perf_counter()
    throughput = overhead(args.repeats, device)
    data_loading(throughput)
    cuda_amp(args.repeats, device)
    print(f"\nbench finished in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":  # ``python -m ersm.compute.bench --repeats 3``
    main(sys.argv[1:])
