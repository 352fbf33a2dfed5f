"""Datasets for the training command, all as 32x32 image tensors held in memory.

- ``digits``: the 8x8 handwritten digits that ship inside scikit-learn (no download),
  upsampled to 32x32, one channel, with a fixed 80/20 train/test split;
- ``cifar10`` / ``cifar100``: read from a local folder holding the standard python-pickle
  archive or the binary one (nothing is downloaded), with random-crop and flip
  augmentation. The pickles are read through an allow-list of the few numpy types they
  contain, so a crafted file cannot run code when it is read;
- ``synthetic``: random images whose labels a small network can learn, for smoke tests.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DATASETS = ("digits", "cifar10", "cifar100", "synthetic")
"""The names ``load_dataset`` takes."""

CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}
"""The python-pickle archives: folder, train files, test files, label key, classes."""
# The binary archives: folder, train files, test files, label bytes before each image
# (CIFAR-100 has the coarse label, then the fine one, which is used), classes.
CIFAR_BINARY_FILES = {
    "cifar10": ("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"], 1, 10),
    "cifar100": ("cifar-100-binary", ["train.bin"], ["test.bin"], 2, 100),
}
IMAGE_BYTES = 3 * 32 * 32
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
"""Per-channel (R, G, B) mean and scale of pixels in [0, 1] that ``load_cifar`` normalizes
CIFAR-10 and CIFAR-100 with."""


@dataclass
class Dataset:
    """A dataset held in memory, split into train and test.

    Attributes:
        name: a name in ``DATASETS``.
        train_images, test_images: normalized float32 images, (N, C, 32, 32).
        train_labels, test_labels: int64 class indices in 0 .. num_classes - 1, (N,).
        num_classes: the number of classes.
        augment: whether training should apply ``augment`` to its batches.
    """

    name: str
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    num_classes: int
    augment: bool

    @property
    def in_channels(self) -> int:
        """C, the channels of an image."""
        return self.train_images.shape[1]


def _normalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    return (images - mean_t) / std_t


def load_digits_dataset() -> Dataset:
    """Load scikit-learn's 1797 8x8 digits, upsampled bilinearly to 32x32.

    Returns:
        A Dataset of one channel and 10 classes: images 0, 5, 10, ... (360) are the test
        split, the other 1437 the train split; pixels are normalized by the train split's
        mean and standard deviation; no augmentation.

    Raises:
        ModuleNotFoundError: scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            'the digits data set comes with scikit-learn: pip install "anode_ext[train]" (or scikit-learn)'
        ) from None

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    labels = torch.tensor(digits.target, dtype=torch.int64)
    test = torch.arange(len(labels)) % 5 == 0
    mean, std = images[~test].mean().item(), images[~test].std().item()
    images = (images - mean) / std
    return Dataset("digits", images[~test], labels[~test], images[test], labels[test], 10, augment=False)


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what the CIFAR archives hold: dicts, lists, bytes, numbers and numpy
    arrays. Any other global (a function a crafted file would call) is refused."""

    # (module, name) pairs, with numpy's private module named by its last part: numpy 1
    # writes numpy.core.multiarray, numpy 2 numpy._core.multiarray.
    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("multiarray", "_reconstruct"),
        ("multiarray", "scalar"),
        ("numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        private = module.startswith(("numpy.core.", "numpy._core."))
        key = (module.rsplit(".", 1)[-1] if private else module, name)
        if key not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: a CIFAR batch file holds only numpy arrays")
        if private:
            module = ("numpy._core." if hasattr(np, "_core") else "numpy.core.") + key[0]
        return super().find_class(module, name)


def _read_pickle(path: str, label_key: bytes, expected: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except FileNotFoundError:
        raise FileNotFoundError(f"missing {path}; {expected}") from None
    except (pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError, AttributeError, IndexError) as error:
        raise ValueError(f"{path} is not a CIFAR batch file ({error}); {expected}") from None
    if data.ndim != 2 or data.shape[1] != IMAGE_BYTES or len(labels) != len(data):
        raise ValueError(
            f"{path} holds data of shape {data.shape} and {len(labels)} labels; expected (N, 3072) and N labels. "
            f"{expected}"
        )
    return data, labels


def _read_binary(path: str, label_bytes: int, expected: str) -> tuple[np.ndarray, np.ndarray]:
    """A binary CIFAR file: records of `label_bytes` label bytes then 3072 image bytes."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"missing {path}; {expected}") from None
    record = label_bytes + IMAGE_BYTES
    if raw.size == 0 or raw.size % record:
        raise ValueError(f"{path} holds {raw.size} bytes, not a whole number of {record}-byte records; {expected}")
    records = raw.reshape(-1, record)
    return records[:, label_bytes:], records[:, label_bytes - 1].astype(np.int64)


