"""Real datasets, loaded through torchvision, in the benchmark's item format.

Both loaders return ``(image float32 [C, H, W] in [0, 1], label int, mask bool [1, H, W])``
like :class:`~ersm.data.digits.ClutteredDigits`, so the same training and metric code
runs on them.

- :class:`CIFAR10Masked`: CIFAR-10 has no object annotations, so the mask is all True
  and ``has_object_masks`` is False: localisation metrics are undefined on it (use it for
  accuracy, sparsity and occlusion, not for mask quality).
- :class:`OxfordPetMasked`: Oxford-IIIT Pet; the trimaps give the mask
  (pixel value 1 = pet, 2 = background, 3 = border, and mask = trimap == 1). Images are
  resized to ``size x size`` (bilinear; the aspect ratio is not kept, so no part of the
  pet is cropped away) and trimaps likewise with nearest-neighbour.

Offline behaviour: when the files are missing, ``download=True`` tries torchvision's
download once; if that fails for any reason (this machine has no internet) or
``download=False``, the constructor raises :class:`DatasetNotAvailable`, whose message
names the directory and the files to put there and where to get them.

Deliberate deviation: torchvision's CIFAR10 checks the md5 of every batch file. Here
the check is that each file exists and unpickles; the md5 of the downloaded archive is
still checked when torchvision downloads it. This lets the tests run the real loading
code on tiny files written in the same on-disk format.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, OxfordIIITPet
from torchvision.datasets.utils import download_and_extract_archive
from torchvision.transforms.functional import pil_to_tensor

PET_TRIMAP_FOREGROUND = 1


class DatasetNotAvailable(RuntimeError):
    """The dataset's files are not on disk and could not be downloaded."""


def _ensure_files(name: str, directory: Path, required: list[Path], how: str, download: bool, fetch) -> None:
    """Return when every path in ``required`` exists; else download once or raise.

    ``fetch`` downloads and extracts the dataset; any exception from it (no network,
    proxy, checksum) becomes :class:`DatasetNotAvailable` with the cause chained.
    """
    missing = [path for path in required if not path.exists()]
    if not missing:
        return
    cause = None
    if download:
        try:
            fetch()
        except Exception as exc:  # noqa: BLE001 - any failure means "not available"
            cause = exc
        missing = [path for path in required if not path.exists()]
        if not missing:
            return
    tried = f"download failed ({type(cause).__name__}: {cause})" if cause else "download=False"
    raise DatasetNotAvailable(
        f"{name} is not available in {directory} ({tried}). Missing: "
        f"{', '.join(str(path.relative_to(directory)) for path in missing)}. {how}"
    ) from cause


class _CIFAR10Files(CIFAR10):
    """torchvision's CIFAR10 with the per-file md5 check replaced by exists-and-unpickles."""

    def _check_integrity(self) -> bool:
        folder = Path(self.root) / self.base_folder
        return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)

    def _load_meta(self) -> None:
        with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as file:
            self.classes = pickle.load(file, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}


class CIFAR10Masked(Dataset):
    """CIFAR-10 as ``(image [3, 32, 32], label, mask [1, 32, 32] all True)``.

    Args:
        root: the folder that holds (or will hold) ``cifar-10-batches-py/``.
        train: the 50,000 training images, else the 10,000 test images.
        download: try to download when files are missing.
    """

    has_object_masks = False
    num_classes = 10
    in_channels = 3

    def __init__(self, root: str | Path, train: bool = True, download: bool = True) -> None:
        root = Path(root)
        folder = root / CIFAR10.base_folder
        names = [name for name, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
        how = (
            f"Download {CIFAR10.url} (the python version), extract it into {root} so that "
            f"{folder} holds {', '.join(names)}."
        )

        def fetch() -> None:
            download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)

        _ensure_files("CIFAR-10", root, [folder / name for name in names], how, download, fetch)
        self._data = _CIFAR10Files(str(root), train=train, download=False)
        self.classes = list(self._data.classes)

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        pixels = torch.from_numpy(self._data.data[index])  # uint8 [32, 32, 3]
        image = pixels.permute(2, 0, 1).float() / 255.0
        mask = torch.ones(1, *image.shape[1:], dtype=torch.bool)
        return image, int(self._data.targets[index]), mask


class OxfordPetMasked(Dataset):
    """Oxford-IIIT Pet as ``(image [3, size, size], breed label 0-36, pet mask [1, size, size])``.

    Args:
        root: the folder that holds (or will hold) ``oxford-iiit-pet/``.
        split: ``"trainval"`` or ``"test"``.
        size: output side in px.
        download: try to download when files are missing.
    """

    has_object_masks = True
    num_classes = 37
    in_channels = 3

    def __init__(self, root: str | Path, split: str = "trainval", size: int = 64, download: bool = True) -> None:
        if split not in ("trainval", "test"):
            raise ValueError(f"split={split!r} is not one of ('trainval', 'test')")
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size={size!r} must be a positive integer")
        root = Path(root)
        folder = root / "oxford-iiit-pet"
        urls = [url for url, _ in OxfordIIITPet._RESOURCES]
        required = [folder / "images", folder / "annotations" / "trimaps", folder / "annotations" / f"{split}.txt"]
        how = (
            f"Download {' and '.join(urls)} and extract both into {folder}, so that it holds "
            "images/*.jpg, annotations/trimaps/*.png, annotations/trainval.txt and annotations/test.txt."
        )

        def fetch() -> None:
            for url, md5 in OxfordIIITPet._RESOURCES:
                download_and_extract_archive(url, download_root=str(folder), md5=md5)

        _ensure_files("Oxford-IIIT Pet", root, required, how, download, fetch)
        self.size = size
        self._data = OxfordIIITPet(str(root), split=split, target_types=["category", "segmentation"], download=False)
        self.classes = list(self._data.classes)

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        photo, (label, trimap) = self._data[index]
        side = (self.size, self.size)
        image = pil_to_tensor(photo.resize(side, Image.Resampling.BILINEAR)).float() / 255.0
        trimap = pil_to_tensor(trimap.resize(side, Image.Resampling.NEAREST))
        return image, int(label), trimap == PET_TRIMAP_FOREGROUND
