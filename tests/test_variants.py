"""The "meanfield" and "hardconcrete" EnergyMask variants against float64 per-token loops.

The references below are written token by token from the equations (explicit neighbour lists,
scalar ``math`` for the gates and the hard-concrete constants spelled out), independently of the
vectorised code in ``ersm.layer``.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import ersm
from ersm import EnergyMask, regularization_loss
from ersm.layer import VARIANTS, hard_concrete_gate, hard_concrete_noise

GRIDS = [(5, 6), (1, 7), (6, 1), (1, 1)]
TAU, GAMMA, ZETA, EPS = 2.0 / 3.0, -0.1, 1.1, 1e-6
LN11 = math.log(11.0)


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


def neighbours(i: int, j: int, H: int, W: int, neighbourhood: int):
    if neighbourhood == 8:
        offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    else:
        offsets = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    return [(i + dy, j + dx) for dy, dx in offsets if 0 <= i + dy < H and 0 <= j + dx < W]


def naive_energy(layer: EnergyMask, x: torch.Tensor):
    """Per token, float64: ``p[n][i][j]`` (a d-vector), ``unary`` and ``energy`` as nested lists of floats."""
    B, C, H, W = x.shape
    P, Pb = layer.proj.weight[:, :, 0, 0].detach().double(), layer.proj.bias.detach().double()
    w, b = layer.score.weight[0, :, 0, 0].detach().double(), float(layer.score.bias.detach()[0])
    p = [[[None] * W for _ in range(H)] for _ in range(B)]
    for n in range(B):
        for i in range(H):
            for j in range(W):
                v = P @ x[n, :, i, j].detach().double() + Pb
                p[n][i][j] = v / max(float(v.norm()), 1e-12)
    unary = [[[0.0] * W for _ in range(H)] for _ in range(B)]
    energy = [[[0.0] * W for _ in range(H)] for _ in range(B)]
    for n in range(B):
        for i in range(H):
            for j in range(W):
                u = layer.lambda_unary * math.log1p(math.exp(float(w @ p[n][i][j]) + b))
                s = sum(float(p[n][i][j] @ p[n][k][l]) for k, l in neighbours(i, j, H, W, layer.neighbourhood))
                unary[n][i][j] = u
                energy[n][i][j] = u + layer.lambda_pair * math.log1p(math.exp(s))
    return p, unary, energy


def as_tensor(nested) -> torch.Tensor:
    """Nested ``[B][H][W]`` floats -> ``[B, 1, H, W]`` float64."""
    return torch.tensor(nested, dtype=torch.float64).unsqueeze(1)


def naive_meanfield(layer: EnergyMask, x: torch.Tensor, iterations: int):
    """``(mask, energy)``: q0 = sigmoid(c - E_un), then synchronous updates with couplings lambda_pair * p_i . p_j."""
    B, _, H, W = x.shape
    p, unary, energy = naive_energy(layer, x)
    c = float(layer.mask_offset.detach())
    q = [[[sigmoid(c - unary[n][i][j]) for j in range(W)] for i in range(H)] for n in range(B)]
    for _ in range(iterations):
        new = [[[0.0] * W for _ in range(H)] for _ in range(B)]
        for n in range(B):
            for i in range(H):
                for j in range(W):
                    field = 0.0
                    for k, l in neighbours(i, j, H, W, layer.neighbourhood):
                        field += float(p[n][i][j] @ p[n][k][l]) * (2.0 * q[n][k][l] - 1.0)
                    new[n][i][j] = sigmoid(c - unary[n][i][j] + layer.lambda_pair * field)
        q = new  # all tokens at once: every update above read the previous q
    return as_tensor(q), as_tensor(energy)


def naive_hardconcrete(layer: EnergyMask, x: torch.Tensor, noise: torch.Tensor | None):
    """``(z, pi, energy)``; ``noise [B, 1, H, W]`` is u (training) or None (evaluation)."""
    B, _, H, W = x.shape
    _, unary, energy = naive_energy(layer, x)
    c = float(layer.mask_offset.detach())
    z = [[[0.0] * W for _ in range(H)] for _ in range(B)]
    pi = [[[0.0] * W for _ in range(H)] for _ in range(B)]
    for n in range(B):
        for i in range(H):
            for j in range(W):
                log_alpha = c - unary[n][i][j]
                if noise is None:
                    s = sigmoid(log_alpha)
                else:
                    u = float(noise[n, 0, i, j])
                    s = sigmoid((math.log(u) - math.log(1.0 - u) + log_alpha) / TAU)
                z[n][i][j] = min(1.0, max(0.0, s * (ZETA - GAMMA) + GAMMA))
                pi[n][i][j] = sigmoid(log_alpha - TAU * math.log(-GAMMA / ZETA))
    return as_tensor(z), as_tensor(pi), as_tensor(energy)


def documented_noise(seed: int, shape) -> torch.Tensor:
    """The layer's documented draw: ``eps + (1 - 2 eps) * torch.rand([B, 1, H, W])`` after ``manual_seed``."""
    torch.manual_seed(seed)
    return EPS + (1 - 2 * EPS) * torch.rand(shape, dtype=torch.float64)


