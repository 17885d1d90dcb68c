import pytest
import torch
from torchvision.models import resnet18, resnet50

import ersm
from ersm.layer import EnergyMask
from ersm.models import count_parameters, split_at


def test_dense_and_ersm_differ_only_by_the_layer():
    torch.manual_seed(0)
    dense = ersm.build_model()
    torch.manual_seed(0)
    masked = ersm.build_model(energy_mask={})
    d, m = dense.state_dict(), masked.state_dict()
    extra = {k for k in m if "1.proj" in k or "1.score" in k}
    assert len(extra) == 4
    renamed = {k.replace("layer2.0.", "layer2.", 1) if k.startswith("layer2.0.") else k: v
               for k, v in m.items() if k not in extra}
    assert renamed.keys() == d.keys()
    assert all(torch.equal(renamed[k], d[k]) for k in d)


@pytest.mark.parametrize("factory, channels", [
    (lambda: resnet18(num_classes=10), 128), (lambda: resnet50(num_classes=10), 512),
    (lambda: ersm.resnet18_cifar(num_classes=10), 128), (lambda: ersm.SmallCNN(), 64),
])
def test_insert_after_layer2(factory, channels):
    model = ersm.insert_energy_mask(factory(), after="layer2", proj_dim=8)
    layers = [m for m in model.modules() if isinstance(m, EnergyMask)]
    assert len(layers) == 1 and layers[0].channels == channels and layers[0].proj_dim == 8
    x = torch.rand(2, 1 if isinstance(model, ersm.SmallCNN) else 3, 32, 32)
    assert model(x).shape == (2, 10)
    assert layers[0].terms is not None


def test_resnet20_is_he_et_al_s_cifar_network():
    """6n + 2 = 20 weighted layers (19 3x3 convolutions and the classifier; the two 1x1 projection
    shortcuts are not counted), 16-32-64 channels, a 24x24 grid after layer2 on 48 px digits."""
    model = ersm.build_model("resnet20", in_channels=1, num_classes=10, energy_mask=dict(proj_dim=16))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 19 and sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == 1
    assert [n for n, _ in model.named_children()] == ["stem", "layer1", "layer2", "layer3", "head"]
    dense = ersm.build_model("resnet20", in_channels=1, num_classes=10)
    assert 0.26e6 < count_parameters(dense) < 0.28e6
    layer = [m for m in model.modules() if isinstance(m, EnergyMask)][0]
    assert layer.channels == 32
    model(torch.rand(2, 1, 48, 48))
    assert layer.terms.mask.shape[-2:] == (24, 24)


def test_insert_bad_stage():
    with pytest.raises(ValueError, match="after='layer9'"):
        ersm.insert_energy_mask(ersm.SmallCNN(), after="layer9")
    model = ersm.insert_energy_mask(ersm.SmallCNN())
    with pytest.raises(ValueError, match="already"):
        ersm.insert_energy_mask(model)


def test_split_at_composes_to_model():
    torch.manual_seed(0)
    model = ersm.build_model(energy_mask={}).eval()
    encoder, head = split_at(model, "layer2")
    x = torch.rand(3, 1, 48, 48)
    feats = encoder(x)
    assert feats.shape == (3, 64, 12, 12)
    torch.testing.assert_close(head(feats), model(x))
    with pytest.raises(ValueError, match="stage='nope'"):
        split_at(model, "nope")


def test_parameter_overhead_under_one_percent():
    ratio = count_parameters(ersm.build_model(energy_mask={})) / count_parameters(ersm.build_model())
    assert 1.0 < ratio <= 1.01
