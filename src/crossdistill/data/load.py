"""One entry point that turns a user's data argument into ImageArrays."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from crossdistill.errors import CrossDistillError

from .arrays import ImageArrays
from .download import CIFAR10_DIRNAME, ensure_cifar10, ensure_fashion_mnist
from .align import align_classes, order_classes
from .readers_folder import has_splits, is_image_folder, order_given, read_image_folder
from .slices import split_slice, take
from .readers import (
    CIFAR10_TEST_BATCHES,
    CIFAR10_TRAIN_BATCHES,
    FASHION_MNIST_FILES,
    check_split,
    find_idx_file,
    read_cifar10_python,
    read_fashion_mnist,
    read_npz,
)

CIFAR10_NAMES = ("cifar10", "cifar-10", "cifar_10")
FASHION_MNIST_NAMES = ("fashion-mnist", "fashion_mnist", "fashionmnist")

ACCEPTED_FORMATS = (
    "an .npz file with arrays x (uint8 N×H×W×C) and y (int labels); "
    "a cifar-10-batches-py folder (or its parent); "
    "a folder with Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], ...); "
    "a folder of class subfolders of images (PNG, JPEG, ...; train/ and test/ inside for both splits); "
    "or the names 'cifar10' / 'fashion-mnist' (found in the cache or downloaded)"
)


def _is_cifar_dir(folder: Path) -> bool:
    return any((folder / n).is_file() for n in CIFAR10_TRAIN_BATCHES + CIFAR10_TEST_BATCHES)


def _is_idx_dir(folder: Path) -> bool:
    return any(
        find_idx_file(folder, stem) is not None
        for pair in FASHION_MNIST_FILES.values()
        for stem in pair
    )


def names_no_data(spec: str | Path) -> bool:
    """Whether `spec` names nothing `load_image_data` could read: no such file or folder (a
    `PATH[a:b]` slice by its PATH) and no data-set name. Checked before long work that would
    only fail on it at the end."""
    text = str(spec)
    if Path(text).expanduser().exists():
        return False
    sliced = split_slice(text)
    if sliced is not None:
        return names_no_data(sliced[0])
    return text.strip().lower() not in (*CIFAR10_NAMES, *FASHION_MNIST_NAMES)


def holds_splits(spec: str | Path) -> bool:
    """Whether `spec` (no slice) has a training and a test split of its own: a data-set name, a
    CIFAR-10 or Fashion-MNIST folder, an image folder with train/ and test/. Given as evaluation
    data, it is read at its test split; an .npz or a folder of one split is read whole."""
    text = str(spec)
    path = Path(text).expanduser()
    if not path.exists():
        return text.strip().lower() in (*CIFAR10_NAMES, *FASHION_MNIST_NAMES)
    if not path.is_dir():
        return False
    return _is_cifar_dir(path) or _is_cifar_dir(path / CIFAR10_DIRNAME) or _is_idx_dir(path) or has_splits(path)


def load_image_data(
    spec: str | Path, split: str = "train", *, root: str | Path | None = None,
    classes: Sequence[str] | None = None, align_to: Sequence[str] | None = None,
    known_as: str = "the training data",
) -> ImageArrays:
    """Load a data set from a file, a folder or a data-set name.

    split selects train/test for folders and names; an .npz file holds a single split, so split
    is not used for it. root is where named data sets are cached (default: the user cache).
    `SPEC[start:stop]` is that part of SPEC, e.g. `train.npz[49000:]` (data/slices.py).
    `classes`: the labels numbered by this class list (`--classes`); else `align_to`: by these
    names, another data set's or a saved model's (data/align.py; `known_as` says whose, for its
    refusal). With either, a folder's
    numbered names need no warning about their text order.
    """
    with order_given(classes is not None or align_to is not None):
        data = _load(spec, split, root)
    if classes is not None:
        return order_classes(data, classes)
    return align_classes(data, align_to, known_as)


def _load(spec: str | Path, split: str, root: str | Path | None) -> ImageArrays:
    check_split(split)
    text = str(spec)
    key = text.strip().lower()
    path = Path(text).expanduser()
    sliced = None if path.exists() else split_slice(text)  # a real file whose name ends in [..] wins
    if sliced is not None:
        return take(_load(sliced[0], split, root), sliced[1], text)
    # A real path wins over a name, so a local folder called "cifar10" is read, not downloaded.
    if not path.exists():
        if key in CIFAR10_NAMES:
            return read_cifar10_python(ensure_cifar10(root), split)
        if key in FASHION_MNIST_NAMES:
            return read_fashion_mnist(ensure_fashion_mnist(root), split)
        raise CrossDistillError(f"{text}: no such file or folder; expected {ACCEPTED_FORMATS}")
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return read_npz(path)
        raise CrossDistillError(f"{path}: unsupported file type; expected {ACCEPTED_FORMATS}")
    if path.is_dir():
        if _is_cifar_dir(path):
            return read_cifar10_python(path, split)
        if _is_cifar_dir(path / CIFAR10_DIRNAME):
            return read_cifar10_python(path / CIFAR10_DIRNAME, split)
        if _is_idx_dir(path):
            return read_fashion_mnist(path, split)
        if is_image_folder(path):
            return read_image_folder(path, split)
    raise CrossDistillError(f"{path}: unrecognised data folder; expected {ACCEPTED_FORMATS}")
