"""Exact sparse execution of the stages after a hard mask (issue 31, part 2).

A hardened model (``ersm.compute.hardening``) zeros the dropped tokens, but a dense network still
spends the same compute on them. This module runs the stages after the mask only where the
kept tokens say, with DynConv's convention (Verelst and Tuytelaars, "Dynamic Convolutions:
Exploiting Spatial Sparsity for Faster Inference", CVPR 2020, and their public code):

    SEMANTICS. The kept-token mask ``kept [B, 1, h, w]`` (True keeps), max-pooled with each
    following unit's stride, says where that unit computes its outputs; elsewhere a plain
    conv unit writes zero and a residual block passes its input through its shortcut,
    ``y = relu(shortcut(x))`` (for an identity shortcut and ``x >= 0``, as after every ReLU and
    every mask in these networks, that is ``x`` unchanged); outputs do NOT dilate to every
    position a kept token can reach.

A *unit* is one ``conv_bn_relu`` (SmallCNN's ``layer3``: 3x3 conv, BatchNorm, ReLU) or one
torchvision ``BasicBlock`` / ``Bottleneck``; a stage (``layer3``, ``layer4``) is a sequence of
units, each with its own pooled mask. Written out, with ``M_0 = kept`` and unit ``u`` of stride
``s_u``:

    M_u = maxpool(M_{u-1}, kernel s_u, stride s_u, zero-padded at the bottom/right to a multiple of s_u)
        (shape [B, 1, ceil(h_{u-1} / s_u), ceil(w_{u-1} / s_u)], that of the unit's output)
    conv_bn_relu:   y = where(M_u, unit(x), 0)
    residual block: y = where(M_u, block(x), relu(shortcut(x)))
                      = relu(shortcut(x) + M_u * F(x))       (F: the residual branch)

where ``unit(x)`` and ``block(x)`` are the unit's own dense forward pass. Inside a residual block
the intermediate maps are computed at every position the next 3x3 convolution reads for an
active output (DynConv's dilated mask), so an active output of a block equals the dense block's
output there; only the *unit outputs* do not dilate. Between units, the zeros (or pass-through
values) at inactive positions are what the next unit reads, so the network's function depends
on the mask: this is a different network from the dense one on the hardened features, the
same one in the dense reference (:meth:`SparseStages.reference`) and the sparse execution
(:meth:`SparseStages.sparse`), which agree to rounding.

Sparse execution (tensors channels-last, ``[B, H, W, C]``, between units):

- a 3x3 convolution of stride ``s`` at the active output positions gathers each position's
  ``3 x 3 x C`` input patch from the zero-padded input (one ``index_select`` of rows of the
  ``[B * (H + 2) * (W + 2), C]`` view), multiplies the ``[N, 9 C]`` patches by the ``[9 C, C_out]``
  weight matrix in one matmul and adds the bias; a 1x1 convolution gathers one row per position;
- BatchNorm (eval mode, running statistics) is folded into the convolution once, when the
  executor is built: ``W' = W * gamma / sqrt(var + eps)``, ``b' = beta - mean * gamma / sqrt(var + eps)``;
  ReLU is applied to the gathered values;
- results are scattered back (``index_copy_``) into the unit's output, which starts as the
  inactive value (0, or ``relu(shortcut(x))``);
- a projection shortcut (``downsample``: 1x1 conv of stride ``s`` + BatchNorm) is computed at
  every output position, as DynConv does, because inactive outputs need it too.

Deviations and limits, stated:
- BatchNorm folding and the gathered matmul round differently from PyTorch's dense conv +
  BatchNorm: the two executions agree to about 1e-6 relative in float32 (the tests hold them to
  ``rtol=1e-5`` with an ``atol`` of 1e-5 times the output's largest magnitude, and to 1e-10 in float64).
- The folded weights are a snapshot taken when :class:`SparseStages` is built: build a new one
  after changing the weights or the BatchNorm statistics. Eval mode only (refused otherwise).
- Supported units only: 3x3 (padding 1) and 1x1 (padding 0) convolutions with square strides,
  no dilation, no groups, each followed by BatchNorm2d with running statistics. Anything else
  is refused with a ValueError naming the module, never run densely behind the caller's back.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck


DENSE_INNER_SHARE = 0.9
"""A Bottleneck's first 1x1 runs at every position once its 3x3 reads at least this share of them
(same values where they are read; fewer copies). An execution choice, not a semantic one."""

# ----------------------------------------------------------------------------- masks

def pool_mask(mask: torch.Tensor, stride: int) -> torch.Tensor:
    """``[B, 1, H, W]`` bool -> ``[B, 1, ceil(H / s), ceil(W / s)]``: is any position of each ``s x s`` cell active?

    The shape is that of a 3x3 (padding 1) or 1x1 convolution of stride ``s`` on ``H x W``.
    """
    if stride == 1:
        return mask
    height, width = mask.shape[-2:]
    padded = F.pad(mask.float(), (0, -width % stride, 0, -height % stride))
    return F.max_pool2d(padded, kernel_size=stride, stride=stride) > 0


def active_share(mask: torch.Tensor) -> float:
    """The share of positions a ``[B, 1, H, W]`` bool mask marks active."""
    return float(mask.float().mean()) if mask.numel() else 0.0


# ----------------------------------------------------------------------------- units

def is_conv_bn_relu(module: nn.Module) -> bool:
    return (type(module) is nn.Sequential and len(module) == 3 and isinstance(module[0], nn.Conv2d)
            and isinstance(module[1], nn.BatchNorm2d) and isinstance(module[2], nn.ReLU))


def post_mask_units(stages: Iterable[nn.Module]) -> list[nn.Module]:
    """The units (``conv_bn_relu``, ``BasicBlock``, ``Bottleneck``) of ``stages``, in execution order.

    Plain ``nn.Sequential`` containers are opened; anything else is refused with a ValueError.
    """
    units = []
    for stage in stages:
        if is_conv_bn_relu(stage) or isinstance(stage, (BasicBlock, Bottleneck)):
            units.append(stage)
        elif type(stage) is nn.Sequential:
            units.extend(post_mask_units(stage.children()))
        else:
            raise ValueError(f"stage {type(stage).__name__} ({stage!r:.120}) is not a unit sparse execution supports "
                             "(conv_bn_relu, torchvision BasicBlock or Bottleneck, or an nn.Sequential of them)")
    if not units:
        raise ValueError("stages=[] holds no unit to execute")
    return units


def check_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d, where: str) -> None:
    kernel, stride = conv.kernel_size, conv.stride
    padding = {(3, 3): (1, 1), (1, 1): (0, 0)}.get(kernel)
    if (padding is None or conv.padding != padding or stride[0] != stride[1] or conv.dilation != (1, 1)
            or conv.groups != 1 or conv.padding_mode != "zeros"):
        raise ValueError(f"{where}: {conv!r} is not a supported convolution (3x3 with padding 1 or 1x1 with padding 0, "
                         "square stride, no dilation, no groups, zero padding)")
    if not isinstance(bn, nn.BatchNorm2d) or not bn.track_running_stats or bn.running_var is None:
        raise ValueError(f"{where}: {conv!r} must be followed by a BatchNorm2d with running statistics, got {bn!r}")


class FoldedConv(nn.Module):
    """A convolution with its BatchNorm folded in, as a matrix for gathered patches.

    ``matrix [k * k * C_in, C_out]`` with rows ordered ``(dy, dx, c)`` (the order of a
    channels-last patch), ``bias [C_out]``; buffers, so ``.to()`` and ``.double()`` move them.
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, where: str) -> None:
        super().__init__()
        check_conv(conv, bn, where)
        self.kernel, self.stride = conv.kernel_size[0], conv.stride[0]
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
            shift = (bn.bias if bn.affine else 0) - bn.running_mean * scale
            if conv.bias is not None:
                shift = shift + conv.bias * scale
            weight = conv.weight * scale.view(-1, 1, 1, 1)
            self.register_buffer("matrix", weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1).t().contiguous(),
                                 persistent=False)
            self.register_buffer("bias", shift.detach().clone(), persistent=False)

    def apply(self, rows: torch.Tensor) -> torch.Tensor:  # noqa: A003 - the conv applied to gathered rows
        """``[N, k * k * C_in] -> [N, C_out]``: one matmul plus the folded bias."""
        return torch.addmm(self.bias, rows, self.matrix)


