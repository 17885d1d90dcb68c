"""The training engine ``ersm.fit``: any nn.Module, tensors or Datasets, resume, bad input.

``ersm.train`` runs on the same loop; tests/test_train.py covers the config-driven cache on top.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
from torchvision.models import resnet18

import ersm
from ersm import fit, train_step
from ersm.seeding import seed_everything


def coloured(n: int, classes: int = 4, side: int = 32, channels: int = 3, seed: int = 0):
    """Learnable tiny images ``[n, channels, side, side]``: each class has its own mean colour, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    palette = torch.rand(classes, channels, 1, 1, generator=generator)
    images = (0.6 * palette[labels] + 0.4 * torch.rand(n, channels, side, side, generator=generator)).clamp(0, 1)
    return images, labels


def small(energy_mask: bool = True, variant: str = "paper", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return ersm.build_model("small_cnn", in_channels=3, num_classes=4, width=8,
                            energy_mask=dict(proj_dim=8, variant=variant) if energy_mask else None)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_torchvision_resnet18_with_the_layer_trains_and_its_loss_falls():
    seed_everything(0)
    model = ersm.insert_energy_mask(resnet18(num_classes=4), after="layer2", proj_dim=8)
    images, labels = coloured(24, side=24)  # the ImageNet stem leaves a 2x2 grid after layer2
    fitted = fit(model, (images, labels), epochs=3, beta=1.0, batch_size=8, lr=1e-3, test=(images[:8], labels[:8]))
    losses = [record["loss"] for record in fitted.history]
    assert len(fitted.history) == 3 and fitted.model is model and not model.training
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(record["l_reg"] > 0 for record in fitted.history)
    assert 0 < fitted.history[-1]["mean_mask"] <= 0.5  # the paper's mask lies in (0, 0.5]


def test_a_dense_model_trains_with_beta_zero_and_is_refused_a_positive_beta():
    images, labels = coloured(16)
    fitted = fit(small(energy_mask=False), (images, labels), epochs=1, beta=0.0, batch_size=8)
    assert fitted.history[0]["l_reg"] == 0.0
    with pytest.raises(ValueError, match=r"beta=1\.0 but the model holds no EnergyMask"):
        fit(small(energy_mask=False), (images, labels), epochs=1, beta=1.0)


def test_a_dataset_gives_the_same_run_as_its_tensors():
    images, labels = coloured(24)
    seed_everything(0)
    a = fit(small(), (images, labels), epochs=2, beta=1.0, batch_size=8, seed=3)
    b = fit(small(), TensorDataset(images, labels), epochs=2, beta=1.0, batch_size=8, seed=3)
    assert same_weights(a.model, b.model)
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in a.history] == \
           [{k: v for k, v in r.items() if k != "seconds"} for r in b.history]


def test_a_noisy_variant_resumes_exactly(tmp_path):
    # hardconcrete draws its gate noise from torch's global generator, which the checkpoint keeps
    images, labels = coloured(24)
    seed_everything(0)
    kwargs = dict(epochs=3, beta=1.0, batch_size=8, seed=1)
    fit(small(variant="hardconcrete"), (images, labels), run_dir=tmp_path / "a", stop_after_epoch=1, **kwargs)
    torch.manual_seed(123)  # whatever happened to the global generator in between
    resumed = fit(small(variant="hardconcrete"), (images, labels), run_dir=tmp_path / "a", **kwargs)
    seed_everything(0)
    straight = fit(small(variant="hardconcrete"), (images, labels), run_dir=tmp_path / "b", **kwargs)
    assert same_weights(resumed.model, straight.model)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]


def test_an_optimizer_of_ones_own_and_no_schedule():
    images, labels = coloured(16)
    model = small()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    fitted = fit(model, (images, labels), epochs=2, beta=0.5, optimizer=optimizer, scheduler=None, batch_size=8)
    assert optimizer.param_groups[0]["lr"] == 0.05 and len(fitted.history) == 2
    with pytest.raises(ValueError, match="lr=0.1 applies to optimizer='adamw'"):
        fit(model, (images, labels), epochs=1, beta=0.5, optimizer=optimizer, lr=0.1)


def test_train_step_raises_on_a_non_finite_loss_before_the_update():
    model = small()
    images, labels = coloured(4)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(FloatingPointError, match="non-finite features"):
        train_step(model, images * float("nan"), labels, optimizer, beta=1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("change, words", [
    (dict(epochs=0), "epochs=0"),
    (dict(batch_size=0), "batch_size=0"),
    (dict(beta=-1.0), "beta=-1.0"),
    (dict(beta=float("nan")), "beta=nan"),
    (dict(optimizer="adam"), "optimizer='adam'"),
    (dict(lr=0.0), "lr=0.0"),
    (dict(scheduler="cosine"), "scheduler='cosine'"),
    (dict(device="tpu"), "device='tpu'"),
    (dict(seed=-1), "seed=-1"),
    (dict(data=coloured(8, channels=1)), "data: images have 1 channels"),
    (dict(data=(coloured(8)[0], coloured(8)[1] + 4)), "labels run from 4 to 7, but the model has 4 outputs"),
    (dict(data=(coloured(8)[0], coloured(8)[1].int())), "data: labels must be an int64"),
    (dict(data=coloured(8)[0]), "data=Tensor"),
    (dict(data=TensorDataset(*coloured(8)), augment=lambda x, g: x), "augment=.* applies to tensor data only"),
    (dict(validation=coloured(8, channels=1)), "validation: images have 1 channels"),
    (dict(model="resnet"), "model=str"),
])
def test_bad_input_is_refused_by_name_before_any_work(change, words, monkeypatch):
    monkeypatch.setattr(ersm.engine, "train_one_epoch", lambda *a: pytest.fail("trained despite bad input"))
    arguments = dict(model=small(), data=coloured(8), epochs=1, beta=1.0) | change
    with pytest.raises(ValueError, match=words):
        fit(arguments.pop("model"), arguments.pop("data"), **arguments)
