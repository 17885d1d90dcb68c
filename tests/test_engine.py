"""The training engine ``ersm.fit`` (any nn.Module, tensors or Datasets, resume, bad input) and the
datasets a ``TrainConfig`` can name (CIFAR-10 and Oxford-IIIT Pet from tiny fixture files).

``ersm.training.cache`` runs on the same loop; tests/test_train.py covers the config-driven cache on top.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
from torchvision.models import resnet18

import ersm
import ersm.data.real
import ersm.training.cache
from ersm import fit, train_step
from ersm.training.checkpoint import load_checkpoint
from ersm.cli import main
from ersm.training.config import TrainConfig
from ersm.data import load_split
from ersm.paths import cache_dir
from ersm.training.seeding import seed_everything
from helpers.fixtures import write_cifar, write_pet


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
    fitted = fit(model, (images, labels), epochs=3, beta=1.0, batch_size=8, lr=1e-3, validation=(images[:8], labels[:8]))
    losses = [record["loss"] for record in fitted.history]
    assert len(fitted.history) == 3 and fitted.model is model and not model.training
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(record["l_reg"] > 0 for record in fitted.history)
    assert 0 < fitted.history[-1]["val_mean_mask"] <= 0.5  # the paper's mask lies in (0, 0.5]


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


class _ListDataset(torch.utils.data.Dataset):
    """A map-style Dataset over ``(images, labels)`` tensors."""

    def __init__(self, tensors) -> None:
        self.images, self.labels = tensors

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])


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
    (dict(data=TensorDataset(coloured(8, channels=1)[0][:, 0], coloured(8)[1])), "items must start with an image tensor"),
    (dict(validation=_ListDataset(coloured(8, channels=1))),
     r"validation=_ListDataset: images have 1 channels, but the model's first convolution expects 3"),
    (dict(model="resnet"), "model=str"),
])
def test_bad_input_is_refused_by_name_before_any_work(change, words, monkeypatch):
    monkeypatch.setattr(ersm.training.engine, "train_one_epoch", lambda *a: pytest.fail("trained despite bad input"))
    arguments = dict(model=small(), data=coloured(8), epochs=1, beta=1.0) | change
    with pytest.raises(ValueError, match=words):
        fit(arguments.pop("model"), arguments.pop("data"), **arguments)


# --- TrainConfig.dataset: real datasets from tiny fixture files in their on-disk formats -------------

@pytest.fixture
def roots(tmp_path, monkeypatch):
    """A temporary ERSM_HOME (runs/, cache) and ERSM_DATA (datasets)."""
    monkeypatch.setenv("ERSM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ERSM_DATA", str(tmp_path / "data"))
    return tmp_path / "home", tmp_path / "data"


CIFAR = TrainConfig(dataset="cifar10", model="paper", width=8, proj_dim=8, n_train=16, n_val=4, n_test=6, epochs=1,
                    batch_size=8, device="cpu")


def test_a_cifar10_config_trains_one_epoch_on_a_fixture_and_leaves_a_checkpoint(roots):
    write_cifar(roots[1])
    images, labels, masks = load_split(CIFAR, "test")
    assert images.shape == (6, 3, 32, 32) and 0 <= images.min() <= images.max() <= 1 and masks.all()
    model = ersm.training.cache.get_model(CIFAR)
    assert [name for name, _ in model.named_children()][:2] == ["normalize", "stem"]
    assert model.stem[0].in_channels == 3 and model.head[-1].out_features == 10
    run_dir = cache_dir() / CIFAR.digest()
    state = load_checkpoint(run_dir)
    assert state["epoch"] == 1 and state["config"]["dataset"] == "cifar10"
    record = state["history"][0]
    assert {"loss", "l_reg", "train_accuracy", "val_accuracy", "val_mean_mask"} <= set(record)
    assert "test_accuracy" not in record and "mean_mask" not in record  # training never scores the test split
    assert str(run_dir).startswith(str(roots[0]))


def test_an_oxford_pet_config_trains_an_imagenet_stem_resnet(roots):
    write_pet(roots[1])
    config = TrainConfig(dataset="oxford_pet", backbone="resnet18_imagenet", model="paper", proj_dim=8, n_train=4,
                         n_val=2, n_test=2, epochs=1, batch_size=4, device="cpu")
    images, labels, masks = load_split(config, "test")
    assert images.shape == (2, 3, 224, 224) and masks.shape == (2, 1, 224, 224) and masks.dtype == torch.bool
    assert 0 < masks.float().mean() < 1  # the trimap's pet, centre-cropped like the image
    model = ersm.training.cache.get_model(config)
    assert model.head[-1].out_features == 37 and isinstance(model.stem[-1], nn.MaxPool2d)
    assert load_checkpoint(cache_dir() / config.digest())["epoch"] == 1


def test_real_splits_are_disjoint_seeded_subsets(roots):
    write_cifar(roots[1], per_batch=6)  # 30 training images
    config = CIFAR.replace(n_train=20, n_val=10)
    base = ersm.data.splits._real_base(config, "train", download=False)
    train, val = (set(ersm.data.splits.split_indices(config, s, len(base)).tolist()) for s in ("train", "validation"))
    assert len(train) == 20 and len(val) == 10 and not train & val
    other = set(ersm.data.splits.split_indices(config.replace(data_seed=1), "validation", len(base)).tolist())
    assert other != val
    with pytest.raises(ValueError, match="n_train=30 and n_val=10 exceed the 30 images"):
        ersm.training.cache.train(config.replace(n_train=30))


def test_per_item_augmentation_is_seeded_by_seed_epoch_and_index(roots):
    write_cifar(roots[1])
    data = ersm.data.training_set(CIFAR)
    plain = load_split(CIFAR, "train")[0]
    first = [data[k][0] for k in range(len(data))]
    assert all(torch.equal(data[k][0], first[k]) for k in reversed(range(len(data))))  # order does not matter
    assert sum(not torch.equal(a, b) for a, b in zip(first, plain)) >= len(data) // 2  # crops and flips happen
    data.set_epoch(1)
    assert any(not torch.equal(data[k][0], first[k]) for k in range(len(data)))
    cut = ersm.data.training_set(CIFAR.replace(augmentation="cutout", cutout_size=8))
    assert (cut[0][0] == 0).all(0).sum() >= 16  # a zeroed square on top of crop and flip


def test_missing_dataset_files_are_named_before_any_training(roots, monkeypatch, capsys):
    monkeypatch.setattr(ersm.data.real, "download_and_extract_archive", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    monkeypatch.setattr(ersm.training.engine, "train_one_epoch", lambda *a: pytest.fail("trained without data"))
    with pytest.raises(ersm.data.DatasetNotAvailable, match="cifar-10-batches-py"):
        ersm.training.cache.get_model(CIFAR)
    assert main(["train", "--set", "dataset=cifar10", "--set", "epochs=1"]) == 2
    assert str(roots[1]) in capsys.readouterr().err


def test_pretrained_fails_offline_naming_the_weights_and_loads_them_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    real_load = torch.hub.load_state_dict_from_url
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url",
                        lambda url, **kwargs: (_ for _ in ()).throw(OSError("network is unreachable")))
    with pytest.raises(ersm.models.WeightsNotAvailable, match=r"ResNet18_Weights\.IMAGENET1K_V1.*resnet18-f37072fd\.pth"):
        ersm.build_model("resnet18_imagenet", in_channels=3, num_classes=37, pretrained=True)
    # put a (fake) weights file where the message says: it is read without any network
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", real_load)
    fake = resnet18().state_dict()
    fake["conv1.weight"] = torch.full_like(fake["conv1.weight"], 0.25)
    path = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(fake, path)
    model = ersm.build_model("resnet18_imagenet", in_channels=3, num_classes=37, pretrained=True, energy_mask={})
    assert (model.stem[0].weight == 0.25).all() and model.head[-1].out_features == 37
    with pytest.raises(ValueError, match="in_channels=1 does not fit pretrained=True"):
        ersm.build_model("resnet18_imagenet", in_channels=1, pretrained=True)