def make_layer(variant: str, neighbourhood: int = 8, channels: int = 6, offset: float | None = None, **kwargs):
    torch.manual_seed(0)
    kwargs = dict(dict(proj_dim=4, lambda_unary=0.7, lambda_pair=1.3), **kwargs)
    layer = EnergyMask(channels, neighbourhood=neighbourhood, variant=variant, **kwargs).double()
    if offset is not None:
        with torch.no_grad():
            layer.mask_offset.fill_(offset)
    return layer


# --- meanfield -------------------------------------------------------------------------------

@pytest.mark.parametrize("iterations", [0, 1, 3])
@pytest.mark.parametrize("neighbourhood", [4, 8])
@pytest.mark.parametrize("hw", GRIDS)
def test_meanfield_matches_naive_loop(iterations, neighbourhood, hw):
    layer = make_layer("meanfield", neighbourhood, offset=0.4, iterations=iterations)
    x = torch.randn(2, 6, *hw, dtype=torch.float64)
    y = layer(x)
    mask, energy = naive_meanfield(layer, x, iterations)
    torch.testing.assert_close(layer.terms.mask, mask, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(layer.terms.energy, energy, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(y, x * mask, rtol=1e-9, atol=1e-12)
    assert layer.terms.gate_open is layer.terms.mask
    torch.testing.assert_close(regularization_loss(layer), (mask * energy).mean(), rtol=1e-9, atol=1e-12)


def test_meanfield_pairwise_reaches_the_mask():
    # On a 5x6 grid with lambda_pair = 1.3 one iteration moves the mask away from q0 (else the
    # naive-loop test above would hold trivially for T = 1).
    layer = make_layer("meanfield", iterations=1)
    x = torch.randn(2, 6, 5, 6, dtype=torch.float64)
    layer(x)
    q0 = torch.sigmoid(layer.mask_offset - layer.terms.unary)
    assert (layer.terms.mask - q0).abs().max() > 1e-2


def test_meanfield_t0_c0_is_the_paper_mask_exactly():
    x = torch.randn(3, 8, 7, 7)
    torch.manual_seed(5)
    paper = EnergyMask(8, variant="paper")
    torch.manual_seed(5)
    meanfield = EnergyMask(8, variant="meanfield", iterations=0)
    assert meanfield.mask_offset.item() == 0.0
    y_paper, y_meanfield = paper(x), meanfield(x)
    assert torch.equal(y_paper, y_meanfield)
    for field in paper.terms._fields:
        assert torch.equal(getattr(paper.terms, field), getattr(meanfield.terms, field)), field
    assert torch.equal(regularization_loss(paper), regularization_loss(meanfield))


def test_meanfield_without_coupling_is_q0():
    layer = make_layer("meanfield", offset=-0.3, lambda_pair=0.0, iterations=5)
    layer(torch.randn(2, 6, 4, 4, dtype=torch.float64))
    torch.testing.assert_close(layer.terms.mask, torch.sigmoid(-0.3 - layer.terms.unary), rtol=0, atol=1e-15)


@pytest.mark.parametrize("neighbourhood", [4, 8])
def test_meanfield_channels_last_matches_contiguous(neighbourhood):
    layer = make_layer("meanfield", neighbourhood, offset=0.2, iterations=3)
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    y = layer(x)
    mask = layer.terms.mask
    y_cl = layer(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(layer.terms.mask, mask, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(y_cl, y, rtol=1e-12, atol=1e-14)


def test_meanfield_gradcheck():
    layer = make_layer("meanfield", offset=0.3, iterations=3)
    x = torch.randn(1, 6, 3, 4, dtype=torch.float64, requires_grad=True)
    c = layer.mask_offset.detach().clone().requires_grad_(True)

    def forward(t, offset):
        return functional_call(layer, {"mask_offset": offset}, (t,))

    def reg(t, offset):
        forward(t, offset)
        return regularization_loss(layer)

    assert torch.autograd.gradcheck(forward, (x, c))
    assert torch.autograd.gradcheck(reg, (x, c))


# --- hardconcrete ------------------------------------------------------------------------------

@pytest.mark.parametrize("neighbourhood", [4, 8])
@pytest.mark.parametrize("hw", GRIDS)
@pytest.mark.parametrize("offset", [None, 0.5])
def test_hardconcrete_eval_matches_naive_loop(neighbourhood, hw, offset):
    layer = make_layer("hardconcrete", neighbourhood, offset=offset).eval()
    x = torch.randn(2, 6, *hw, dtype=torch.float64)
    y = layer(x)
    z, pi, energy = naive_hardconcrete(layer, x, None)
    torch.testing.assert_close(layer.terms.mask, z, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(layer.terms.gate_open, pi, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(y, x * z, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(regularization_loss(layer), (pi * energy).mean(), rtol=1e-9, atol=1e-12)
    assert torch.equal(layer(x), y)  # evaluation is deterministic


@pytest.mark.parametrize("neighbourhood", [4, 8])
@pytest.mark.parametrize("hw", GRIDS)
@pytest.mark.parametrize("offset", [None, 0.5, -1.0])
def test_hardconcrete_train_matches_naive_loop_with_the_same_noise(neighbourhood, hw, offset):
    layer = make_layer("hardconcrete", neighbourhood, offset=offset).train()
    x = torch.randn(2, 6, *hw, dtype=torch.float64)
    torch.manual_seed(11)
    y = layer(x)
    noise = documented_noise(11, (2, 1, *hw))
    z, pi, energy = naive_hardconcrete(layer, x, noise)
    torch.testing.assert_close(layer.terms.mask, z, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(layer.terms.gate_open, pi, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(y, x * z, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(regularization_loss(layer), (pi * energy).mean(), rtol=1e-9, atol=1e-12)
    # the same gate through the factored functions, u passed explicitly
    log_alpha = layer.mask_offset - layer.terms.unary
    torch.testing.assert_close(hard_concrete_gate(log_alpha, noise), z, rtol=1e-9, atol=1e-12)


def test_hardconcrete_noise_is_seeded_and_fresh():
    layer = make_layer("hardconcrete", offset=0.0).train()
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    torch.manual_seed(3)
    first = layer(x)
    second = layer(x)
    torch.manual_seed(3)
    again = layer(x)
    assert torch.equal(first, again) and not torch.equal(first, second)
    u = hard_concrete_noise(torch.empty(1000, dtype=torch.float32))
    assert u.dtype == torch.float32 and (u >= EPS).all() and (u <= 1 - EPS).all()


def test_hardconcrete_eval_exact_zeros_and_ones():
    layer = make_layer("hardconcrete").eval()
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    layer(x)
    unary = layer.terms.unary
    with torch.no_grad():  # log_alpha = c - E_un well below -ln 11, then well above ln 11
        layer.mask_offset.fill_(float(unary.max()) - LN11 - 2.0)
    layer(x)
    assert (layer.mask_offset - layer.terms.unary <= -LN11 - 1.0).all()
    assert (layer.terms.mask == 0).all()
    with torch.no_grad():
        layer.mask_offset.fill_(float(unary.min()) + LN11 + 2.0)
    y = layer(x)
    assert (layer.mask_offset - layer.terms.unary >= LN11 + 1.0).all()
    assert (layer.terms.mask == 1).all() and torch.equal(y, x)
    with torch.no_grad():  # in between: strictly inside (0, 1)
        layer.mask_offset.fill_(float(unary.mean()))
    layer(x)
    assert ((layer.mask_offset - layer.terms.unary).abs() < LN11 - 1.0).all()
    assert ((layer.terms.mask > 0) & (layer.terms.mask < 1)).all()
    # the bounds themselves, through the gate function, both dtypes
    for dtype in (torch.float32, torch.float64):
        log_alpha = torch.tensor([-LN11 - 1e-3, -LN11 + 1e-2, 0.0, LN11 - 1e-2, LN11 + 1e-3], dtype=dtype)
        z = hard_concrete_gate(log_alpha)
        assert z[0] == 0 and z[4] == 1 and ((z[1:4] > 0) & (z[1:4] < 1)).all()


@pytest.mark.parametrize("log_alpha", [-3.0, -1.0, 0.0, 1.5, 3.0])
def test_hardconcrete_train_open_frequency_matches_pi(log_alpha):
    # lambda_unary = 0 makes E_un = 0, so log_alpha = c at every token.
    torch.manual_seed(0)
    layer = EnergyMask(3, lambda_unary=0.0, variant="hardconcrete").train()
    with torch.no_grad():
        layer.mask_offset.fill_(log_alpha)
    x = torch.randn(25, 3, 40, 40)  # 40,000 independent draws
    layer(x)
    pi = sigmoid(log_alpha - TAU * math.log(-GAMMA / ZETA))
    torch.testing.assert_close(layer.terms.gate_open, torch.full_like(layer.terms.gate_open, pi))
    n = layer.terms.mask.numel()
    frequency = float((layer.terms.mask > 0).double().mean())
    assert abs(frequency - pi) <= 5 * math.sqrt(pi * (1 - pi) / n), (frequency, pi)


def test_hardconcrete_gradcheck():
    layer = make_layer("hardconcrete", offset=0.5)
    x = torch.randn(1, 6, 3, 4, dtype=torch.float64, requires_grad=True)
    c = layer.mask_offset.detach().clone().requires_grad_(True)

    def forward(t, offset):
        torch.manual_seed(7)  # the same noise at every call gradcheck makes (training mode)
        return functional_call(layer, {"mask_offset": offset}, (t,))

    def reg(t, offset):
        forward(t, offset)
        return regularization_loss(layer)

    for mode in ("eval", "train"):
        getattr(layer, mode)()
        forward(x, c)
        assert ((layer.terms.mask > 0) & (layer.terms.mask < 1)).any(), mode  # the gate passes gradient
        assert torch.autograd.gradcheck(forward, (x, c)), mode
        assert torch.autograd.gradcheck(reg, (x, c)), mode


def test_hardconcrete_initial_gates_open():
    # c = lambda_unary * ln 2 + ln 11 puts log_alpha near ln 11 at initialisation.
    for lambda_unary in (0.0, 1.0, 2.5):
        layer = EnergyMask(8, lambda_unary=lambda_unary, variant="hardconcrete")
        assert math.isclose(layer.mask_offset.item(), lambda_unary * math.log(2) + LN11, rel_tol=1e-6)
    torch.manual_seed(0)
    model = ersm.build_model(energy_mask={"variant": "hardconcrete"}).eval()
    model(torch.rand(4, 1, 48, 48))
    terms = ersm.models.energy_terms_of(model)
    assert terms.gate_open.min() > 0.9 and terms.mask.mean() > 0.9


# --- both -----------------------------------------------------------------------------------

@pytest.mark.parametrize("variant, mode", [("meanfield", "train"), ("hardconcrete", "train"), ("hardconcrete", "eval")])
@pytest.mark.parametrize("scale", [0.0, 1e-4, 1.0, 1e4])
@pytest.mark.parametrize("offset", [-50.0, 0.0, 50.0])
def test_extreme_inputs_finite(variant, mode, scale, offset):
    torch.manual_seed(0)
    layer = getattr(EnergyMask(4, variant=variant), mode)()
    with torch.no_grad():
        layer.mask_offset.fill_(offset)
    x = (torch.randn(2, 4, 5, 5) * scale).requires_grad_(True)
    y = layer(x)
    (y.sum() + regularization_loss(layer)).backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(t).all() for t in layer.terms)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_regularization_loss_hardconcrete_is_mean_pi_times_energy(mode):
    torch.manual_seed(0)
    model = getattr(ersm.build_model(energy_mask={"variant": "hardconcrete"}), mode)()
    with torch.no_grad():
        ersm.energy_masks(model)[0][1].mask_offset.fill_(0.3)  # z away from 1, so pi and z differ
    model(torch.rand(2, 1, 48, 48))
    layer = ersm.energy_masks(model)[0][1]
    t = layer.terms
    pi = torch.sigmoid(layer.mask_offset - t.unary + TAU * LN11)  # -tau * log(-gamma / zeta) = tau * ln 11
    expected = (pi * (t.unary + t.pairwise)).mean()
    torch.testing.assert_close(regularization_loss(model), expected)
    assert not torch.allclose(regularization_loss(model), (t.mask * t.energy).mean())


def test_regularization_loss_meanfield_is_mean_mask_times_energy():
    torch.manual_seed(0)
    model = ersm.build_model(energy_mask={"variant": "meanfield", "iterations": 2})
    model(torch.rand(2, 1, 48, 48))
    t = ersm.models.energy_terms_of(model)
    torch.testing.assert_close(regularization_loss(model), (t.mask * t.energy).mean())


@pytest.mark.parametrize("variant", ["meanfield", "hardconcrete"])
def test_output_contract_and_repr(variant):
    layer = EnergyMask(5, variant=variant, iterations=2)
    x = torch.randn(3, 5, 4, 6)
    y = layer(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    t = layer.terms
    assert all(f.shape == (3, 1, 4, 6) for f in (t.unary, t.pairwise, t.energy, t.mask, t.gate_open))
    assert t.mask.requires_grad and t.gate_open.requires_grad
    assert isinstance(layer.mask_offset, torch.nn.Parameter) and layer.iterations == 2
    assert (f"variant={variant!r}" in repr(layer)) and (("iterations=2" in repr(layer)) == (variant == "meanfield"))


@pytest.mark.parametrize("variant", ["meanfield", "hardconcrete"])
def test_non_finite_input_still_raises(variant):
    with pytest.raises(ValueError, match="non-finite"):
        EnergyMask(4, variant=variant)(torch.full((1, 4, 2, 2), math.nan))


def test_variants_listed():
    assert VARIANTS == ("paper", "calibrated", "meanfield", "hardconcrete")


def test_every_other_variant_list_derives_from_the_layer_s():
    """Issue 33: a variant is added in ersm.layer alone; the config, the tuning codes and the
    notebook families follow (and the tuning codes of the existing variants do not move)."""
    from ersm.training import config
    from ersm.study import tuning
    from ersm.experiments import common

    assert config.MODELS == ("dense", *VARIANTS)
    assert tuning.FAMILY_CODES == {"dense": 0, "paper": 1, "calibrated": 2, "meanfield": 3, "hardconcrete": 4}
    assert list(tuning.FAMILY_CODES)[1:] == list(VARIANTS)
    for variant in VARIANTS:
        name = common.DISPLAY_NAMES[variant]
        assert common.FAMILY_FIELDS[name] == {"model": variant}
        assert common.FAMILY_FIELDS[common.CONTROLS[name]] == {"model": variant, "beta": 0.0}
    assert common.ERSM_MODELS == tuple(common.DISPLAY_NAMES[v] for v in VARIANTS)


@pytest.mark.parametrize("iterations", [-1, 1.5, True, "3"])
def test_bad_iterations(iterations):
    with pytest.raises(ValueError, match=f"iterations={iterations!r}".replace(".", r"\.")):
        EnergyMask(4, variant="meanfield", iterations=iterations)


def test_unknown_variant_lists_the_variants():
    with pytest.raises(ValueError, match="variant='gumbel'") as error:
        EnergyMask(4, variant="gumbel")
    assert all(name in str(error.value) for name in VARIANTS)
