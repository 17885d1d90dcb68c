"""The Energy-Mask Layer of "Energy-Regularized Spatial Masking" (ERSM).

For every spatial token ``i`` of a feature map ``x: [B, C, H, W]`` the paper defines

    p_i      = P x_i / ||P x_i||                         (1x1 projection C -> d, L2-normalised)
    E_un_i   = lambda_unary * softplus(w . p_i + b)       (intrinsic unary importance cost)
    E_pair_i = lambda_pair  * softplus(sum_{j in N(i)} p_i . p_j)   (pairwise spatial term)
    E_i      = E_un_i + E_pair_i
    m_i      = sigmoid(-E_un_i)                           (soft mask)
    y_i      = m_i * x_i

``N(i)`` is the 8-neighbourhood on the token grid (4 as an option). Border tokens have fewer
neighbours: the grid is zero-padded, so nothing outside it contributes to the sum.

Quirks of the equations, kept on purpose in ``variant="paper"``:
- ``E_un >= 0``, so ``m`` lies in ``(0, 0.5]``: the mask never keeps a token whole, and a hard
  threshold at 0.5 keeps nothing.
- The pairwise term grows when a token is *similar* to its neighbours, so minimising it
  rewards tokens unlike their neighbours (a redundancy penalty, not a smoothness prior).
- The pairwise term never reaches the mask; it acts only through the regulariser
  ``mean(m * E)`` (see ``ersm.loss``).

Deviations from the paper (all documented, none hidden):
- ``variant="calibrated"`` (ours, not the paper's): ``m_i = sigmoid((a - E_un_i) / T)`` with a
  learned offset ``a`` (initialised to 0) and a learned temperature ``T = exp(t)`` (``t``
  initialised to 0). At initialisation it equals the paper's mask; training can move ``m``
  anywhere in ``(0, 1)``.
- ``variant="meanfield"`` (ours): the mask is the mean-field marginal of a binary field with
  unary log-odds ``c - E_un_i`` and couplings ``lambda_pair * a_ij``, ``a_ij = p_i . p_j`` for
  ``j in N(i)`` (as in CRF-as-RNN, Zheng et al. 2015), so the pairwise term reaches the mask:

      q0_i = sigmoid(c - E_un_i)
      qt_i = sigmoid(c - E_un_i + lambda_pair * sum_{j in N(i)} a_ij * (2 q(t-1)_j - 1)),  t = 1..T
      m_i  = qT_i

  All tokens are updated at once (synchronous, not the sequential coordinate ascent of exact
  mean field). ``c`` (``mask_offset``) is learned and starts at 0; ``T = iterations`` (default
  3). With ``T = 0`` and ``c = 0`` it is the paper's mask exactly. Here *similar* neighbours
  push each other's masks the same way (a smoothness prior), unlike the paper's pairwise energy,
  which the regulariser ``mean(m * E)`` still uses unchanged.
- ``variant="hardconcrete"`` (ours): a hard-concrete gate (Louizos et al. 2018, ``tau = 2/3``,
  ``gamma = -0.1``, ``zeta = 1.1`` as in their public L0 code) with ``log_alpha_i = c - E_un_i``:

      training:   u ~ U(eps, 1 - eps),  s_i = sigmoid((log u - log(1 - u) + log_alpha_i) / tau)
      evaluation: s_i = sigmoid(log_alpha_i)
      m_i = z_i = clamp(s_i * (zeta - gamma) + gamma, 0, 1)      (exact zeros and ones)
      pi_i = P(z_i > 0) = sigmoid(log_alpha_i - tau * log(-gamma / zeta))

  ``eps = 1e-6``; ``u`` is ``torch.rand`` of shape ``[B, 1, H, W]`` in the energy's dtype on the
  input's device (torch's global generator, so ``torch.manual_seed`` reproduces a run), mapped
  to ``eps + (1 - 2 eps) u`` (``log(1 - u)`` is computed as ``log1p(-u)``). ``self.training``
  picks the noisy gate. The regulariser weights the energy by ``pi`` instead of ``m``
  (``EnergyTerms.gate_open``): ``mean(pi * E) = E_u[mean(1[z > 0] * E)]``, the energy of the
  open gates in expectation over the noise. ``c`` starts at ``lambda_unary * ln 2 + ln 11``
  (3.09 for ``lambda_unary = 1``): at initialisation ``w . p + b`` is near 0 (``|w . p + b|``
  is below about 0.8 for the default init), so ``E_un`` is near ``lambda_unary * ln 2`` and
  ``log_alpha`` near ``ln 11 = log((1 - gamma) / (zeta - 1))``, where the evaluation gate just
  reaches 1. Every gate starts open: ``pi = sigmoid((1 + tau) ln 11)`` is about 0.98, and in
  training ``z = 1`` in about 70% of the draws and ``z = 0`` in about 2%. A larger ``c`` would
  saturate more draws at ``z = 1``, where no gradient passes through the gate, and shrink
  ``d pi / d log_alpha``; a smaller one would start with gates partly closed.
- The energy is computed in at least float32, also under autocast, because the L2
  normalisation and softplus are fragile in float16. The output keeps the input's dtype.
- The projection P is a 1x1 convolution *with* a bias (the paper writes ``P x_i``; the bias is
  the public contract of this package, issue 2). It can be zeroed to recover the bias-free form.
- ``normalize`` uses ``eps=1e-12`` (PyTorch's default) so an all-zero token maps to ``p = 0``
  instead of NaN; the paper does not say what happens there.

The layer's contract: where the energy terms go (issue 14)
------------------------------------------------------------
The forward pass returns only the masked features; the terms the regulariser needs
(:class:`EnergyTerms`) leave the layer two ways:

- ``layer.terms``: the terms of the *last* forward of that module object. Enough for
  single-process code that reads them right after the pass (``regularization_loss(model)``,
  the notebooks), and kept exactly as it was. It is not enough elsewhere:
  ``torch.nn.DataParallel`` runs throw-away replicas, whose ``terms`` never reach the wrapped
  module, and a second forward (a micro-batch) overwrites the first.
- ``ersm.collection.collect_terms``: ``with ersm.collect_terms(model) as collected: logits = model(x)``
  gathers the terms of *every* forward of every EnergyMask in ``model`` while the block is
  open, and ``ersm.regularization_loss(collected)`` is the token-weighted mean over all of them
  (``ersm.loss``). The block may hold several forwards (micro-batches); the collector stays
  readable after the block closes.

How collection works, and why it survives DataParallel, DDP, ``torch.compile`` and copies, is in
``ersm/collection.py``; this module keeps the layer's side of it (``_Taps``).

The non-finite check: non-finite features give a non-finite energy, and ``forward`` raises
``ValueError`` then (the training loop turns it into ``FloatingPointError``). Reading the check's
result on the host synchronises with the device, so it runs where :data:`CHECK_FINITE` says:
``None`` (the default) checks on the CPU, where the result is on the host already, and skips it
on CUDA and other devices; ``True`` checks everywhere (on CUDA one host sync per forward), ``False``
nowhere. Under ``torch.compile`` it is always skipped (``torch.compiler.is_compiling()``): a
data-dependent ``raise`` breaks the graph, and ``fullgraph=True`` refuses that. Where the check is
skipped, non-finite features give a non-finite loss, which the training loop's own check stops
(``ersm.training.cache``: ``FloatingPointError`` naming epoch and step).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ersm.checks import check_count

VARIANTS = ("paper", "calibrated", "meanfield", "hardconcrete")  # the one variant list: config, tuning, families derive from it
NEIGHBOURHOODS = (4, 8)

# Hard-concrete constants of Louizos et al. (2018) and their public L0 code.
HC_TEMPERATURE = 2.0 / 3.0  # tau
HC_LOW = -0.1  # gamma, the left end of the stretched interval
HC_HIGH = 1.1  # zeta, the right end
HC_EPS = 1e-6  # u ~ U(eps, 1 - eps) keeps log u - log(1 - u) finite

CHECK_FINITE: bool | None = None
"""Where ``forward`` checks the energy for NaN and inf (module docstring): ``None`` on the CPU only
(the default), ``True`` on every device (a host sync per forward on CUDA), ``False`` nowhere.
Never under ``torch.compile``."""


class EnergyTerms(NamedTuple):
    """What one forward pass computed; every field keeps its autograd graph.

    Shapes: ``p_hat [B, d, H, W]``; ``unary, pairwise, energy, mask, gate_open [B, 1, H, W]``.
    ``unary`` and ``pairwise`` include their lambdas; ``energy = unary + pairwise``;
    ``mask`` multiplies the features (1 keeps a token whole, 0 removes it); ``gate_open`` is
    what the regulariser weights the energy with, ``mean(gate_open * energy)``: the mask itself
    (the same tensor) for "paper", "calibrated" and "meanfield", ``pi = P(z > 0)`` for
    "hardconcrete".
    """

    p_hat: torch.Tensor
    unary: torch.Tensor
    pairwise: torch.Tensor
    energy: torch.Tensor
    mask: torch.Tensor
    gate_open: torch.Tensor


def neighbour_kernel(neighbourhood: int) -> torch.Tensor:
    """The 3x3 stencil ``[1, 1, 3, 3]`` that sums the 4 or 8 neighbours of a token (not itself)."""
    if neighbourhood not in NEIGHBOURHOODS:
        raise ValueError(f"neighbourhood={neighbourhood!r} must be one of {NEIGHBOURHOODS}")
    kernel = torch.ones(3, 3) if neighbourhood == 8 else torch.tensor([[0.0, 1, 0], [1, 0, 1], [0, 1, 0]])
    kernel[1, 1] = 0.0
    return kernel.view(1, 1, 3, 3)


def neighbour_sum(p_hat: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``sum_{j in N(i)} p_j`` for every token: ``[B, d, H, W] -> [B, d, H, W]``.

    A depthwise 3x3 convolution with zero padding, so tokens outside the grid add nothing.
    """
    channels = p_hat.shape[1]
    return F.conv2d(p_hat, kernel.to(p_hat.dtype).expand(channels, 1, 3, 3), padding=1, groups=channels)


