"""EnergyMask against a naive per-token loop of the paper's equations, plus its contract."""
import math

import pytest
import torch
import torch.nn.functional as F

import ersm
from ersm import EnergyMask, regularization_loss


def naive_terms(layer: EnergyMask, x: torch.Tensor):
    """DESIGN §1 written token by token, in float64, with explicit neighbour lists."""
    B, C, H, W = x.shape
    P, Pb = layer.proj.weight[:, :, 0, 0].double(), layer.proj.bias.double()
    w, b = layer.score.weight[0, :, 0, 0].double(), layer.score.bias.double()[0]
    if layer.neighbourhood == 8:
        offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    else:
        offsets = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    p = torch.zeros(B, layer.proj_dim, H, W, dtype=torch.float64)
    for n in range(B):
        for i in range(H):
            for j in range(W):
                v = P @ x[n, :, i, j].double() + Pb
                p[n, :, i, j] = v / max(v.norm(), 1e-12)
    unary = torch.zeros(B, 1, H, W, dtype=torch.float64)
    pair = torch.zeros_like(unary)
    for n in range(B):
        for i in range(H):
            for j in range(W):
                unary[n, 0, i, j] = layer.lambda_unary * F.softplus(w @ p[n, :, i, j] + b)
                s = sum((p[n, :, i, j] @ p[n, :, i + dy, j + dx]
                         for dy, dx in offsets if 0 <= i + dy < H and 0 <= j + dx < W),
                        torch.tensor(0.0, dtype=torch.float64))
                pair[n, 0, i, j] = layer.lambda_pair * F.softplus(s)
    return p, unary, pair, unary + pair, torch.sigmoid(-unary)


@pytest.mark.parametrize("neighbourhood", [4, 8])
@pytest.mark.parametrize("hw", [(5, 6), (1, 7), (6, 1), (1, 1)])
def test_matches_naive_loop(neighbourhood, hw):
    torch.manual_seed(0)
    layer = EnergyMask(6, proj_dim=4, lambda_unary=0.7, lambda_pair=1.3, neighbourhood=neighbourhood).double()
    x = torch.randn(2, 6, *hw, dtype=torch.float64)
    y = layer(x)
    expected = naive_terms(layer, x)
    for got, want in zip(layer.terms, expected):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y, x * expected[4], rtol=1e-5, atol=1e-6)


def test_border_tokens_see_fewer_neighbours():
    # With every p_hat identical, the affinity equals the neighbour count: 3 in a corner, 5 on
    # an edge, 8 inside (8-neighbourhood).
    layer = EnergyMask(2, proj_dim=2, lambda_unary=0.0, lambda_pair=1.0)
    with torch.no_grad():
        layer.proj.weight.zero_()
        layer.proj.bias.fill_(1.0)
    layer(torch.rand(1, 2, 4, 4))
    counts = torch.log(torch.expm1(layer.terms.pairwise[0, 0]))  # invert softplus
    torch.testing.assert_close(counts[0, 0], torch.tensor(3.0))
    torch.testing.assert_close(counts[0, 1], torch.tensor(5.0))
    torch.testing.assert_close(counts[1, 1], torch.tensor(8.0))


def test_gradcheck():
    torch.manual_seed(0)
    layer = EnergyMask(3, proj_dim=2, neighbourhood=8).double()
    x = torch.randn(1, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: layer(t), (x,))
    assert torch.autograd.gradcheck(lambda t: (layer(t), regularization_loss(layer))[1], (x,))


def test_paper_mask_in_zero_half():
    torch.manual_seed(0)
    layer = EnergyMask(8)
    layer(torch.randn(4, 8, 7, 7) * 10)
    m = layer.terms.mask
    assert (m > 0).all() and (m <= 0.5).all()
    assert (layer.terms.unary >= 0).all()


