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
- The energy is computed in at least float32, also under autocast, because the L2
  normalisation and softplus are fragile in float16. The output keeps the input's dtype.
- The projection P is a 1x1 convolution *with* a bias (the paper writes ``P x_i``; the bias is
  the public contract of this package, issue 2). It can be zeroed to recover the bias-free form.
- ``normalize`` uses ``eps=1e-12`` (PyTorch's default) so an all-zero token maps to ``p = 0``
  instead of NaN; the paper does not say what happens there.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = ("paper", "calibrated")
NEIGHBOURHOODS = (4, 8)


class EnergyTerms(NamedTuple):
    """What one forward pass computed; every field keeps its autograd graph.

    Shapes: ``p_hat [B, d, H, W]``; ``unary, pairwise, energy, mask [B, 1, H, W]``.
    ``unary`` and ``pairwise`` include their lambdas; ``energy = unary + pairwise``;
    ``mask`` multiplies the features (1 keeps a token whole, 0 removes it).
    """

    p_hat: torch.Tensor
    unary: torch.Tensor
    pairwise: torch.Tensor
    energy: torch.Tensor
    mask: torch.Tensor


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


class EnergyMask(nn.Module):
    """Energy-Mask Layer: ``forward(x [B, C, H, W]) -> x * mask`` (same shape, dtype, device).

    Args:
        channels: C, the channel count of the feature map it masks.
        proj_dim: d, the width of the projection P (``self.proj``, a biased 1x1 conv).
        lambda_unary, lambda_pair: non-negative weights of the two energy terms.
        neighbourhood: 8 (the paper's grid neighbourhood) or 4.
        variant: ``"paper"`` (``m = sigmoid(-E_un)``) or ``"calibrated"`` (see module docstring).

    After each forward, ``self.terms`` holds an :class:`EnergyTerms`.
    """

    def __init__(
        self,
        channels: int,
        proj_dim: int = 16,
        lambda_unary: float = 1.0,
        lambda_pair: float = 1.0,
        neighbourhood: int = 8,
        variant: str = "paper",
    ) -> None:
        super().__init__()
        _check_positive_int("channels", channels)
        _check_positive_int("proj_dim", proj_dim)
        for name, value in (("lambda_unary", lambda_unary), ("lambda_pair", lambda_pair)):
            if not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
                raise ValueError(f"{name}={value!r} must be a finite number >= 0")
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r} must be one of {VARIANTS}")
        self.channels, self.proj_dim, self.variant = channels, proj_dim, variant
        self.lambda_unary, self.lambda_pair = float(lambda_unary), float(lambda_pair)
        self.neighbourhood = neighbourhood
        self.register_buffer("kernel", neighbour_kernel(neighbourhood), persistent=False)
        self.proj = nn.Conv2d(channels, proj_dim, kernel_size=1, bias=True)  # P
        self.score = nn.Conv2d(proj_dim, 1, kernel_size=1, bias=True)  # w and b
        if variant == "calibrated":
            self.mask_offset = nn.Parameter(torch.zeros(()))  # a
            self.log_temperature = nn.Parameter(torch.zeros(()))  # t, T = exp(t)
        self.terms: EnergyTerms | None = None

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, proj_dim={self.proj_dim}, lambda_unary={self.lambda_unary}, "
            f"lambda_pair={self.lambda_pair}, neighbourhood={self.neighbourhood}, variant={self.variant!r}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            # float16/bfloat16 inputs are promoted to float32; float64 stays float64
            terms = self.energy_terms(x.to(torch.promote_types(x.dtype, torch.float32)))
        # Any NaN or inf in x reaches the energy; checking the [B, 1, H, W] energy instead of
        # the [B, C, H, W] input costs C times less (it is part of the layer's overhead).
        if not torch.isfinite(terms.energy).all():
            raise ValueError("x contains non-finite values (NaN or inf) or overflows float32; the energy is undefined there")
        self.terms = terms
        return x * terms.mask.to(x.dtype)

    def energy_terms(self, x: torch.Tensor) -> EnergyTerms:
        """All terms of the paper's energy for ``x: [B, C, H, W]`` (float32 or float64)."""
        p_hat = F.normalize(self.proj(x), dim=1)
        unary = self.lambda_unary * F.softplus(self.score(p_hat))
        affinity = (p_hat * neighbour_sum(p_hat, self.kernel)).sum(dim=1, keepdim=True)
        pairwise = self.lambda_pair * F.softplus(affinity)
        return EnergyTerms(p_hat, unary, pairwise, unary + pairwise, self.mask_from_unary(unary))

    def mask_from_unary(self, unary: torch.Tensor) -> torch.Tensor:
        if self.variant == "paper":
            return torch.sigmoid(-unary)
        return torch.sigmoid((self.mask_offset - unary) / self.log_temperature.exp())

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a 4-D tensor [B, C, H, W], got x with shape {shape}")
        if x.shape[1] != self.channels:
            raise ValueError(f"x has {x.shape[1]} channels (shape {tuple(x.shape)}); this layer expects channels={self.channels}")


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be an integer >= 1")


def energy_masks(model: nn.Module) -> list[tuple[str, EnergyMask]]:
    """``(qualified name, module)`` for every EnergyMask inside ``model``, in definition order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, EnergyMask)]
