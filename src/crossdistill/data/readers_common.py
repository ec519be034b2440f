"""What every reader shares: the known data sets' class names and file names, and the split check.

Kept apart from the per-format readers (readers_npz, readers_cifar, readers_idx) so that they,
the downloader and the loader can share these constants without importing each other.
"""
from __future__ import annotations

from crossdistill.errors import CrossDistillError

CIFAR10_CLASSES: list[str] = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]
FASHION_MNIST_CLASSES: list[str] = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCHES = ("test_batch",)

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

SPLITS = ("train", "test")


def check_split(split: str) -> str:
    """Return split if it is 'train' or 'test', else raise."""
    if split not in SPLITS:
        raise CrossDistillError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return split