def load_cifar(name: str, root: str) -> Dataset:
    """Load CIFAR-10 or CIFAR-100 from a local folder; nothing is downloaded.

    Args:
        name: ``"cifar10"`` or ``"cifar100"`` (fine labels).
        root: a folder holding the extracted python-pickle archive
            (``cifar-10-batches-py``, ``cifar-100-python``) or the binary one
            (``cifar-10-batches-bin``, ``cifar-100-binary``); the python one is used
            when both are there.

    Returns:
        A Dataset of 3-channel images normalized by ``CIFAR_MEAN`` and ``CIFAR_STD``
        (the train split of the standard archives holds 50000, the test split 10000),
        with augmentation on.

    Raises:
        FileNotFoundError: neither archive (or one of its files) is under `root`.
        ValueError: a file is not a CIFAR batch (a pickle that names anything but numpy
            arrays is refused before it runs code), or a label is out of range.
        KeyError: `name` is neither of the two.
    """
    folder, train_files, test_files, label_key, classes = CIFAR_FILES[name]
    bin_folder, bin_train, bin_test, label_bytes, _ = CIFAR_BINARY_FILES[name]
    expected = (
        f"expected {name} extracted under {root}: {folder}/{{{', '.join(train_files + test_files)}}} "
        f"(python version) or {bin_folder}/{{{', '.join(bin_train + bin_test)}}} (binary version)"
    )
    if os.path.isdir(os.path.join(root, folder)):
        base = os.path.join(root, folder)

        def read_file(f: str) -> tuple[np.ndarray, np.ndarray]:
            return _read_pickle(os.path.join(base, f), label_key, expected)
    elif os.path.isdir(os.path.join(root, bin_folder)):
        base = os.path.join(root, bin_folder)
        train_files, test_files = bin_train, bin_test

        def read_file(f: str) -> tuple[np.ndarray, np.ndarray]:
            return _read_binary(os.path.join(base, f), label_bytes, expected)
    else:
        raise FileNotFoundError(f"no folder {os.path.join(root, folder)} or {os.path.join(root, bin_folder)}; {expected}")

    def read(files: list[str]) -> tuple[Tensor, Tensor]:
        parts = [read_file(f) for f in files]
        data = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([p[1] for p in parts])
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            raise ValueError(f"labels in {base} fall outside 0..{classes - 1}; {expected}")
        images = torch.from_numpy(np.ascontiguousarray(data)).float() / 255.0
        return _normalize(images, CIFAR_MEAN, CIFAR_STD), torch.from_numpy(labels)

    train_images, train_labels = read(train_files)
    test_images, test_labels = read(test_files)
    return Dataset(name, train_images, train_labels, test_images, test_labels, classes, augment=True)


def synthetic_dataset(train: int = 256, test: int = 64, classes: int = 10, seed: int = 0) -> Dataset:
    """Make random images whose labels a small network can learn, for smoke tests.

    Images are standard normal, (train + test, 3, 32, 32) float32, already normalized;
    each label is the argmax of a random linear map of the image average-pooled to 4x4.
    Everything is drawn from a generator seeded with `seed`.

    Args:
        train, test: the images in each split.
        classes: the number of classes.
        seed: the seed of images and map alike.

    Returns:
        A Dataset without augmentation.
    """
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(train + test, 3, 32, 32, generator=gen)
    projection = torch.randn(3 * 4 * 4, classes, generator=gen)
    labels = (F.adaptive_avg_pool2d(images, 4).flatten(1) @ projection).argmax(1)
    return Dataset("synthetic", images[:train], labels[:train], images[train:], labels[train:], classes, augment=False)


def load_dataset(name: str, root: str = "data") -> Dataset:
    """Load a dataset by name, with its defaults (``synthetic_dataset()``'s sizes).

    Args:
        name: one of ``DATASETS``.
        root: the folder ``load_cifar`` looks in for cifar10 / cifar100.

    Raises:
        ValueError: an unknown name; or as for ``load_digits_dataset`` and ``load_cifar``.
    """
    if name == "digits":
        return load_digits_dataset()
    if name in CIFAR_FILES:
        return load_cifar(name, root)
    if name == "synthetic":
        return synthetic_dataset()
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")


def augment(images: Tensor, generator: torch.Generator) -> Tensor:
    """Randomly crop (after 4 pixels of zero padding: about the mean pixel, on normalized
    images) and horizontally flip, each image independently.

    Args:
        images: (N, C, H, W), on any device (the crop offsets and flips are drawn on the CPU).
        generator: a CPU generator; the result is a function of it and the images.

    Returns:
        A new tensor of the images' shape.
    """
    n, _, h, w = images.shape
    padded = F.pad(images, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=generator).tolist()
    dx = torch.randint(0, 9, (n,), generator=generator).tolist()
    flip = torch.rand(n, generator=generator) < 0.5
    crops = torch.stack([padded[i, :, y : y + h, x : x + w] for i, (y, x) in enumerate(zip(dy, dx))])
    return torch.where(flip.view(n, 1, 1, 1).to(images.device), crops.flip(3), crops)


def batches(
    images: Tensor, labels: Tensor, batch_size: int, indices: Tensor
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(images[chosen], labels[chosen])`` for consecutive chunks of `indices`.

    Args:
        images, labels: tensors indexed along their first dimension.
        batch_size: samples per batch, >= 1; the last batch may be smaller.
        indices: a 1-d int64 tensor of the samples to take, in order.

    Raises:
        ValueError: a batch_size that is not an integer >= 1.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    for start in range(0, len(indices), batch_size):
        chosen = indices[start : start + batch_size]
        yield images[chosen], labels[chosen]