def neighbour_offsets(neighbourhood: int) -> tuple[tuple[int, int], ...]:
    """The ``(dy, dx)`` of the 4 or 8 neighbours in row-major stencil order (point-symmetric:
    ``offsets[k] = -offsets[K - 1 - k]``)."""
    kernel = neighbour_kernel(neighbourhood)[0, 0]
    return tuple((dy - 1, dx - 1) for dy in range(3) for dx in range(3) if kernel[dy, dx] != 0)


def shifted_neighbours(t: torch.Tensor, offsets: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """``t [B, c, H, W] -> [B, K, c, H, W]``: entry ``k`` at token ``i`` is ``t`` at ``i + offsets[k]``, 0 off the grid."""
    H, W = t.shape[-2:]
    padded = F.pad(t, (1, 1, 1, 1))
    return torch.stack([padded[..., 1 + dy:1 + dy + H, 1 + dx:1 + dx + W] for dy, dx in offsets], dim=1)


def shifted_channels(t: torch.Tensor, offsets: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """``t [B, K, H, W] -> [B, K, H, W]``: channel ``k`` at token ``i`` is ``t[:, k]`` at ``i + offsets[k]``, 0 off the grid."""
    H, W = t.shape[-2:]
    padded = F.pad(t, (1, 1, 1, 1))
    return torch.stack([padded[:, k, 1 + dy:1 + dy + H, 1 + dx:1 + dx + W] for k, (dy, dx) in enumerate(offsets)], dim=1)


def neighbour_affinities(p_hat: torch.Tensor, offsets: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """``a_ik = p_i . p_{i + offsets[k]}``, 0 where the neighbour is off the grid: ``[B, d, H, W] -> [B, K, H, W]``.

    ``offsets`` is point-symmetric, ``offsets[k] = -offsets[K - 1 - k]`` (as ``neighbour_offsets``
    gives them), and ``a`` is symmetric, ``a(i, i + o) = a(i + o, i)``: the dot products are taken
    for the second half of the offsets only, and the first half are the same values shifted.
    """
    half = len(offsets) // 2
    p_hat = p_hat.contiguous()  # a channels_last p_hat against the stacked shifts takes a slow strided path
    ahead = (p_hat.unsqueeze(1) * shifted_neighbours(p_hat, offsets[half:])).sum(dim=2)  # a(i, i + o), o in offsets[half:]
    # for k < half, offsets[k] = -offsets[half + (half - 1 - k)], so a(i, i + offsets[k]) is
    # ahead[:, half - 1 - k] = ahead.flip(1)[:, k] read at token i + offsets[k]
    behind = shifted_channels(ahead.flip(1), offsets[:half])
    return torch.cat([behind, ahead], dim=1)


def mean_field_mask(log_odds: torch.Tensor, p_hat: torch.Tensor, offsets: tuple[tuple[int, int], ...],
                    lambda_pair: float, iterations: int) -> torch.Tensor:
    """``T = iterations`` synchronous mean-field updates; ``log_odds [B, 1, H, W]``, ``p_hat [B, d, H, W]``.

        a_ik = p_i . p_{i + offsets[k]}                                 ([B, K, H, W], once)
        q0_i = sigmoid(log_odds_i)
        qt_i = sigmoid(log_odds_i + lambda_pair * sum_k a_ik (2 q(t-1)_{i + offsets[k]} - 1))

    The affinities are computed once (for ``T >= 1``), so each iteration shifts only the
    one-channel ``2q - 1`` (K multiply-adds on ``[B, 1, H, W]``). A depthwise neighbour sum of
    ``(2q - 1) * p_hat`` per iteration would give the same values, but PyTorch's CPU backend runs
    that grouped convolution as ``d`` separate convolutions, about 5x slower here (forward and
    backward at the SmallCNN and ResNet-18 feature sizes). Returns ``qT [B, 1, H, W]``.
    """
    q = torch.sigmoid(log_odds)
    if iterations == 0:
        return q
    affinity = neighbour_affinities(p_hat, offsets)
    for _ in range(iterations):
        message = (affinity * shifted_neighbours(2 * q - 1, offsets)[:, :, 0]).sum(dim=1, keepdim=True)
        q = torch.sigmoid(log_odds + lambda_pair * message)
    return q


def hard_concrete_noise(like: torch.Tensor) -> torch.Tensor:
    """``u ~ U(eps, 1 - eps)`` shaped like ``like`` (its dtype and device), from torch's global generator.

    ``u = eps + (1 - 2 eps) * torch.rand(...)``, so ``torch.manual_seed`` reproduces the draw.
    """
    return HC_EPS + (1 - 2 * HC_EPS) * torch.rand(like.shape, dtype=like.dtype, device=like.device)


def hard_concrete_gate(log_alpha: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """The hard-concrete gate ``z`` (same shape as ``log_alpha``), with exact zeros and ones.

        noise u given (training): s = sigmoid((log u - log(1 - u) + log_alpha) / tau)
        noise None (evaluation):  s = sigmoid(log_alpha)
        z = clamp(s * (zeta - gamma) + gamma, 0, 1)

    In evaluation ``z = 0`` exactly where ``log_alpha <= -ln 11`` and ``z = 1`` where
    ``log_alpha >= ln 11`` (up to rounding at the bounds themselves).
    """
    if noise is None:
        stretched = torch.sigmoid(log_alpha)
    else:
        stretched = torch.sigmoid((torch.log(noise) - torch.log1p(-noise) + log_alpha) / HC_TEMPERATURE)
    return (stretched * (HC_HIGH - HC_LOW) + HC_LOW).clamp(0.0, 1.0)


def hard_concrete_open_probability(log_alpha: torch.Tensor) -> torch.Tensor:
    """``pi = P(z > 0) = sigmoid(log_alpha - tau * log(-gamma / zeta))`` for the noisy gate (same shape)."""
    return torch.sigmoid(log_alpha - HC_TEMPERATURE * math.log(-HC_LOW / HC_HIGH))


class EnergyMask(nn.Module):
    """Energy-Mask Layer: ``forward(x [B, C, H, W]) -> x * mask`` (same shape, dtype, device).

    Args:
        channels: C, the channel count of the feature map it masks.
        proj_dim: d, the width of the projection P (``self.proj``, a biased 1x1 conv).
        lambda_unary, lambda_pair: non-negative weights of the two energy terms.
        neighbourhood: 8 (the paper's grid neighbourhood) or 4.
        variant: ``"paper"`` (``m = sigmoid(-E_un)``), ``"calibrated"``, ``"meanfield"`` or
            ``"hardconcrete"`` (see the module docstring).
        iterations: T >= 0, the mean-field updates of ``"meanfield"``; stored but unused by the
            other variants.

    After each forward, ``self.terms`` holds an :class:`EnergyTerms`, and every open
    :func:`collect_terms` that covers this layer receives it too. ``"hardconcrete"`` draws
    noise in training mode (``self.training``) and is deterministic in evaluation mode.
    """

    def __init__(
        self,
        channels: int,
        proj_dim: int = 16,
        lambda_unary: float = 1.0,
        lambda_pair: float = 1.0,
        neighbourhood: int = 8,
        variant: str = "paper",
        iterations: int = 3,
    ) -> None:
        super().__init__()
        _check_positive_int("channels", channels)
        _check_positive_int("proj_dim", proj_dim)
        for name, value in (("lambda_unary", lambda_unary), ("lambda_pair", lambda_pair)):
            if not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
                raise ValueError(f"{name}={value!r} must be a finite number >= 0")
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r} must be one of {VARIANTS}")
        check_count("iterations", iterations, 0)
        self.channels, self.proj_dim, self.variant = channels, proj_dim, variant
        self.iterations = iterations
        self.lambda_unary, self.lambda_pair = float(lambda_unary), float(lambda_pair)
        self.neighbourhood = neighbourhood
        self.register_buffer("kernel", neighbour_kernel(neighbourhood), persistent=False)
        self.offsets = neighbour_offsets(neighbourhood)
        self.proj = nn.Conv2d(channels, proj_dim, kernel_size=1, bias=True)  # P
        self.score = nn.Conv2d(proj_dim, 1, kernel_size=1, bias=True)  # w and b
        if variant == "calibrated":
            self.mask_offset = nn.Parameter(torch.zeros(()))  # a
            self.log_temperature = nn.Parameter(torch.zeros(()))  # t, T = exp(t)
        elif variant == "meanfield":
            self.mask_offset = nn.Parameter(torch.zeros(()))  # c
        elif variant == "hardconcrete":
            # c: log_alpha = c - E_un starts near ln 11, every gate open (module docstring)
            initial = self.lambda_unary * math.log(2.0) + math.log((1 - HC_LOW) / (HC_HIGH - 1))
            self.mask_offset = nn.Parameter(torch.tensor(initial))
        self.terms: EnergyTerms | None = None
        self._taps = _Taps()  # the collectors this layer hands its terms to (collect_terms)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, proj_dim={self.proj_dim}, lambda_unary={self.lambda_unary}, "
            f"lambda_pair={self.lambda_pair}, neighbourhood={self.neighbourhood}, variant={self.variant!r}"
            + (f", iterations={self.iterations}" if self.variant == "meanfield" else "")
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            # float16/bfloat16 inputs are promoted to float32; float64 stays float64
            terms = self.energy_terms(x.to(torch.promote_types(x.dtype, torch.float32)))
        # Any NaN or inf in x reaches the energy; checking the [B, 1, H, W] energy instead of
        # the [B, C, H, W] input costs C times less (it is part of the layer's overhead).
        if _check_finite(terms.energy) and not torch.isfinite(terms.energy).all():
            raise ValueError("x contains non-finite values (NaN or inf) or overflows float32; the energy is undefined there")
        self.terms = terms
        taps = getattr(self, "_taps", None)  # None for a layer unpickled from before the taps existed
        if taps is not None:
            for collector, name in taps.entries:
                collector._record(name, terms)
        return x * terms.mask.to(x.dtype)

    def energy_terms(self, x: torch.Tensor) -> EnergyTerms:
        """All terms of the paper's energy for ``x: [B, C, H, W]`` (float32 or float64)."""
        p_hat = F.normalize(self.proj(x), dim=1)
        unary = self.lambda_unary * F.softplus(self.score(p_hat))
        affinity = (p_hat * neighbour_sum(p_hat, self.kernel)).sum(dim=1, keepdim=True)
        pairwise = self.lambda_pair * F.softplus(affinity)
        mask, gate_open = self.gates(unary, p_hat)
        return EnergyTerms(p_hat, unary, pairwise, unary + pairwise, mask, gate_open)

    def gates(self, unary: torch.Tensor, p_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mask, gate_open)``, both ``[B, 1, H, W]``, of this variant (see :class:`EnergyTerms`)."""
        if self.variant in ("paper", "calibrated"):
            mask = self.mask_from_unary(unary)
            return mask, mask
        log_odds = self.mask_offset - unary  # c - E_un, log_alpha for "hardconcrete"
        if self.variant == "meanfield":
            mask = mean_field_mask(log_odds, p_hat, self.offsets, self.lambda_pair, self.iterations)
            return mask, mask
        noise = hard_concrete_noise(log_odds) if self.training else None
        return hard_concrete_gate(log_odds, noise), hard_concrete_open_probability(log_odds)

    def mask_from_unary(self, unary: torch.Tensor) -> torch.Tensor:
        """The soft mask of "paper" (``sigmoid(-E_un)``) and "calibrated" (``sigmoid((a - E_un) / T)``)."""
        if self.variant == "paper":
            return torch.sigmoid(-unary)
        return torch.sigmoid((self.mask_offset - unary) / self.log_temperature.exp())

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a 4-D tensor [B, C, H, W], got x with shape {shape}")
        if x.shape[1] != self.channels:
            raise ValueError(f"x has {x.shape[1]} channels (shape {tuple(x.shape)}); this layer expects channels={self.channels}")


def _check_finite(energy: torch.Tensor) -> bool:
    """Whether ``forward`` checks ``energy`` for NaN and inf (:data:`CHECK_FINITE`)."""
    if torch.compiler.is_compiling():
        return False
    if CHECK_FINITE is None:
        return energy.device.type == "cpu"
    return bool(CHECK_FINITE)


def _check_positive_int(name: str, value) -> None:
    check_count(name, value, 1)


def energy_masks(model: nn.Module) -> list[tuple[str, EnergyMask]]:
    """``(qualified name, module)`` for every EnergyMask inside ``model``, in definition order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, EnergyMask)]


class _Taps:
    """A layer's list of ``(collector, layer name)``: shared by DataParallel replicas (a shallow
    ``__dict__`` copy), fresh and empty in a deep copy or an unpickled layer."""

    def __init__(self) -> None:
        self.entries: list[tuple["TermsCollector", str]] = []  # ersm.collection.TermsCollector

    def __reduce__(self):  # copy.deepcopy and pickle alike
        return (_Taps, ())
