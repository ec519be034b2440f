"""Readers on tiny files written by the tests: .npz, CIFAR-10 pickles, IDX."""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from crossdistill.data import (
    CIFAR10_CLASSES,
    FASHION_MNIST_CLASSES,
    read_cifar10_batch,
    read_cifar10_python,
    read_fashion_mnist,
    read_idx,
    read_npz,
    safe_unpickle,
)
from crossdistill.errors import CrossDistillError

RNG = np.random.default_rng(0)


# --- file builders ----------------------------------------------------------------------------


def idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[arr.dtype]
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.tobytes()


def write_fashion(folder: Path, n_train: int = 5, n_test: int = 3, gz: bool = True) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labs = (np.arange(n) % 10).astype(np.uint8)
        for stem, arr in ((f"{prefix}-images-idx3-ubyte", imgs), (f"{prefix}-labels-idx1-ubyte", labs)):
            data = idx_bytes(arr)
            if gz:
                (folder / f"{stem}.gz").write_bytes(gzip.compress(data, mtime=0))
            else:
                (folder / stem).write_bytes(data)
        out[prefix] = (imgs, labs)
    return out


def _py2_str(b: bytes) -> bytes:
    # Python 2 cPickle writes str as SHORT_BINSTRING / BINSTRING.
    return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b