# ----------------------------------------------------------------------------- gathers (channels-last)

class Positions(NamedTuple):
    """Active output positions of a unit, ``N`` of them, on an output grid ``[B, Ho, Wo]``."""

    flat: torch.Tensor    # [N] index into B * Ho * Wo (row-major)
    batch: torch.Tensor   # [N]
    row: torch.Tensor     # [N]
    col: torch.Tensor     # [N]


def positions_of(mask: torch.Tensor) -> Positions:
    """``[B, 1, Ho, Wo]`` bool -> the active positions, in row-major order."""
    _, _, height, width = mask.shape
    flat = mask.reshape(-1).nonzero().squeeze(1)
    batch, rest = flat // (height * width), flat % (height * width)
    return Positions(flat, batch, rest // width, rest % width)


def window_index(at: Positions, stride: int, padded_hw: tuple[int, int]) -> torch.Tensor:
    """``[N, 9]``: rows of a zero-padded ``[B * (H + 2) * (W + 2), C]`` map under each position's 3x3 window.

    Output ``(i, j)`` of a 3x3 conv with padding 1 and stride ``s`` reads padded rows
    ``i * s + dy`` and columns ``j * s + dx``, ``dy, dx in 0..2``; order ``(dy, dx)``.
    """
    hp, wp = padded_hw
    base = at.batch * (hp * wp) + at.row * stride * wp + at.col * stride
    offsets = torch.tensor([dy * wp + dx for dy in range(3) for dx in range(3)], device=base.device)
    return base.unsqueeze(1) + offsets


def point_index(at: Positions, stride: int, hw: tuple[int, int]) -> torch.Tensor:
    """``[N]``: the row of an unpadded ``[B * H * W, C]`` map a 1x1 conv of stride ``s`` reads for each position."""
    height, width = hw
    return at.batch * (height * width) + at.row * stride * width + at.col * stride


def pad_rows(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, W, C] -> [B * (H + 2) * (W + 2), C]``, zero-padded by one position on each side."""
    return F.pad(x, (0, 0, 1, 1, 1, 1)).reshape(-1, x.shape[-1])


def conv3x3_at(conv: FoldedConv, padded: torch.Tensor, hw: tuple[int, int], at: Positions) -> torch.Tensor:
    """``padded [B * (H + 2) * (W + 2), C]`` (an ``H x W`` map, zero-padded) -> ``[N, C_out]``: the 3x3 conv
    (+ folded BN) at the output positions ``at``: one gather of the ``[N, 9 C]`` patches, one matmul."""
    index = window_index(at, conv.stride, (hw[0] + 2, hw[1] + 2))
    patches = padded.index_select(0, index.reshape(-1)).view(index.shape[0], 9 * padded.shape[-1])
    return conv.apply(patches)


def conv1x1_at(conv: FoldedConv, x: torch.Tensor, at: Positions | None) -> torch.Tensor:
    """``x [B, H, W, C]`` -> ``[N, C_out]`` at the positions ``at`` (every output position if None)."""
    if at is None:
        strided = x[:, ::conv.stride, ::conv.stride] if conv.stride > 1 else x
        return conv.apply(strided.reshape(-1, x.shape[-1]))
    rows = x.reshape(-1, x.shape[-1]).index_select(0, point_index(at, conv.stride, x.shape[1:3]))
    return conv.apply(rows)


def read_by_windows(at: Positions, stride: int, hw: tuple[int, int], batch: int) -> torch.Tensor:
    """``[B, 1, H, W]`` bool: the positions of an ``H x W`` map that the 3x3 windows (stride ``s``) of
    the output positions ``at`` read: DynConv's dilated mask for a block's intermediate map."""
    height, width = hw
    read = torch.zeros(batch * (height + 2) * (width + 2), dtype=torch.bool, device=at.flat.device)
    read[window_index(at, stride, (height + 2, width + 2)).reshape(-1)] = True
    return read.view(batch, 1, height + 2, width + 2)[:, :, 1:-1, 1:-1]


def scatter_rows(values: torch.Tensor, at: Positions, shape: tuple[int, int, int, int], fill=None) -> torch.Tensor:
    """``values [N, C]`` at ``at`` into a ``[B, H, W, C]`` map that is ``fill`` (``[B*H*W, C]``, or 0) elsewhere."""
    out = torch.zeros(shape[0] * shape[1] * shape[2], shape[3], dtype=values.dtype, device=values.device) \
        if fill is None else fill
    return out.index_copy_(0, at.flat, values).view(shape)


def scatter_padded(values: torch.Tensor, at: Positions, hw: tuple[int, int], batch: int) -> torch.Tensor:
    """``values [N, C]`` at ``at`` into a zero-padded ``[B * (H + 2) * (W + 2), C]`` map, zero elsewhere:
    a block's intermediate map, ready for :func:`conv3x3_at` without a separate padding copy."""
    hp, wp = hw[0] + 2, hw[1] + 2
    out = torch.zeros(batch * hp * wp, values.shape[1], dtype=values.dtype, device=values.device)
    return out.index_copy_(0, at.batch * (hp * wp) + (at.row + 1) * wp + at.col + 1, values)


# ----------------------------------------------------------------------------- sparse units

class SparseUnit(nn.Module):
    """One unit, runnable densely (``reference``) or at its active positions (``sparse``)."""

    stride: int

    def reference(self, x: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sparse(self, x: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class SparseConvBnRelu(SparseUnit):
    """``conv_bn_relu``: ``y = where(M, relu(bn(conv(x))), 0)``."""

    def __init__(self, unit: nn.Sequential, where: str) -> None:
        super().__init__()
        self.dense = unit
        self.conv = FoldedConv(unit[0], unit[1], where)
        self.stride = self.conv.stride

    def reference(self, x, active):  # x [B, C, H, W], active [B, 1, Ho, Wo]
        return torch.where(active, self.dense(x), torch.zeros((), dtype=x.dtype, device=x.device))

    def sparse(self, x, active):  # x [B, H, W, C] channels-last
        at = positions_of(active)
        values = torch.relu_(conv3x3_at(self.conv, pad_rows(x), x.shape[1:3], at))
        batch, _, height, width = active.shape
        return scatter_rows(values, at, (batch, height, width, self.conv.matrix.shape[1]))


class SparseResidual(SparseUnit):
    """A torchvision BasicBlock or Bottleneck: ``y = where(M, block(x), relu(shortcut(x)))``."""

    def __init__(self, block: nn.Module, where: str) -> None:
        super().__init__()
        self.dense = block
        self.bottleneck = isinstance(block, Bottleneck)
        if self.bottleneck:
            self.conv1 = FoldedConv(block.conv1, block.bn1, f"{where}.conv1")
            self.conv2 = FoldedConv(block.conv2, block.bn2, f"{where}.conv2")
            self.conv3 = FoldedConv(block.conv3, block.bn3, f"{where}.conv3")
            if self.conv1.kernel != 1 or self.conv2.kernel != 3 or self.conv3.kernel != 1 \
                    or self.conv1.stride != 1 or self.conv3.stride != 1:
                raise ValueError(f"{where}: a Bottleneck must be 1x1 -> 3x3 (strided) -> 1x1 (torchvision's V1.5)")
            self.stride = self.conv2.stride
        else:
            self.conv1 = FoldedConv(block.conv1, block.bn1, f"{where}.conv1")
            self.conv2 = FoldedConv(block.conv2, block.bn2, f"{where}.conv2")
            if self.conv1.kernel != 3 or self.conv2.kernel != 3 or self.conv2.stride != 1:
                raise ValueError(f"{where}: a BasicBlock must be 3x3 (strided) -> 3x3")
            self.stride = self.conv1.stride
        self.shortcut = None
        if block.downsample is not None:
            ds = block.downsample
            if not (type(ds) is nn.Sequential and len(ds) == 2):
                raise ValueError(f"{where}.downsample must be nn.Sequential(conv1x1, BatchNorm2d), got {ds!r}")
            self.shortcut = FoldedConv(ds[0], ds[1], f"{where}.downsample")
            if self.shortcut.kernel != 1 or self.shortcut.stride != self.stride:
                raise ValueError(f"{where}.downsample must be a 1x1 conv with the block's stride {self.stride}")
        elif self.stride != 1:
            raise ValueError(f"{where}: a block of stride {self.stride} needs a downsample shortcut")

    def reference(self, x, active):  # x [B, C, H, W], active [B, 1, Ho, Wo]
        shortcut = x if self.dense.downsample is None else self.dense.downsample(x)
        return torch.where(active, self.dense(x), torch.relu(shortcut))

    def sparse(self, x, active):  # x [B, H, W, C] channels-last
        batch, height, width, channels = x.shape
        out_h, out_w = active.shape[-2:]
        at = positions_of(active)
        residual = self.bottleneck_branch(x, at) if self.bottleneck else self.basic_branch(x, at, (out_h, out_w))
        if self.shortcut is None:
            rows = x.reshape(-1, channels)
            kept = rows.index_select(0, at.flat)
            passed = torch.relu(rows)  # a new tensor: x itself is never written
        else:
            shortcut = conv1x1_at(self.shortcut, x, None)  # every output position: inactive ones need it
            kept = shortcut.index_select(0, at.flat)
            passed = torch.relu_(shortcut)
        values = torch.relu_(kept.add_(residual))
        return scatter_rows(values, at, (batch, out_h, out_w, values.shape[1]), fill=passed)

    def bottleneck_branch(self, x: torch.Tensor, at: Positions) -> torch.Tensor:
        """1x1 at the positions the strided 3x3 reads, 3x3 at ``at``, 1x1 at ``at``: ``[N, C_out]``."""
        batch, height, width, _ = x.shape
        read = read_by_windows(at, self.conv2.stride, (height, width), batch)
        if active_share(read) >= DENSE_INNER_SHARE:
            # computing the 1x1 everywhere costs at most 1 / DENSE_INNER_SHARE more flops and saves the
            # gather and scatter; positions not read do not reach an active output either way
            inner = torch.relu_(conv1x1_at(self.conv1, x, None))
            inner_map = pad_rows(inner.view(batch, height, width, -1))
        else:
            read_at = positions_of(read)
            inner = torch.relu_(conv1x1_at(self.conv1, x, read_at))
            inner_map = scatter_padded(inner, read_at, (height, width), batch)
        middle = torch.relu_(conv3x3_at(self.conv2, inner_map, (height, width), at))
        return self.conv3.apply(middle)

    def basic_branch(self, x: torch.Tensor, at: Positions, out_hw: tuple[int, int]) -> torch.Tensor:
        """Strided 3x3 at the positions the second 3x3 reads, then 3x3 at ``at``: ``[N, C_out]``."""
        batch = x.shape[0]
        read_at = positions_of(read_by_windows(at, 1, out_hw, batch))
        inner = torch.relu_(conv3x3_at(self.conv1, pad_rows(x), x.shape[1:3], read_at))
        inner_map = scatter_padded(inner, read_at, out_hw, batch)
        return conv3x3_at(self.conv2, inner_map, out_hw, at)


def sparse_unit(unit: nn.Module, where: str) -> SparseUnit:
    if is_conv_bn_relu(unit):
        return SparseConvBnRelu(unit, where)
    return SparseResidual(unit, where)


# ----------------------------------------------------------------------------- stages

class SparseRun(NamedTuple):
    """What one execution of the stages gives."""

    output: torch.Tensor        # [B, C_out, H_out, W_out]
    active: list[torch.Tensor]  # per unit, [B, 1, H_u, W_u] bool: where it computed its outputs

    def active_shares(self) -> list[float]:
        """Per unit, the share of its output positions it computed (the sparsity that survived)."""
        return [active_share(mask) for mask in self.active]


class SparseStages(nn.Module):
    """The stages after a hard mask, with DynConv's semantics (module docstring).

    ``SparseStages([model.layer3, model.layer4])``; then ``run(x, kept)`` with the hardened
    features ``x [B, C, h, w]`` and the kept-token mask ``kept [B, 1, h, w]`` (bool, True keeps),
    ``mode="sparse"`` (gathered matmuls) or ``"reference"`` (each unit dense, then inactive
    positions replaced). Both return a :class:`SparseRun`. The stages' modules are shared, not
    copied; BatchNorm is folded from their current statistics (eval mode required).
    """

    MODES = ("sparse", "reference")

    def __init__(self, stages: Iterable[nn.Module]) -> None:
        super().__init__()
        stages = list(stages)
        units = post_mask_units(stages)
        training = [type(m).__name__ for stage in stages for m in stage.modules() if m.training]
        if training:
            raise RuntimeError(f"the stages are in training mode ({training[:3]}...): sparse execution folds BatchNorm's "
                               "running statistics and is for inference only; call .eval() first")
        self.units = nn.ModuleList(sparse_unit(unit, f"unit {index} ({type(unit).__name__})")
                                   for index, unit in enumerate(units))
        self.eval()

    def active_masks(self, kept: torch.Tensor) -> list[torch.Tensor]:
        """Per unit, ``[B, 1, H_u, W_u]`` bool: ``kept`` max-pooled with every stride up to that unit."""
        masks, mask = [], kept
        for unit in self.units:
            mask = pool_mask(mask, unit.stride)
            masks.append(mask)
        return masks

    @torch.no_grad()
    def run(self, x: torch.Tensor, kept: torch.Tensor, mode: str = "sparse") -> SparseRun:
        self.check(x, kept, mode)
        active = self.active_masks(kept)
        if mode == "reference":
            for unit, mask in zip(self.units, active):
                x = unit.reference(x, mask)
            return SparseRun(x, active)
        x = x.permute(0, 2, 3, 1).contiguous()  # channels-last rows for the gathers
        for unit, mask in zip(self.units, active):
            x = unit.sparse(x, mask)
        return SparseRun(x.permute(0, 3, 1, 2), active)

    def forward(self, x: torch.Tensor, kept: torch.Tensor, mode: str = "sparse") -> torch.Tensor:
        return self.run(x, kept, mode).output

    def check(self, x: torch.Tensor, kept: torch.Tensor, mode: str) -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode={mode!r} must be one of {self.MODES}")
        if any(module.training for module in self.modules()):
            raise RuntimeError("SparseStages is for inference only (BatchNorm is folded from its running statistics); "
                               "call .eval() on it and on the model whose stages it runs")
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"x must be [B, C, h, w], got x with shape {tuple(getattr(x, 'shape', ()))}")
        if not isinstance(kept, torch.Tensor) or kept.dtype != torch.bool or kept.dim() != 4 or kept.shape[1] != 1 \
                or kept.shape[0] != x.shape[0] or kept.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"kept must be a bool [B, 1, h, w] mask matching x {tuple(x.shape)}, got "
                             f"{getattr(kept, 'dtype', type(kept).__name__)} {tuple(getattr(kept, 'shape', ()))}")
