"""``python -m ersm.compute.bench_sparse``: sparse execution after a hard mask against dense, timed side by side.

A timing of the MECHANISM (``ersm.compute.sparse_exec``), not an accuracy: random weights (BatchNorm in
eval mode with its initial statistics), random images, and random kept-token masks at a given
kept fraction ``q`` on the grid after ``layer2``. Timed: the post-mask stages only,

    dense:        the stages' own forward on the hardened features (what a hardened model runs today);
    dense folded: the same with every BatchNorm folded into its convolution (a copy; what a
                  deployed dense network would run), so that the sparse path's own BatchNorm
                  folding is not counted as a gain of sparsity;
    sparse:       SparseStages.run(x, kept, mode="sparse") (gathered matmuls, DynConv's semantics);

interleaved repeat by repeat (order alternating) after a warm-up, on ``--threads`` CPU threads
(default 1, see ``--help``), reduced by the median, in one
process (as ``ersm.compute.bench``; DESIGN §7: ratios, never timed assertions in tests). Two kinds of
random mask, both keeping exactly ``ceil(q * h * w)`` tokens per image (``ersm.compute.hardening.top_tokens``):

- ``iid``: independent uniform scores per token, the worst case for the stride pooling
  (a 2x2 cell is active when any of its 4 tokens is);
- ``blob``: scores from a 4x4 uniform field upsampled bilinearly to the token grid, so the
  kept tokens form a few contiguous regions, as a trained mask's do.

For each it prints the share of output positions each stage still computes (the sparsity
that survived the pooling), the dense/sparse time ratio and the dense-folded/sparse ratio (> 1: sparse is faster), and at
``q = 1`` the overhead sparse/dense. The CPU kernels matter: in the package's portable mode (the
default, ``ersm.portability.numerics``) oneDNN is off and the dense convolutions run as im2col + GEMM, like
the sparse path; with ``ERSM_KERNELS=native`` the dense side runs oneDNN, which is much faster on
small maps (measured: SmallCNN's layer3 then costs less dense than gathered). Targets (issue 31): dense/sparse >= 1.5 at ``q = 0.5`` on
ResNet-50 (224 px, batch 1 and 32); sparse/dense <= 1.15 at ``q = 1``.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import sys

import torch
import torch.nn.functional as F
from torch import nn

from ersm.compute.bench import interleaved_medians
from ersm.compute.hardening import kept_count, top_tokens
from ersm.models import SmallCNN, resnet_imagenet
from ersm.compute.sparse_exec import SparseStages, post_mask_units

KEEPS = (1.0, 0.75, 0.5, 0.25)
MASK_KINDS = ("iid", "blob")
SPEEDUP_TARGET = 1.5      # dense / sparse at keep = 0.5, at least
OVERHEAD_TARGET = 1.15    # sparse / dense at keep = 1, at most

# (label, builder, channels, side, batch, stages after the mask)
CASES = (
    ("ResNet-50 224px b1", lambda: resnet_imagenet("resnet50", num_classes=10), 3, 224, 1, ("layer3", "layer4")),
    ("ResNet-50 224px b32", lambda: resnet_imagenet("resnet50", num_classes=10), 3, 224, 32, ("layer3", "layer4")),
    ("SmallCNN 48px b64", lambda: SmallCNN(1, 10), 1, 48, 64, ("layer3",)),
)


def random_kept(kind: str, batch: int, hw: tuple[int, int], keep: float, generator: torch.Generator) -> torch.Tensor:
    """``[B, 1, h, w]`` bool keeping exactly ``ceil(keep * h * w)`` tokens per image (module docstring)."""
    if kind == "iid":
        scores = torch.rand(batch, 1, *hw, generator=generator)
    else:
        scores = F.interpolate(torch.rand(batch, 1, 4, 4, generator=generator), size=hw, mode="bilinear",
                               align_corners=False)
    return top_tokens(scores, kept_count(keep, hw[0] * hw[1]))


def fold_batchnorm(stages: nn.Sequential) -> nn.Sequential:
    """A copy of ``stages`` (eval mode) with each BatchNorm folded into the convolution before it."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(stages)
    for unit in post_mask_units(list(folded)):
        if isinstance(unit, nn.Sequential):  # conv_bn_relu
            unit[0], unit[1] = fuse_conv_bn_eval(unit[0], unit[1]), nn.Identity()
            continue
        for conv, bn in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
            if hasattr(unit, conv):
                setattr(unit, conv, fuse_conv_bn_eval(getattr(unit, conv), getattr(unit, bn)))
                setattr(unit, bn, nn.Identity())
        if unit.downsample is not None:
            unit.downsample[0], unit.downsample[1] = fuse_conv_bn_eval(unit.downsample[0], unit.downsample[1]), nn.Identity()
    return folded


