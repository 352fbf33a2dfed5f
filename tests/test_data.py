"""Datasets: the CIFAR readers on small files in the real format, their errors, augmentation."""

import os
import pickle

import numpy as np
import pytest
import torch

from anode_ext.data import CIFAR_MEAN, CIFAR_STD, augment, batches, load_dataset, synthetic_dataset


def write_batch(path, n, label_key, classes, seed, protocol=2):
    # Protocol 2 as the real archives (written by Python 2); the others as a user may re-save them.
    rng = np.random.default_rng(seed)
    batch = {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), label_key: rng.integers(0, classes, n).tolist()}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=protocol)
    return batch


def write_cifar10(root, n=4):
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    train = [write_batch(os.path.join(folder, f"data_batch_{i}"), n, b"labels", 10, i) for i in range(1, 6)]
    test = write_batch(os.path.join(folder, "test_batch"), n, b"labels", 10, 99)
    return folder, train, test


def test_cifar10_reader(tmp_path):
    _, train, test = write_cifar10(str(tmp_path))
    data = load_dataset("cifar10", str(tmp_path))
    assert data.train_images.shape == (20, 3, 32, 32) and data.test_images.shape == (4, 3, 32, 32)
    assert data.num_classes == 10 and data.augment
    assert data.train_labels.tolist() == sum((b[b"labels"] for b in train), [])
    pixel = train[0][b"data"][0, 0] / 255.0  # red channel, row 0, column 0 of the first image
    assert data.train_images[0, 0, 0, 0].item() == pytest.approx((pixel - CIFAR_MEAN[0]) / CIFAR_STD[0], rel=1e-5)
    assert data.test_labels.tolist() == test[b"labels"]


def test_cifar100_reader(tmp_path):
    folder = os.path.join(tmp_path, "cifar-100-python")
    os.makedirs(folder)
    train = write_batch(os.path.join(folder, "train"), 6, b"fine_labels", 100, 1)
    write_batch(os.path.join(folder, "test"), 3, b"fine_labels", 100, 2)
    data = load_dataset("cifar100", str(tmp_path))
    assert data.num_classes == 100 and data.train_images.shape == (6, 3, 32, 32)
    assert data.train_labels.tolist() == train[b"fine_labels"]


def test_missing_folder_names_the_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no folder .*cifar-10-batches-py or .*cifar-10-batches-bin.*data_batch_1, data_batch_2.*test_batch"):
        load_dataset("cifar10", str(tmp_path))


def test_missing_file(tmp_path):
    folder, _, _ = write_cifar10(str(tmp_path))
    os.remove(os.path.join(folder, "data_batch_3"))
    with pytest.raises(FileNotFoundError, match="missing .*data_batch_3"):
        load_dataset("cifar10", str(tmp_path))


def test_malformed_files(tmp_path):
    folder, _, _ = write_cifar10(str(tmp_path))
    with open(os.path.join(folder, "test_batch"), "wb") as f:
        f.write(b"this is not a pickle")
    with pytest.raises(ValueError, match="test_batch is not a CIFAR batch file"):
        load_dataset("cifar10", str(tmp_path))
    with open(os.path.join(folder, "test_batch"), "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match=r"holds data of shape \(2, 100\)"):
        load_dataset("cifar10", str(tmp_path))
    with open(os.path.join(folder, "test_batch"), "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}, f)
    with pytest.raises(ValueError, match=r"labels .* fall outside 0..9"):
        load_dataset("cifar10", str(tmp_path))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickle_protocols(tmp_path, protocol):
    folder = os.path.join(tmp_path, "cifar-100-python")
    os.makedirs(folder)
    train = write_batch(os.path.join(folder, "train"), 3, b"fine_labels", 100, 1, protocol)
    write_batch(os.path.join(folder, "test"), 2, b"fine_labels", 100, 2, protocol)
    data = load_dataset("cifar100", str(tmp_path))
    assert data.train_labels.tolist() == train[b"fine_labels"]


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_is_refused_unread(tmp_path):
    folder, _, _ = write_cifar10(str(tmp_path))
    marker = tmp_path / "code_ran"
    with open(os.path.join(folder, "data_batch_2"), "wb") as f:
        pickle.dump({b"data": RunsCode(str(marker)), b"labels": [0]}, f)
    with pytest.raises(ValueError, match=r"data_batch_2 is not a CIFAR batch file \(refused to load \S*system"):
        load_dataset("cifar10", str(tmp_path))
    assert not marker.exists()


def write_binary(path, n, label_bytes, classes, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, (n, label_bytes), dtype=np.uint8)
    images = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    np.concatenate([labels, images], axis=1).tofile(path)
    return labels[:, -1].tolist(), images


def test_binary_archives(tmp_path):
    folder = os.path.join(tmp_path, "cifar-10-batches-bin")
    os.makedirs(folder)
    train = [write_binary(os.path.join(folder, f"data_batch_{i}.bin"), 3, 1, 10, i) for i in range(1, 6)]
    write_binary(os.path.join(folder, "test_batch.bin"), 2, 1, 10, 9)
    data = load_dataset("cifar10", str(tmp_path))
    assert data.train_images.shape == (15, 3, 32, 32) and data.test_images.shape == (2, 3, 32, 32)
    assert data.train_labels.tolist() == sum((labels for labels, _ in train), [])
    pixel = train[0][1][0, 0] / 255.0
    assert data.train_images[0, 0, 0, 0].item() == pytest.approx((pixel - CIFAR_MEAN[0]) / CIFAR_STD[0], rel=1e-5)

    folder = os.path.join(tmp_path, "cifar-100-binary")
    os.makedirs(folder)
    fine, _ = write_binary(os.path.join(folder, "train.bin"), 4, 2, 100, 1)
    write_binary(os.path.join(folder, "test.bin"), 2, 2, 100, 2)
    data = load_dataset("cifar100", str(tmp_path))
    assert data.train_labels.tolist() == fine  # the fine label, the second byte
    with open(os.path.join(folder, "test.bin"), "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match=r"test.bin holds 6149 bytes, not a whole number of 3074-byte records"):
        load_dataset("cifar100", str(tmp_path))


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; expected one of digits, cifar10, cifar100, synthetic"):
        load_dataset("mnist")


def test_augment_crops_and_flips():
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    out = augment(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(2):
        found = False
        for y in range(9):
            for x in range(9):
                window = padded[i, :, y : y + 32, x : x + 32]
                if torch.equal(out[i], window) or torch.equal(out[i], window.flip(2)):
                    found = True
        assert found, "an augmented image is not a (flipped) crop of the padded image"


def test_synthetic_is_learnable_and_fixed():
    a, b = synthetic_dataset(), synthetic_dataset()
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.train_labels, b.train_labels)
    assert len(set(a.train_labels.tolist())) > 3


@pytest.mark.parametrize("size", [0, -2, 1.5])
def test_batches_refuses_a_bad_size(size):
    with pytest.raises(ValueError, match=f"batch_size must be an integer >= 1, got {size}"):
        list(batches(torch.zeros(4, 1), torch.zeros(4), size, torch.arange(4)))
