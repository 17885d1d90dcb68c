"""Sparse execution after a hard mask (issue 31, part 2): the gathered path against the dense reference."""
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from ersm.models import SmallCNN, resnet20, resnet_imagenet
from ersm.compute.sparse_exec import SparseStages, pool_mask, post_mask_units, read_by_windows, positions_of
from helpers.fixtures import randomise_batchnorm

# backbone -> (builder, input side, channels, the stages after a mask placed after layer2)
BACKBONES = {
    "small_cnn_48": (lambda: SmallCNN(1, 5, width=8), 48, 1, ("layer3",)),
    "small_cnn_44": (lambda: SmallCNN(1, 5, width=8), 44, 1, ("layer3",)),  # 11x11 tokens: odd, ceil pooling
    "resnet20_48": (lambda: resnet20(1, 5), 48, 1, ("layer3",)),  # 24x24 tokens -> 12x12, a projected shortcut
    "resnet18_80": (lambda: resnet_imagenet("resnet18", num_classes=5), 80, 3, ("layer3", "layer4")),  # 10 -> 5 -> 3
    "resnet50_64": (lambda: resnet_imagenet("resnet50", num_classes=5), 64, 3, ("layer3", "layer4")),  # 8 -> 4 -> 2
}
MASKS = ("random", "all_kept", "all_dropped", "blob", "one_token")


@functools.lru_cache(maxsize=None)
def backbone(name: str, dtype: torch.dtype):
    """(encoder up to layer2, post-mask stages, their modules) in eval mode, random weights."""
    build, side, channels, after = BACKBONES[name]
    torch.manual_seed(0)
    model = build()
    randomise_batchnorm(model, seed=1)
    model = model.to(dtype).eval()
    names = [n for n, _ in model.named_children()]
    encoder = nn.Sequential(*[getattr(model, n) for n in names[:names.index("layer2") + 1]])
    stages = [getattr(model, n) for n in after]
    return encoder, stages, SparseStages(stages), side, channels