@torch.no_grad()
def bench_case(label: str, build, channels: int, side: int, batch: int, after: tuple[str, ...], repeats: int,
               keeps=KEEPS, kinds=MASK_KINDS) -> list[dict]:
    """Time one backbone at every keep and mask kind; prints a line each and returns the rows."""
    torch.manual_seed(0)
    model = build().eval()
    names = [name for name, _ in model.named_children()]
    encoder = nn.Sequential(*[getattr(model, name) for name in names[:names.index("layer2") + 1]])
    stages = nn.Sequential(*[getattr(model, name) for name in after])
    sparse = SparseStages(list(stages))
    folded = fold_batchnorm(stages)
    generator = torch.Generator().manual_seed(1)
    features = encoder(torch.rand(batch, channels, side, side, generator=generator))
    hw = tuple(features.shape[-2:])
    print(f"\n   {label}: mask after layer2 on a {hw[0]}x{hw[1]} grid; stages {', '.join(after)} "
          f"({len(sparse.units)} units)")
    rows = []
    for kind in kinds:
        for keep in keeps:
            kept = random_kept(kind, batch, hw, keep, generator)
            x = torch.where(kept, features, torch.zeros(()))
            medians = interleaved_medians({"dense": lambda: stages(x), "folded": lambda: folded(x),
                                           "sparse": lambda: sparse.run(x, kept)},
                                          repeats=repeats, steps=1, warmup=1 if batch > 8 else 2, device=x.device)
            shares = sparse.run(x, kept).active_shares()
            per_stage = stage_shares(sparse, shares, after, stages)
            speedup = medians["dense"] / medians["sparse"]
            folded_speedup = medians["folded"] / medians["sparse"]
            row = dict(case=label, kind=kind, keep=keep, dense_s=medians["dense"], folded_s=medians["folded"],
                       sparse_s=medians["sparse"], speedup=speedup, folded_speedup=folded_speedup, shares=per_stage)
            rows.append(row)
            print(f"   {kind:>4} keep {keep:.2f}: dense {medians['dense'] * 1e3:8.1f} ms  folded {medians['folded'] * 1e3:8.1f} ms  "
                  f"sparse {medians['sparse'] * 1e3:8.1f} ms  dense/sparse {speedup:5.2f}x{verdict(keep, speedup)}  "
                  f"folded/sparse {folded_speedup:5.2f}x  "
                  f"active share per stage {' '.join(f'{name} {share:.2f}' for name, share in per_stage.items())}")
    return rows


def stage_shares(sparse: SparseStages, shares: list[float], after, stages: nn.Sequential) -> dict[str, float]:
    """Per stage, the mean active share of its units (the units listed in order, stage by stage)."""
    out, index = {}, 0
    for name, stage in zip(after, stages):
        count = len(SparseStages([stage]).units)
        out[name] = sum(shares[index:index + count]) / count
        index += count
    return out


def verdict(keep: float, speedup: float) -> str:
    if keep == 1.0:
        overhead = 1 / speedup
        return f" (overhead sparse/dense {overhead:.2f}, target <= {OVERHEAD_TARGET}: " \
               f"{'PASS' if overhead <= OVERHEAD_TARGET else 'MISS'})"
    if keep == 0.5:
        return f" (target >= {SPEEDUP_TARGET}: {'PASS' if speedup >= SPEEDUP_TARGET else 'MISS'})"
    return ""


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m ersm.compute.bench_sparse", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per contender (default 5)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a machine whose cores are busy with other work, "
                             "every parallel region waits for a descheduled thread, which swamps small ops)")
    parser.add_argument("--cases", nargs="*", default=None, help="labels of the cases to run (default: all)")
    args = parser.parse_args([] if argv is None else argv)
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats} must be >= 1")
    if args.threads < 1:
        parser.error(f"--threads={args.threads} must be >= 1")
    torch.set_num_threads(args.threads)
    load = "n/a" if not hasattr(os, "getloadavg") else ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"ersm bench_sparse: cpu ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cores, load average {load}, "
          f"ERSM_KERNELS={os.environ.get('ERSM_KERNELS', 'portable')}")
    print("   a timing of the mechanism (random weights, random masks), not an accuracy; "
          f"median of {args.repeats} interleaved repeats")
    rows = []
    for label, build, channels, side, batch, after in CASES:
        if args.cases and label not in args.cases:
            continue
        rows += bench_case(label, build, channels, side, batch, after, args.repeats)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
