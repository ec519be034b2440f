"""load_image_data auto-detection, plus integration tests on the real shared data."""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from crossdistill.data import load_image_data, sample_few_shot
from crossdistill.errors import CrossDistillError
from crossdistill.paths import shared_data_dir

FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def test_load_npz(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3, 3, 3), np.uint8), y=np.array([0, 4]))
    a = load_image_data(tmp_path / "d.npz")
    assert len(a) == 2 and a.num_classes == 5


def test_load_cifar_folder_and_parent(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        data = np.full((1, 3072), i, np.uint8)
        (folder / name).write_bytes(pickle.dumps({b"data": data, b"labels": [i]}))
    assert load_image_data(folder, "test").y.tolist() == [5]
    assert load_image_data(str(tmp_path), "train").y.tolist() == [0, 1, 2, 3, 4]


def test_load_idx_folder(tmp_path):
    for prefix, n in (("train", 3), ("t10k", 2)):
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(idx_bytes(np.zeros((n, 28, 28), np.uint8)))
        )
        (tmp_path / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(idx_bytes(np.arange(n, dtype=np.uint8)))
        )
    assert len(load_image_data(tmp_path, "test")) == 2
    assert load_image_data(tmp_path).x.shape == (3, 28, 28, 1)


def test_unknown_inputs_name_path_and_formats(tmp_path):
    with pytest.raises(CrossDistillError, match=r"nowhere\.npz: no such file .*cifar-10-batches-py"):
        load_image_data(tmp_path / "nowhere.npz")
    with pytest.raises(CrossDistillError, match=r"imagenet: no such file"):
        load_image_data("imagenet")
    (tmp_path / "data.csv").write_text("1,2,3")
    with pytest.raises(CrossDistillError, match=r"data\.csv: unsupported file type.*\.npz"):
        load_image_data(tmp_path / "data.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CrossDistillError, match=r"empty: unrecognised data folder"):
        load_image_data(tmp_path / "empty")
    with pytest.raises(CrossDistillError, match="unknown split"):
        load_image_data(tmp_path / "empty", "validation")


def test_name_uses_ensure_helpers(tmp_path, monkeypatch):
    # The name must go through the cache/download helper; here a local folder stands in for it.
    import crossdistill.data.load as load_mod

    for prefix in ("train", "t10k"):
        (tmp_path / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((1, 28, 28), np.uint8)))
        (tmp_path / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([3], np.uint8)))
    seen = []
    monkeypatch.setattr(load_mod, "ensure_fashion_mnist", lambda root: seen.append(root) or tmp_path)
    monkeypatch.chdir(tmp_path.parent)
    assert load_image_data("Fashion-MNIST", "test", root="somewhere").y.tolist() == [3]
    assert seen == ["somewhere"]


@pytest.mark.integration
def test_shared_cifar10_test1000():
    path = shared_data_dir() / "cifar10" / "cifar10_test1000.npz"
    if not path.is_file():
        pytest.skip(f"shared CIFAR-10 data not found at {path} (set CROSSDISTILL_DATA)")
    a = load_image_data(path)
    assert a.x.shape == (1000, 32, 32, 3) and a.x.dtype == np.uint8
    assert a.num_classes == 10 and a.class_names[0] == "airplane"
    assert a.class_counts().tolist() == [103, 89, 100, 103, 90, 86, 112, 102, 106, 109]
    idx = sample_few_shot(a.y, shots=5, seed=0, num_classes=10)
    assert np.bincount(a.y[idx], minlength=10).tolist() == [5] * 10


@pytest.mark.integration
def test_debian_fashion_mnist():
    if not (FASHION_SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not installed in {FASHION_SYSTEM_DIR} (apt-get install dataset-fashion-mnist)")
    train = load_image_data(FASHION_SYSTEM_DIR, "train")
    test = load_image_data(FASHION_SYSTEM_DIR, "test")
    assert train.x.shape == (60000, 28, 28, 1) and len(test) == 10000
    assert train.class_counts().tolist() == [6000] * 10
    assert test.class_counts().tolist() == [1000] * 10
    assert test.y[:5].tolist() == [9, 2, 1, 1, 6]  # first test labels of the official file
