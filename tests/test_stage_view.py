"""stage_view on any model with one EnergyMask (or a dense model and a stage name): where the
stage is, the features and the unmasked stage output from forward hooks, and a head with
``head(features) == model(images)``; on the package's SmallCNN the numbers are those of the
slicing path (``split_at``) exactly, and torchvision ResNets work too."""
import pytest
import torch
from torch import nn
from torchvision.models import resnet18

import ersm
from ersm.experiments import rankings
from ersm.experiments.rankings import GRADCAM, MAGNITUDE, MASK, MASKED_MAGNITUDE, HookedHead, StageView
from ersm.metrics.deletion import feature_curves
from ersm.models import split_at

ENERGY_MASK = dict(proj_dim=8, lambda_unary=1.0, lambda_pair=1.0)


def digits(n: int = 6, side: int = 32) -> torch.Tensor:
    return torch.rand(n, 1, side, side, generator=torch.Generator().manual_seed(0))


def colour(n: int = 3, side: int = 64) -> torch.Tensor:
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(0))


def small_cnn(ersm_model: bool) -> nn.Module:
    torch.manual_seed(0)
    model = ersm.build_model("small_cnn", width=8, energy_mask=dict(ENERGY_MASK) if ersm_model else None).eval()
    if ersm_model:
        with torch.no_grad():  # a non-trivial mask: the unary score varies from token to token
            model.layer2[1].score.weight.mul_(20.0)
    return model


def torchvision_resnet(after: str | None) -> nn.Module:
    torch.manual_seed(0)
    model = resnet18(num_classes=10)
    if after is not None:
        ersm.insert_energy_mask(model, after=after, **ENERGY_MASK)
    return model.eval()