def test_calibrated_mask_spans_zero_one():
    layer = EnergyMask(8, variant="calibrated")
    x = torch.randn(2, 8, 5, 5)
    layer(x)
    torch.testing.assert_close(layer.terms.mask, torch.sigmoid(-layer.terms.unary))  # paper at init
    with torch.no_grad():
        layer.mask_offset.fill_(5.0)
    layer(x)
    assert (layer.terms.mask > 0.5).all() and (layer.terms.mask < 1).all()
    with torch.no_grad():
        layer.mask_offset.fill_(-5.0)
    layer(x)
    assert (layer.terms.mask < 0.01).all()


@pytest.mark.parametrize("variant", ["paper", "calibrated"])
@pytest.mark.parametrize("fill", [0.0, 1e4, -1e4])
def test_extreme_inputs_finite(variant, fill):
    torch.manual_seed(0)
    layer = EnergyMask(4, variant=variant)
    x = torch.full((2, 4, 5, 5), fill, requires_grad=True)
    y = layer(x)
    loss = y.sum() + regularization_loss(layer)
    loss.backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_output_contract():
    layer = EnergyMask(5)
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    layer.double()
    y = layer(x)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    t = layer.terms
    assert t.p_hat.shape == (3, 16, 4, 6)
    assert all(f.shape == (3, 1, 4, 6) for f in (t.unary, t.pairwise, t.energy, t.mask))
    assert t.mask.requires_grad and t.energy.grad_fn is not None
    torch.testing.assert_close(t.p_hat.norm(dim=1), torch.ones(3, 4, 6, dtype=torch.float64))


def test_deterministic():
    def run():
        torch.manual_seed(3)
        layer = EnergyMask(4)
        x = torch.randn(2, 4, 6, 6, requires_grad=True)
        layer(x).sum().backward()
        return layer.terms.energy.detach(), x.grad
    a, b = run(), run()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_regularization_loss_is_mean_of_mask_times_energy():
    torch.manual_seed(0)
    model = ersm.build_model(energy_mask={})
    model(torch.rand(2, 1, 48, 48))
    t = ersm.models.energy_terms_of(model)
    torch.testing.assert_close(regularization_loss(model), (t.mask * t.energy).mean())
    assert float(regularization_loss(ersm.build_model())) == 0.0


def test_regularization_loss_names_layer_that_has_not_run():
    model = ersm.build_model(energy_mask={})
    with pytest.raises(RuntimeError, match="layer2.1"):
        regularization_loss(model)


@pytest.mark.parametrize("kwargs, argument", [
    (dict(channels=4, proj_dim=0), "proj_dim=0"),
    (dict(channels=0), "channels=0"),
    (dict(channels=4, lambda_unary=-1.0), "lambda_unary=-1.0"),
    (dict(channels=4, lambda_pair=float("nan")), "lambda_pair=nan"),
    (dict(channels=4, neighbourhood=6), "neighbourhood=6"),
    (dict(channels=4, variant="mean-field"), "variant='mean-field'"),
])
def test_bad_construction(kwargs, argument):
    with pytest.raises(ValueError, match=argument.replace("(", r"\(").replace(".", r"\.")):
        EnergyMask(**kwargs)


@pytest.mark.parametrize("x, words", [
    (torch.randn(4, 5, 5), "shape"),
    (torch.randn(1, 3, 5, 5), "3 channels"),
    (torch.full((1, 4, 2, 2), math.nan), "non-finite"),
    (torch.full((1, 4, 2, 2), math.inf), "non-finite"),
])
def test_bad_input(x, words):
    with pytest.raises(ValueError, match=words):
        EnergyMask(4)(x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_and_amp_match_cpu():
    torch.manual_seed(0)
    layer = EnergyMask(8)
    x = torch.randn(2, 8, 6, 6)
    reference = layer(x)
    gpu = layer.cuda()
    torch.testing.assert_close(gpu(x.cuda()).cpu(), reference, rtol=1e-4, atol=1e-5)
    with torch.autocast("cuda", dtype=torch.float16):
        y = gpu(x.cuda().half())
    assert y.dtype == torch.float16 and gpu.terms.energy.dtype == torch.float32
    torch.testing.assert_close(y.float().cpu(), reference, rtol=1e-2, atol=1e-2)
