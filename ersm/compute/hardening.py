"""Hard inference from a trained ERSM model, without retraining (issue 31, part 1).

The paper's Energy-Mask Layer multiplies every token by a soft mask, ``y_i = m_i * x_i`` with
``m_i = sigmoid(-E_un_i)`` in ``(0, 0.5]`` (``ersm.layer``): nothing is ever removed, so the
mask saves no compute. :func:`harden` turns a trained model into an inference model that
removes tokens for real. At each Energy-Mask Layer, for each image, it keeps the
``k = ceil(q * h * w)`` tokens that rank highest and sets the others exactly to zero:

    s      = ranking score   [B, 1, h, w]   (higher = more important)
    keep_i = 1 for the k tokens with the largest s_i of the image, else 0   (ties: row-major order)
    y_i    = m_i * x_i   where keep_i = 1
    y_i    = 0           where keep_i = 0

Kept tokens keep their soft value ``m_i * x_i`` (the layer's own output, bit for bit), so at
``q = 1`` the hardened model computes exactly what the soft one does. ``k`` is fixed per layer
(it depends only on ``q`` and the token grid), so every tensor keeps a static shape.

Rankings (``ranking=``), as in ``ersm.experiments.rankings``:

- ``"mask"``: the mask ``m`` itself (low unary energy first, the order the layer uses);
- ``"energy"``: ``-E = -(E_un + E_pair)``, the pairwise term included;
- ``"magnitude"``: ``||x_i||_2`` over channels of the layer's *input* (pre-mask magnitude);
- ``"masked_magnitude"``: ``||m_i x_i||_2``, the post-mask magnitude the rest of the network sees;
- ``"random"``: uniform scores from a ``torch.Generator`` seeded with ``seed`` once per layer at
  :func:`harden` time and advanced by every forward pass: the n-th forward pass of a freshly
  hardened model always draws the same scores, but the same image in another batch, or in
  another position of the batch, gets other scores;
- ``"oracle"``: an UPPER BOUND, not a method: the share of each token covered by the
  ground-truth object mask, which the caller hands in per batch with :func:`object_masks`
  (``with object_masks(hard, masks): logits = hard(images)``). The masks are ``[B, H, W]`` or
  ``[B, 1, H, W]`` at any resolution, values in ``[0, 1]``; their coverage of the ``h x w`` token
  grid is ``adaptive_avg_pool2d`` of them (exact area shares when ``H, W`` are multiples of
  ``h, w``). Tokens the object does not touch tie at 0 and are then kept in row-major order.

Deviations and choices (ours; the paper has no hard inference):

- ``k = ceil(q * h * w)`` with ``q`` read as the decimal it prints as (``Fraction(repr(q))``), so
  ``keep=0.07`` on 100 tokens keeps 7, not the 8 that ``ceil(0.07 * 100)`` in binary floating
  point gives. ``k >= 1`` for every ``q > 0``.
- Ties are broken by the row-major token index (a stable sort), never at random: the "mask"
  ranking of a ``"hardconcrete"`` layer has many exact ties at 0 and 1.
- The layer's ``terms`` (and what :func:`ersm.collect_terms` receives) stay the *soft* layer's
  terms: the hard choice is an inference-time decision on top of them. What was kept is in the
  layer's ``kept`` attribute, ``[B, 1, h, w]`` bool (True keeps), after each forward pass.
- A hardened model is for inference only: its layers refuse to run in training mode.

Execution (``execution=``), an explicit choice, never made silently:

- ``"dense"`` (default): the network after the mask runs as it is, densely, on the hardened
  features. No compute is saved; dropped tokens are zeros the following convolutions still read.
- ``"sparse"``: the stages after the mask run with DynConv's semantics (``ersm.compute.sparse_exec``):
  each unit computes its outputs only where the kept tokens, max-pooled with its stride, say;
  elsewhere 0 (a conv unit) or ``relu(shortcut(x))`` (a residual block). This is a different
  function from ``"dense"`` for ``q < 1`` (outputs near kept tokens are not computed); at
  ``q = 1`` both are the dense network (to rounding for ``"sparse"``, exactly for ``"reference"``).
- ``"reference"``: the same function as ``"sparse"``, computed densely (each unit dense, then its
  inactive outputs replaced): the check of ``"sparse"`` and its fallback.
- ``"auto"``: ``"sparse"`` or ``"reference"``, whichever is faster, *measured* on ``probe`` (a
  batch of images like those the model will see) when :func:`harden` is called: interleaved
  medians of ``repeats`` runs each. The decision, with both times, is the model's
  ``execution_decision`` (:class:`ExecutionDecision`), and a fallback to ``"reference"`` is
  announced with a ``UserWarning``. Both candidates compute the same function, so the decision
  changes the time, never the outputs (beyond rounding).

``"sparse"``, ``"reference"`` and ``"auto"`` need a model built as ``nn.Sequential`` stages
(the package's backbones) with exactly one EnergyMask at the end of a top-level stage (as
``insert_energy_mask`` puts it); the post-mask stages are the stages after it but the last one
(the head), or those named in ``stages``.
"""
from __future__ import annotations

