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