class Wrapped(nn.Module):
    """The same network behind a custom forward, so that nothing can be sliced."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


def only_layer(model):
    (_, layer), = ersm.energy_masks(model)
    return layer


def clean_probability(model, images, predicted):
    with torch.no_grad():
        return model(images).softmax(1).gather(1, predicted[:, None])[:, 0]


# ----------------------------------------------------------------------------- the package's SmallCNN

@pytest.mark.parametrize("ersm_model", [True, False], ids=["ersm", "dense"])
@pytest.mark.parametrize("wrap", [False, True], ids=["sequential", "wrapped"])
def test_small_cnn_view_equals_the_slicing_path_exactly(ersm_model, wrap):
    """Features, unmasked magnitude, predictions and head: those of split_at, bit for bit, on the
    fast path (plain nn.Sequential) and on the hook path (the same network behind a custom forward)."""
    model = small_cnn(ersm_model)
    images = digits()
    prefix = "net." if wrap else ""
    view = rankings.stage_view(Wrapped(model) if wrap else model, images, stage=None if ersm_model else prefix + "layer2",
                               batch_size=4)  # two batches
    encoder, head = split_at(model, "layer2")
    with torch.no_grad():
        features = encoder(images)
        unmasked = model.layer2[0](model.layer1(model.stem(images))) if ersm_model else features
        logits = head(features)
    assert torch.equal(view.features, features)
    assert torch.equal(view.rankings[MAGNITUDE], unmasked.norm(dim=1))
    assert torch.equal(view.predicted, logits.argmax(1))
    with torch.no_grad():
        assert torch.equal(view.head(view.features), model(images))
    assert isinstance(view.head, HookedHead) == wrap
    assert view.stage == prefix + ("layer2.1" if ersm_model else "layer2")
    if ersm_model:
        with torch.no_grad():
            model(images)
        assert torch.equal(view.rankings[MASK], only_layer(model).terms.mask[:, 0])
        assert torch.equal(view.rankings[MASKED_MAGNITUDE], features.norm(dim=1))
        assert not torch.allclose(view.rankings[MAGNITUDE], view.rankings[MASKED_MAGNITUDE], rtol=1e-3)
    else:
        assert MASK not in view.rankings and MASKED_MAGNITUDE not in view.rankings


@pytest.mark.parametrize("ersm_model", [True, False], ids=["ersm", "dense"])
def test_hooked_head_equals_split_head_exactly_on_small_cnn(ersm_model):
    model = small_cnn(ersm_model)
    images = digits()
    view = rankings.stage_view(model, images, stage="layer2")
    hooked = HookedHead(model, view.stage, images)
    scores = view.rankings[MAGNITUDE]
    with torch.no_grad():
        assert torch.equal(hooked(view.features), view.head(view.features))
    assert torch.equal(feature_curves(hooked, view.features, scores, view.predicted, steps=8),
                       feature_curves(view.head, view.features, scores, view.predicted, steps=8))


def test_ersm_stage_name_is_optional_and_checked_against_the_layer():
    model = small_cnn(True)
    images = digits()
    a, b = rankings.stage_view(model, images), rankings.stage_view(model, images, stage="layer2")
    assert a.stage == b.stage == "layer2.1"
    assert torch.equal(a.features, b.features) and all(torch.equal(a.rankings[k], b.rankings[k]) for k in a.rankings)
    with pytest.raises(ValueError, match=r"stage='layer3' does not hold the model's EnergyMask, which sits at 'layer2.1'"):
        rankings.stage_view(model, images, stage="layer3")


def test_stage_view_keeps_its_four_field_construction():
    """Notebook 04 rebuilds a view from four fields."""
    view = rankings.stage_view(small_cnn(True), digits())
    subset = StageView(view.features, view.head, view.predicted, view.rankings)
    assert subset.stage is None and subset.head is view.head


# ----------------------------------------------------------------------------- torchvision ResNets

def check_resnet_view(model, images, view, stage_module, unmasked, grid):
    """head(features) == model(images); the grid is the stage's; feature_curves runs and starts at
    the clean probability of the predicted class."""
    with torch.no_grad():
        logits = model(images)
        torch.testing.assert_close(view.head(view.features), logits, rtol=1e-5, atol=1e-5)
    assert view.features.shape[2:] == grid and view.features.shape[1] == ersm.models.stage_channels(stage_module)
    assert all(ranking.shape == (len(images), *grid) for ranking in view.rankings.values())
    torch.testing.assert_close(view.rankings[MAGNITUDE], unmasked.norm(dim=1))
    assert torch.equal(view.predicted, logits.argmax(1))
    assert torch.isfinite(view.rankings[GRADCAM]).all()
    for name, scores in view.rankings.items():
        curves = feature_curves(view.head, view.features, scores, view.predicted, steps=4)
        assert curves.shape == (len(images), 5), name
        torch.testing.assert_close(curves[:, 0], clean_probability(model, images, view.predicted), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def masked_resnet():
    """A torchvision ResNet-18 with the mask after layer3, its images and its view (not changed by the tests)."""
    model, images = torchvision_resnet("layer3"), colour()
    return model, images, rankings.stage_view(model, images)


def test_torchvision_resnet_with_a_mask_after_layer3(masked_resnet):
    model, images, view = masked_resnet
    assert view.stage == "layer3.1" and isinstance(view.head, HookedHead)
    with torch.no_grad():
        trunk = model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(images))))))
        unmasked = model.layer3[0](trunk)
        masked = model.layer3(trunk)
        model(images)
    check_resnet_view(model, images, view, model.layer3[0], unmasked, grid=(4, 4))
    torch.testing.assert_close(view.features, masked)
    assert torch.equal(view.rankings[MASK], only_layer(model).terms.mask[:, 0])
    torch.testing.assert_close(view.rankings[MASKED_MAGNITUDE], masked.norm(dim=1))


def test_dense_torchvision_resnet_at_layer2():
    model = torchvision_resnet(None)
    images = colour()
    view = rankings.stage_view(model, images, stage="layer2")
    assert view.stage == "layer2" and isinstance(view.head, HookedHead)
    with torch.no_grad():
        out = model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(images))))))
    check_resnet_view(model, images, view, model.layer2, out, grid=(8, 8))
    torch.testing.assert_close(view.features, out)
    assert MASK not in view.rankings and MASKED_MAGNITUDE not in view.rankings


def test_hooked_head_leaves_the_layer_terms_and_the_features_alone(masked_resnet):
    model, images, view = masked_resnet
    layer = only_layer(model)
    with torch.no_grad():
        model(images)
    terms, features = layer.terms, view.features.clone()
    feature_curves(view.head, view.features, view.rankings[MASK], view.predicted, steps=4)
    assert layer.terms is terms and torch.equal(view.features, features)


def test_a_stage_followed_by_an_in_place_layer():
    """ResNet's bn1 is followed by ReLU(inplace=True): the view and the head must work on copies."""
    model, images = torchvision_resnet(None), colour()
    view = rankings.stage_view(model, images, stage="bn1")
    with torch.no_grad():
        out = model.bn1(model.conv1(images))
        logits = model(images)
    assert (out < 0).any()
    torch.testing.assert_close(view.features, out)
    torch.testing.assert_close(view.rankings[MAGNITUDE], out.norm(dim=1))
    features = view.features.clone()
    with torch.no_grad():
        torch.testing.assert_close(view.head(view.features), logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(view.features, features)


# ----------------------------------------------------------------------------- bad inputs

def test_dense_model_without_a_stage_is_refused():
    with pytest.raises(ValueError, match=r"stage=None: the model holds no EnergyMask.*'layer2'"):
        rankings.stage_view(small_cnn(False), digits())
    with pytest.raises(ValueError, match=r"stage=None: the model holds no EnergyMask.*'layer4', 'avgpool', 'fc'"):
        rankings.stage_view(torchvision_resnet(None), colour())


def test_several_energy_masks_are_refused():
    model = small_cnn(True)
    ersm.insert_energy_mask(model, after="layer1", **ENERGY_MASK)
    with pytest.raises(ValueError, match=r"2 EnergyMask layers \(\['layer1.1', 'layer2.1'\]\)"):
        rankings.stage_view(model, digits())
    with pytest.raises(ValueError, match="2 EnergyMask layers"):
        rankings.stage_view(model, digits(), stage="layer2")


@pytest.mark.parametrize("stage, listed", [
    ("layer9", r"the model \(ResNet\) has stages \[.*'layer4', 'avgpool', 'fc'\]"),
    ("layer2.7", r"'layer2' has \['layer2.0', 'layer2.1'\]"),
    ("", r"its stages are \[.*'layer2'"),
    (2, r"its stages are \[.*'layer2'"),
])
def test_unknown_stage_names_are_refused_with_the_names_there_are(stage, listed):
    with pytest.raises(ValueError, match=rf"stage={stage!r} .*{listed}"):
        rankings.stage_view(torchvision_resnet(None), colour(), stage=stage)


def test_stages_that_are_not_a_feature_map_or_not_a_cut_are_refused():
    model, images = torchvision_resnet(None), colour()
    with pytest.raises(ValueError, match=r"stage 'fc' outputs \(3, 10\), not a feature map"):
        rankings.stage_view(model, images, stage="fc")
    with pytest.raises(ValueError, match=r"stage 'layer2.0.relu' ran 2 times in one forward pass"):
        rankings.stage_view(model, images, stage="layer2.0.relu")
    with pytest.raises(ValueError, match=r"stage 'layer2.0.bn2' is not a cut of the network"):
        rankings.stage_view(model, images, stage="layer2.0.bn2")  # the block's shortcut bypasses it