def _py2_int(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if 0 <= v < 65536:
        return b"M" + struct.pack("<H", v)
    return b"J" + struct.pack("<i", v)


def py2_cifar_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A protocol-2 pickle laid out like the official (Python 2, numpy 1) CIFAR-10 batches."""
    n, d = data.shape
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n"
        + _py2_int(0) + b"\x85" + _py2_str(b"b") + b"\x87R"
        + b"(" + _py2_int(1) + _py2_int(n) + _py2_int(d) + b"\x86"
        + b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R"
        + b"(" + _py2_int(3) + _py2_str(b"|") + b"NNN" + _py2_int(-1) + _py2_int(-1)
        + _py2_int(0) + b"tb" + b"\x89" + _py2_str(data.tobytes()) + b"tb"
    )
    labs = b"](" + b"".join(_py2_int(int(v)) for v in labels) + b"e"
    return (
        b"\x80\x02}(" + _py2_str(b"batch_label") + _py2_str(b"training batch 1 of 5")
        + _py2_str(b"labels") + labs + _py2_str(b"data") + array + b"u."
    )


def write_cifar(folder: Path, per_batch: int = 4, style: str = "py2") -> dict[str, tuple]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = RNG.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = RNG.integers(0, 10, per_batch).tolist()
        if style == "py2":
            blob = py2_cifar_batch(data, labels)
        else:  # how a Python 3 script would re-save a batch: plain lists, bytes keys
            blob = pickle.dumps({b"data": data.tolist(), b"labels": labels, b"batch_label": b"x"})
        (folder / name).write_bytes(blob)
        out[name] = (data, labels)
    return out


# --- npz --------------------------------------------------------------------------------------


def test_read_npz_rgb_and_grayscale(tmp_path):
    x = RNG.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2], np.int32)
    np.savez(tmp_path / "cifar10_small.npz", x=x, y=y)
    a = read_npz(tmp_path / "cifar10_small.npz", num_classes=10)
    assert np.array_equal(a.x, x) and a.y.dtype == np.int64 and a.y.tolist() == y.tolist()
    assert a.num_classes == 10 and a.class_names == CIFAR10_CLASSES

    g = RNG.integers(0, 256, (3, 5, 5), dtype=np.uint8)
    np.savez_compressed(tmp_path / "gray.npz", x=g, y=np.array([0, 2, 1]))
    b = read_npz(tmp_path / "gray.npz")
    assert b.x.shape == (3, 5, 5, 1) and np.array_equal(b.x[..., 0], g)
    assert b.num_classes == 3 and b.class_names is None


def test_read_npz_honours_stored_class_names(tmp_path):
    np.savez(
        tmp_path / "d.npz", x=np.zeros((2, 1, 1, 1), np.uint8), y=np.array([0, 1]),
        class_names=np.array(["cat", "dog", "cow"]),
    )
    a = read_npz(tmp_path / "d.npz")
    assert a.num_classes == 3 and a.class_names == ["cat", "dog", "cow"]


def test_read_npz_errors(tmp_path):
    with pytest.raises(CrossDistillError, match="no such"):
        read_npz(tmp_path / "missing.npz")
    np.savez(tmp_path / "nox.npz", images=np.zeros((1, 1, 1, 1), np.uint8), y=np.zeros(1))
    with pytest.raises(CrossDistillError, match=r"missing \['x'\]"):
        read_npz(tmp_path / "nox.npz")
    np.savez(tmp_path / "float.npz", x=np.zeros((1, 2, 2, 3), np.float32), y=np.zeros(1, int))
    with pytest.raises(CrossDistillError, match="uint8"):
        read_npz(tmp_path / "float.npz")
    # Object arrays need pickle to load; they must be refused, not executed.
    np.savez(tmp_path / "obj.npz", x=np.array([object()], dtype=object), y=np.zeros(1, int))
    with pytest.raises(CrossDistillError, match="cannot read"):
        read_npz(tmp_path / "obj.npz")


def test_read_npz_truncated_and_garbage(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, x=RNG.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8), y=np.zeros(20, int))
    raw = good.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CrossDistillError, match="trunc.npz"):
        read_npz(tmp_path / "trunc.npz")
    corrupt = bytearray(raw)
    corrupt[200:260] = b"\xff" * 60  # inside the x payload: the zip CRC check must catch it
    (tmp_path / "crc.npz").write_bytes(bytes(corrupt))
    with pytest.raises(CrossDistillError, match="crc.npz"):
        read_npz(tmp_path / "crc.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    with pytest.raises(CrossDistillError, match="not an .npz archive"):
        read_npz(tmp_path / "single.npz")
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip file at all")
    with pytest.raises(CrossDistillError, match="junk.npz"):
        read_npz(tmp_path / "junk.npz")


# --- CIFAR-10 pickles -------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["py2", "py3-lists"])
def test_read_cifar10_python(tmp_path, style):
    written = write_cifar(tmp_path / "cifar-10-batches-py", style=style)
    train = read_cifar10_python(tmp_path / "cifar-10-batches-py", "train")
    test = read_cifar10_python(tmp_path / "cifar-10-batches-py", "test")
    assert train.x.shape == (20, 32, 32, 3) and test.x.shape == (4, 32, 32, 3)
    assert train.class_names == CIFAR10_CLASSES and train.num_classes == 10
    # Batches are concatenated in order 1..5 and rows are CHW-planar on disk.
    data2, labels2 = written["data_batch_2"]
    row = data2[1]
    img = train.x[4 + 1]
    assert np.array_equal(img[..., 0].ravel(), row[:1024])
    assert np.array_equal(img[..., 1].ravel(), row[1024:2048])
    assert np.array_equal(img[..., 2], row[2048:].reshape(32, 32))
    assert train.y[4:8].tolist() == labels2
    assert test.y.tolist() == written["test_batch"][1]


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > evil_marker",))


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "cifar"
    write_cifar(folder, style="py3-lists")
    (folder / "data_batch_3").write_bytes(
        pickle.dumps({b"data": Evil(), b"labels": [0]}, protocol=2)
    )
    with pytest.raises(CrossDistillError, match=r"refusing to load global (posix|nt|os)\.system"):
        read_cifar10_python(folder, "train")
    assert not (tmp_path / "evil_marker").exists()


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps(print),  # builtins.print
        b"cbuiltins\neval\n(S'1+1'\ntR.",  # protocol 0 eval
        b"csubprocess\ncheck_output\n(S'ls'\ntR.",
        b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R.",
    ],
    ids=["print", "eval", "subprocess", "codecs-rot13"],
)
def test_other_unsafe_globals_are_refused(payload):
    with pytest.raises(CrossDistillError, match="unsafe or corrupt pickle"):
        safe_unpickle(payload)


def test_truncated_and_corrupt_cifar_batches(tmp_path):
    folder = tmp_path / "c"
    write_cifar(folder)
    raw = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(raw[:-100])
    with pytest.raises(CrossDistillError, match="test_batch"):
        read_cifar10_python(folder, "test")
    (folder / "test_batch").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CrossDistillError, match="test_batch"):
        read_cifar10_python(folder, "test")
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": [[0] * 100], b"labels": [0]}))
    with pytest.raises(CrossDistillError, match="N×3072"):
        read_cifar10_batch(folder / "test_batch")
    (folder / "test_batch").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(CrossDistillError, match="expected a pickled dict"):
        read_cifar10_batch(folder / "test_batch")
    (folder / "data_batch_5").unlink()
    with pytest.raises(CrossDistillError, match="missing data_batch_5"):
        read_cifar10_python(folder, "train")
    with pytest.raises(CrossDistillError, match="unknown split"):
        read_cifar10_python(folder, "val")


# --- IDX / Fashion-MNIST ----------------------------------------------------------------------


def test_read_idx_plain_gz_and_int32(tmp_path):
    arr = RNG.integers(0, 256, (3, 4, 5), dtype=np.uint8)
    (tmp_path / "a").write_bytes(idx_bytes(arr))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(arr)))
    assert np.array_equal(read_idx(tmp_path / "a"), arr)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr)
    big = np.array([[1, -2], [70000, 3]], dtype=">i4")
    (tmp_path / "b").write_bytes(idx_bytes(big))
    out = read_idx(tmp_path / "b")
    assert out.tolist() == big.tolist() and out.dtype.isnative


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda b: b[:-1], "truncated"),
        (lambda b: b[:6], "truncated"),
        (lambda b: b + b"\x00", "longer than its header"),
        (lambda b: b"\x00\x01" + b[2:], "bad magic"),
        (lambda b: b[:2] + b"\x07" + b[3:], "bad magic"),
        (lambda b: b"", "truncated"),
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_rejects_bad_files(tmp_path, mutate, match, gz):
    data = mutate(idx_bytes(RNG.integers(0, 256, (2, 3, 3), dtype=np.uint8)))
    path = tmp_path / ("f.gz" if gz else "f")
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(CrossDistillError, match=match):
        read_idx(path)


def test_read_idx_truncated_gzip_stream(tmp_path):
    z = gzip.compress(idx_bytes(RNG.integers(0, 256, (50, 28, 28), dtype=np.uint8)))
    (tmp_path / "t.gz").write_bytes(z[: len(z) // 2])
    with pytest.raises(CrossDistillError, match="t.gz"):
        read_idx(tmp_path / "t.gz")
    bad = bytearray(z)
    bad[40:80] = bytes(40)
    (tmp_path / "c.gz").write_bytes(bytes(bad))
    with pytest.raises(CrossDistillError, match="c.gz"):
        read_idx(tmp_path / "c.gz")
    with pytest.raises(CrossDistillError, match="not found"):
        read_idx(tmp_path / "none")


@pytest.mark.parametrize("gz", [True, False])
def test_read_fashion_mnist(tmp_path, gz):
    written = write_fashion(tmp_path, gz=gz)
    train = read_fashion_mnist(tmp_path, "train")
    test = read_fashion_mnist(tmp_path, "test")
    assert train.x.shape == (5, 28, 28, 1) and test.x.shape == (3, 28, 28, 1)
    assert np.array_equal(train.x[..., 0], written["train"][0])
    assert test.y.tolist() == written["t10k"][1].tolist()
    assert train.class_names == FASHION_MNIST_CLASSES


def test_read_fashion_mnist_mismatch_and_missing(tmp_path):
    write_fashion(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(2, np.uint8)))
    with pytest.raises(CrossDistillError, match="3 images .* but 2 labels"):
        read_fashion_mnist(tmp_path, "test")
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(CrossDistillError, match="missing train-labels-idx1-ubyte"):
        read_fashion_mnist(tmp_path, "train")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(3, 10, np.uint8)))
    with pytest.raises(CrossDistillError, match="label 10 is outside"):
        read_fashion_mnist(tmp_path, "test")


def test_whole_number_labels_saved_as_floats_are_read_as_the_api_takes_them(tmp_path):
    """The API took labels 0.0, 1.0, ... and the file reader refused them ('labels must be
    integers'); fractions are still refused."""
    import numpy as np

    from crossdistill.data.readers_npz import read_npz
    from crossdistill.errors import CrossDistillError

    x = np.zeros((4, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "f.npz", x=x, y=np.array([0.0, 1.0, 2.0, 1.0], np.float32))
    data = read_npz(tmp_path / "f.npz")
    assert data.y.dtype == np.int64 and data.y.tolist() == [0, 1, 2, 1] and data.num_classes == 3
    np.savez(tmp_path / "g.npz", x=x, y=np.array([0.0, 1.5, 2.0, 1.0], np.float32))
    with pytest.raises(CrossDistillError, match="labels must be integers"):
        read_npz(tmp_path / "g.npz")