import copy
import math
import statistics
import time
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from fractions import Fraction
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ersm.checks import check_count, is_integer, is_number
from ersm.layer import EnergyMask, energy_masks

MASK, ENERGY, MAGNITUDE, MASKED_MAGNITUDE, RANDOM, ORACLE = (
    "mask", "energy", "magnitude", "masked_magnitude", "random", "oracle")
RANKINGS = (MASK, ENERGY, MAGNITUDE, MASKED_MAGNITUDE, RANDOM, ORACLE)
EXECUTIONS = ("dense", "sparse", "reference", "auto")


def kept_count(keep: float, tokens: int) -> int:
    """``ceil(keep * tokens)``, with ``keep`` read as the decimal it prints as (module docstring)."""
    return max(1, math.ceil(Fraction(repr(float(keep))) * tokens))


def top_tokens(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``scores [B, 1, h, w] -> kept [B, 1, h, w]`` bool: the ``k`` highest scores of each image.

    A stable descending sort, so equal scores are kept in row-major token order.
    """
    flat = scores.flatten(1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :k]
    kept = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, True)
    return kept.view(scores.shape)


def token_coverage(object_mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[B, H, W]`` or ``[B, 1, H, W]`` object masks -> ``[B, 1, h, w]`` share of each token they cover."""
    if object_mask.dim() == 3:
        object_mask = object_mask.unsqueeze(1)
    return F.adaptive_avg_pool2d(object_mask.float(), grid)


class HardEnergyMask(EnergyMask):
    """An EnergyMask that keeps the top ``ceil(keep * h * w)`` tokens of each image and zeros the rest.

    ``forward(x [B, C, h, w]) -> y [B, C, h, w]``: ``y = m * x`` on the kept tokens, exactly 0
    elsewhere; ``self.kept [B, 1, h, w]`` (bool, True keeps) records the choice. Build it with
    :func:`harden`, not directly.
    """

    keep: float
    ranking: str

    @classmethod
    def from_soft(cls, layer: EnergyMask, keep: float, ranking: str, seed: int) -> HardEnergyMask:
        """A hard twin of ``layer``: the same hyperparameters and parameters, on its device and dtype."""
        hard = cls(layer.channels, proj_dim=layer.proj_dim, lambda_unary=layer.lambda_unary,
                   lambda_pair=layer.lambda_pair, neighbourhood=layer.neighbourhood, variant=layer.variant,
                   iterations=layer.iterations)
        parameter = layer.proj.weight
        hard.to(device=parameter.device, dtype=parameter.dtype)
        hard.load_state_dict(layer.state_dict(), strict=True)
        hard.keep, hard.ranking = float(keep), ranking
        hard.generator = torch.Generator(device=parameter.device).manual_seed(seed) if ranking == RANDOM else None
        hard.object_mask = None  # set by object_masks(...) for the oracle
        hard.kept = None
        hard.eval()
        return hard

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, keep={self.keep}, ranking={self.ranking!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise RuntimeError("a hardened EnergyMask is for inference only (keep the model in eval mode): in training "
                               "mode BatchNorm and the hard-concrete gate behave differently from what was hardened")
        soft = super().forward(x)  # m * x, and self.terms of the soft layer
        k = kept_count(self.keep, x.shape[-2] * x.shape[-1])
        self.kept = top_tokens(self.scores(x, soft), k)
        # torch.where, not a multiplication by the 0/1 map: kept tokens stay m * x bit for bit
        return torch.where(self.kept, soft, torch.zeros((), dtype=soft.dtype, device=soft.device))

    @torch.no_grad()
    def scores(self, x: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        """The ranking's ``[B, 1, h, w]`` scores, higher = more important."""
        if self.ranking == MASK:
            return self.terms.mask
        if self.ranking == ENERGY:
            return -self.terms.energy
        if self.ranking == MAGNITUDE:
            return x.float().norm(dim=1, keepdim=True)
        if self.ranking == MASKED_MAGNITUDE:
            return soft.float().norm(dim=1, keepdim=True)
        if self.ranking == RANDOM:
            shape = (x.shape[0], 1, *x.shape[-2:])
            return torch.rand(shape, generator=self.generator, device=x.device)
        return self.oracle_scores(x)

    def oracle_scores(self, x: torch.Tensor) -> torch.Tensor:
        if self.object_mask is None:
            raise RuntimeError("ranking='oracle' needs the ground-truth object masks of the batch: "
                               "`with ersm.compute.hardening.object_masks(model, masks): model(images)`")
        if self.object_mask.shape[0] != x.shape[0]:
            raise ValueError(f"object_masks has {self.object_mask.shape[0]} masks (shape {tuple(self.object_mask.shape)}) "
                             f"for a batch of {x.shape[0]} images")
        return token_coverage(self.object_mask.to(x.device), tuple(x.shape[-2:]))


def check_keep(keep) -> None:
    if not is_number(keep, numpy=False) or not 0 < keep <= 1:
        raise ValueError(f"keep={keep!r} must be a number in (0, 1], the share of tokens kept")


def check_hardenable(model: nn.Module) -> list[tuple[str, EnergyMask]]:
    """The model's EnergyMask layers; ValueError/RuntimeError for a model that cannot be hardened."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model={type(model).__name__} must be a torch.nn.Module")
    if isinstance(model, EnergyMask):
        raise ValueError(f"model={type(model).__name__} is an EnergyMask itself; harden the model that contains it")
    layers = energy_masks(model)
    if not layers:
        raise ValueError(f"model={type(model).__name__} holds no EnergyMask layer: harden needs an ERSM model")
    already = [name for name, layer in layers if isinstance(layer, HardEnergyMask)]
    if already:
        raise ValueError(f"model={type(model).__name__} is hardened already (layers {already}); harden the soft model")
    if model.training:
        raise RuntimeError("model is in training mode: harden builds an inference model from the model as it evaluates "
                           "(BatchNorm's running statistics, the deterministic hard-concrete gate); call model.eval() first")
    return layers


def harden(model: nn.Module, keep: float, ranking: str = MASK, seed: int = 0, execution: str = "dense",
           probe: torch.Tensor | None = None, stages: tuple[str, ...] | None = None, repeats: int = 5) -> nn.Module:
    """An inference copy of ``model`` whose Energy-Mask Layers keep ``ceil(keep * h * w)`` tokens per image.

    ``model`` (in eval mode, holding at least one EnergyMask) is not changed. Every EnergyMask of
    the copy becomes a :class:`HardEnergyMask` with the same parameters. ``ranking`` is one of
    :data:`RANKINGS` (module docstring); ``seed`` seeds the ``"random"`` ranking (one generator
    per layer). ``"oracle"`` needs :func:`object_masks` around each forward pass.
    ``execution`` is one of :data:`EXECUTIONS` (module docstring); ``"auto"`` needs ``probe``
    (images ``[B, C, H, W]``) and times ``repeats`` runs of each candidate on it; ``stages`` names
    the post-mask stages for the non-dense executions.
    Raises ValueError for ``keep`` outside ``(0, 1]``, an unknown ``ranking`` or ``execution``, a
    model without an EnergyMask (or hardened already) or one the chosen execution cannot run, and
    RuntimeError for a model in training mode, before any work.
    """
    check_keep(keep)
    if ranking not in RANKINGS:
        raise ValueError(f"ranking={ranking!r} must be one of {RANKINGS}")
    if not is_integer(seed, numpy=False):
        raise ValueError(f"seed={seed!r} must be an integer")
    if execution not in EXECUTIONS:
        raise ValueError(f"execution={execution!r} must be one of {EXECUTIONS}")
    if execution == "auto" and not isinstance(probe, torch.Tensor):
        raise ValueError(f"execution='auto' decides by measurement and needs probe=images [B, C, H, W], got probe={probe!r}")
    check_count("repeats", repeats, 1)
    check_hardenable(model)
    if execution != "dense":
        cut, after = sparse_layout(model, stages)  # refuses a model sparse execution cannot run, before copying
    hardened = copy.deepcopy(model)
    for name, layer in energy_masks(hardened):
        parent_name, _, child = name.rpartition(".")
        parent = hardened.get_submodule(parent_name) if parent_name else hardened
        setattr(parent, child, HardEnergyMask.from_soft(layer, keep, ranking, seed))
    if execution == "dense":
        return hardened
    executed = SparselyExecuted(hardened, cut, after, mode="sparse" if execution == "auto" else execution)
    if execution == "auto":
        executed.decide(probe, repeats)
    return executed


def hard_layers(model: nn.Module) -> list[HardEnergyMask]:
    return [layer for _, layer in energy_masks(model) if isinstance(layer, HardEnergyMask)]


# ----------------------------------------------------------------------------- sparse execution

def sparse_layout(model: nn.Module, stages: tuple[str, ...] | None) -> tuple[str, tuple[str, ...]]:
    """``(cut, post-mask stage names)`` of an ``nn.Sequential`` model whose one EnergyMask ends a top-level stage."""
    from ersm.experiments.rankings import sequential_cut
    from ersm.compute.sparse_exec import post_mask_units

    layers = energy_masks(model)
    if len(layers) != 1:
        raise ValueError(f"execution other than 'dense' needs exactly one EnergyMask; model holds {len(layers)} "
                         f"({[name for name, _ in layers]})")
    cut = sequential_cut(model, layers[0][1])
    if cut is None:
        raise ValueError(f"execution other than 'dense' needs an nn.Sequential model whose EnergyMask ends a top-level "
                         f"stage (as insert_energy_mask puts it); {type(model).__name__}'s sits at {layers[0][0]!r}")
    names = [name for name, _ in model.named_children()]
    following = names[names.index(cut) + 1:]
    after = tuple(following[:-1]) if stages is None else tuple(stages)
    if not after or list(after) != following[:len(after)]:
        raise ValueError(f"stages={stages!r} must name the stages right after {cut!r}, in order, leaving the head: "
                         f"the model's stages after the mask are {following}")
    post_mask_units([getattr(model, name) for name in after])  # ValueError naming an unsupported unit
    return cut, after


class ExecutionDecision(NamedTuple):
    """What ``execution="auto"`` measured and chose (the seconds are medians per probe batch)."""

    chosen: str
    sparse_s: float
    reference_s: float
    repeats: int
    probe_shape: tuple[int, ...]
    threads: int

    def describe(self) -> str:
        return (f"execution={self.chosen!r}: sparse {self.sparse_s * 1e3:.1f} ms vs dense reference "
                f"{self.reference_s * 1e3:.1f} ms per batch {self.probe_shape} (median of {self.repeats} interleaved "
                f"runs, {self.threads} threads; ratio sparse/reference {self.sparse_s / self.reference_s:.2f})")


class SparselyExecuted(nn.Module):
    """A hardened model whose post-mask stages run with ``ersm.compute.sparse_exec``'s semantics.

    ``forward(x [B, C, H, W]) -> logits``: ``encoder`` (up to and including the masked stage, whose
    HardEnergyMask records ``kept``), then ``stages`` (:class:`ersm.compute.sparse_exec.SparseStages`) in
    ``mode`` ("sparse" or "reference"), then ``head``. ``last_active_shares`` holds, after each
    forward pass, the share of output positions each post-mask unit computed.
    """

    def __init__(self, hardened: nn.Sequential, cut: str, after: tuple[str, ...], mode: str) -> None:
        from ersm.compute.sparse_exec import SparseStages

        super().__init__()
        children = list(hardened.named_children())
        names = [name for name, _ in children]
        first, last = names.index(cut) + 1, names.index(after[-1]) + 1
        self.encoder = nn.Sequential(OrderedDict(children[:first]))
        self.stages = SparseStages([module for _, module in children[first:last]])
        self.head = nn.Sequential(OrderedDict(children[last:]))
        self.layer = hard_layers(self.encoder)[0]
        self.mode = mode
        self.execution_decision: ExecutionDecision | None = None
        self.last_active_shares: list[float] | None = None
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        run = self.stages.run(features, self.layer.kept, mode=self.mode)
        self.last_active_shares = run.active_shares()
        return self.head(run.output)

    @torch.no_grad()
    def decide(self, probe: torch.Tensor, repeats: int) -> ExecutionDecision:
        """Time "sparse" against "reference" on ``probe`` (interleaved medians) and keep the faster one."""
        features = self.encoder(probe)
        kept = self.layer.kept
        times = {"sparse": [], "reference": []}
        for mode in times:  # warm-up
            self.stages.run(features, kept, mode=mode)
        for repeat in range(repeats):
            for mode in (("sparse", "reference") if repeat % 2 == 0 else ("reference", "sparse")):
                started = time.perf_counter()
                self.stages.run(features, kept, mode=mode)
                times[mode].append(time.perf_counter() - started)
        sparse_s, reference_s = statistics.median(times["sparse"]), statistics.median(times["reference"])
        chosen = "sparse" if sparse_s <= reference_s else "reference"
        self.mode = chosen
        self.execution_decision = ExecutionDecision(chosen, sparse_s, reference_s, repeats, tuple(probe.shape),
                                                    torch.get_num_threads())
        if chosen == "reference":
            warnings.warn(f"harden(execution='auto') falls back to the dense reference: {self.execution_decision.describe()}",
                          UserWarning, stacklevel=3)
        return self.execution_decision


@contextmanager
def object_masks(model: nn.Module, masks: torch.Tensor) -> Iterator[None]:
    """``with object_masks(hard, masks): hard(images)``: the ground truth the ``"oracle"`` ranking reads.

    ``masks``: ``[B, H, W]`` or ``[B, 1, H, W]``, values in ``[0, 1]`` (1 = object), one per image
    of the batch, at any resolution. Every HardEnergyMask of ``model`` with ``ranking="oracle"``
    reads them while the block is open; they are removed when it closes.
    """
    layers = [layer for layer in hard_layers(model) if layer.ranking == ORACLE]
    if not layers:
        raise ValueError(f"model={type(model).__name__} has no HardEnergyMask with ranking='oracle'; "
                         "harden(model, keep, ranking='oracle') first")
    if not isinstance(masks, torch.Tensor) or masks.dim() not in (3, 4) or (masks.dim() == 4 and masks.shape[1] != 1):
        shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise ValueError(f"masks must be [B, H, W] or [B, 1, H, W], got masks with shape {shape}")
    values = masks.float()
    if not torch.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        raise ValueError("masks must hold values in [0, 1] (1 = object)")
    for layer in layers:
        layer.object_mask = masks
    try:
        yield
    finally:
        for layer in layers:
            layer.object_mask = None