def kept_mask(kind: str, batch: int, hw: tuple[int, int], seed: int = 0) -> torch.Tensor:
    h, w = hw
    generator = torch.Generator().manual_seed(seed)
    if kind == "random":
        return torch.rand(batch, 1, h, w, generator=generator) < 0.5
    if kind == "all_kept":
        return torch.ones(batch, 1, h, w, dtype=torch.bool)
    if kind == "all_dropped":
        return torch.zeros(batch, 1, h, w, dtype=torch.bool)
    if kind == "one_token":  # the last row and column: where ceil pooling of an odd grid matters
        mask = torch.zeros(batch, 1, h, w, dtype=torch.bool)
        mask[:, :, -1, -1] = True
        return mask
    mask = torch.zeros(batch, 1, h, w, dtype=torch.bool)  # "blob": a rectangle per image
    for i in range(batch):
        top, left = int(torch.randint(0, h // 2, (1,), generator=generator)), int(torch.randint(0, w // 2, (1,), generator=generator))
        mask[i, :, top:top + h // 2, left:left + w // 2] = True
    return mask


def hard_features(name: str, kind: str, dtype=torch.float64, batch: int = 2):
    encoder, stages, sparse, side, channels = backbone(name, dtype)
    images = torch.rand(batch, channels, side, side, generator=torch.Generator().manual_seed(2)).to(dtype)
    with torch.no_grad():
        features = encoder(images)
    kept = kept_mask(kind, batch, tuple(features.shape[-2:]))
    return torch.where(kept, features, torch.zeros((), dtype=dtype)), kept, stages, sparse


def assert_exact(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    scale = max(1.0, float(want.abs().max()))
    if dtype == torch.float64:
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10 * scale)
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("name", list(BACKBONES))
def test_sparse_equals_the_dense_reference_float64(name, kind):
    x, kept, _, sparse = hard_features(name, kind)
    reference = sparse.run(x, kept, mode="reference")
    gathered = sparse.run(x, kept, mode="sparse")
    assert gathered.output.shape == reference.output.shape
    assert_exact(gathered.output, reference.output, torch.float64)
    assert [torch.equal(a, b) for a, b in zip(gathered.active, reference.active)] == [True] * len(sparse.units)


@pytest.mark.parametrize("kind", ["random", "all_kept", "blob"])
@pytest.mark.parametrize("name", list(BACKBONES))
def test_sparse_equals_the_dense_reference_float32(name, kind):
    x, kept, _, sparse = hard_features(name, kind, dtype=torch.float32)
    assert_exact(sparse(x, kept, mode="sparse"), sparse(x, kept, mode="reference"), torch.float32)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_all_kept_reference_is_the_dense_network(name):
    x, kept, stages, sparse = hard_features(name, "all_kept")
    with torch.no_grad():
        dense = nn.Sequential(*stages)(x)
    assert torch.equal(sparse(x, kept, mode="reference"), dense)
    assert sparse.run(x, kept).active_shares() == [1.0] * len(sparse.units)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_all_dropped_passes_through_the_shortcuts_only(name):
    x, kept, stages, sparse = hard_features(name, "all_dropped")
    expected = x
    with torch.no_grad():
        for unit in post_mask_units(stages):
            if isinstance(unit, (BasicBlock, Bottleneck)):
                expected = torch.relu(expected if unit.downsample is None else unit.downsample(expected))
            else:
                expected = torch.zeros_like(unit(expected))
    got = sparse.run(x, kept)
    assert_exact(got.output, expected, torch.float64)
    assert got.active_shares() == [0.0] * len(sparse.units)


def test_reference_semantics_of_one_block_and_one_conv():
    """Active outputs are the unit's dense outputs; inactive ones are 0 (conv) or the input (identity block)."""
    torch.manual_seed(0)
    block = BasicBlock(4, 4).eval()
    conv = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU()).eval()
    randomise_batchnorm(block, 0)
    randomise_batchnorm(conv, 1)
    x = torch.relu(torch.randn(2, 4, 5, 5))
    kept = torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(0)) < 0.5
    with torch.no_grad():
        y = SparseStages([block])(x, kept, mode="reference")
        z = SparseStages([conv])(x, kept, mode="reference")
        dense_block, dense_conv = block(x), conv(x)
    inactive = ~kept.expand_as(x)
    assert torch.equal(y[~inactive], dense_block[~inactive]) and torch.equal(y[inactive], x[inactive])
    assert torch.equal(z[kept.expand_as(z)], dense_conv[kept.expand_as(z)]) and (z[~kept.expand_as(z)] == 0).all()


def naive_pool(mask: torch.Tensor, stride: int) -> torch.Tensor:
    b, _, h, w = mask.shape
    out = torch.zeros(b, 1, -(-h // stride), -(-w // stride), dtype=torch.bool)
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            out[:, 0, i, j] = mask[:, 0, i * stride:(i + 1) * stride, j * stride:(j + 1) * stride].flatten(1).any(1)
    return out


@pytest.mark.parametrize("hw", [(8, 8), (7, 9), (1, 1), (3, 2)])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_pool_mask_against_a_loop(hw, stride):
    mask = torch.rand(3, 1, *hw, generator=torch.Generator().manual_seed(5)) < 0.2
    pooled = pool_mask(mask, stride)
    assert torch.equal(pooled, naive_pool(mask, stride))
    # the shape of the unit's output: a 3x3 conv with padding 1 and this stride
    assert pooled.shape[-2:] == F.conv2d(torch.zeros(1, 1, *hw), torch.zeros(1, 1, 3, 3), stride=stride, padding=1).shape[-2:]


@pytest.mark.parametrize("stride", [1, 2])
def test_windows_read_what_the_conv_reads(stride):
    """read_by_windows is the dilated mask: the inputs whose change can move an active output."""
    h, w = 7, 6
    out = torch.rand(2, 1, -(-h // stride), -(-w // stride), generator=torch.Generator().manual_seed(1)) < 0.15
    read = read_by_windows(positions_of(out), stride, (h, w), batch=2)
    weight = torch.ones(1, 1, 3, 3)
    reach = F.conv_transpose2d(out.float(), weight, stride=stride, padding=1,
                               output_padding=(h - (out.shape[2] - 1) * stride - 1, w - (out.shape[3] - 1) * stride - 1))
    assert torch.equal(read, reach > 0)


def test_active_shares_survive_stride_pooling():
    x, kept, _, sparse = hard_features("resnet50_64", "one_token")
    shares = sparse.run(x, kept).active_shares()
    # one token of 8x8 -> one position of 4x4 (layer3) -> one of 2x2 (layer4)
    assert shares == [1 / 16] * 6 + [1 / 4] * 3


def test_unsupported_units_and_modes_are_refused():
    with pytest.raises(ValueError, match="not a unit"):
        SparseStages([nn.Conv2d(3, 3, 3, padding=1)])
    five = nn.Sequential(nn.Conv2d(3, 3, 5, padding=2, bias=False), nn.BatchNorm2d(3), nn.ReLU()).eval()
    with pytest.raises(ValueError, match="not a supported convolution"):
        SparseStages([five])
    with pytest.raises(ValueError, match="holds no unit"):
        SparseStages([])
    train = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3), nn.ReLU())
    with pytest.raises(RuntimeError, match="training mode"):
        SparseStages([train])
    stages = SparseStages([train.eval()])
    x, kept = torch.rand(1, 3, 4, 4), torch.ones(1, 1, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="mode='fast'"):
        stages(x, kept, mode="fast")
    with pytest.raises(ValueError, match="kept must be a bool"):
        stages(x, kept.float())
    with pytest.raises(ValueError, match="kept must be a bool"):
        stages(x, kept[:, :, :3])
    train.train()
    with pytest.raises(RuntimeError, match="inference only"):
        stages(x, kept)


@pytest.mark.parametrize("dense_inner_share", [0.0, 1.01])  # always / never run a Bottleneck's first 1x1 everywhere
@pytest.mark.parametrize("kind", ["random", "blob", "all_kept"])
def test_both_ways_of_a_bottlenecks_first_conv_agree(monkeypatch, dense_inner_share, kind):
    import ersm.compute.sparse_exec as sparse_exec

    monkeypatch.setattr(sparse_exec, "DENSE_INNER_SHARE", dense_inner_share)
    x, kept, _, sparse = hard_features("resnet50_64", kind)
    assert_exact(sparse(x, kept, mode="sparse"), sparse(x, kept, mode="reference"), torch.float64)


@pytest.mark.parametrize("block", ["basic", "bottleneck", "basic_stride2"])
def test_signed_inputs_pass_through_the_relu_of_the_shortcut(block):
    """Inactive outputs are relu(shortcut(x)), also where x < 0 (not the case after a mask, but the rule)."""
    torch.manual_seed(0)
    if block == "basic":
        unit = BasicBlock(4, 4)
    elif block == "bottleneck":
        unit = Bottleneck(16, 4)
    else:
        unit = BasicBlock(4, 8, stride=2, downsample=nn.Sequential(nn.Conv2d(4, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8)))
    randomise_batchnorm(unit, 3)
    unit = unit.double().eval()
    x = torch.randn(2, unit.conv1.in_channels, 7, 7, dtype=torch.float64)
    kept = torch.rand(2, 1, 7, 7, generator=torch.Generator().manual_seed(4)) < 0.3
    stages = SparseStages([unit])
    reference = stages(x, kept, mode="reference")
    assert (reference >= 0).all()
    assert_exact(stages(x, kept, mode="sparse"), reference, torch.float64)
