"""Checksummed downloads over file:// URLs, safe tar extraction, ensure_* helpers."""
from __future__ import annotations

import gzip
import hashlib
import io
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from crossdistill.data import (
    ensure_cifar10,
    ensure_fashion_mnist,
    fetch,
    read_cifar10_python,
    read_fashion_mnist,
    safe_extract,
    verify_checksum,
)
from crossdistill.data.download import FASHION_MNIST_MD5, FASHION_MNIST_RAW_MD5
from crossdistill.errors import CrossDistillError

STEMS = [
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
]


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def tiny_fashion_server(folder: Path) -> dict[str, str]:
    """Write the four .gz files a 'server' folder would hold; return their md5 by file name."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    sums = {}
    for stem in STEMS:
        n = 4 if stem.startswith("train") else 2
        arr = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) if "images" in stem
               else (np.arange(n) % 10).astype(np.uint8))
        blob = gzip.compress(idx_bytes(arr), mtime=0)
        (folder / f"{stem}.gz").write_bytes(blob)
        sums[f"{stem}.gz"] = md5(blob)
    return sums


def test_fetch_file_url_with_right_checksum(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"hello crossdistill" * 100)
    dest = tmp_path / "out" / "copy.bin"
    got = fetch(src.as_uri(), dest, sha256=hashlib.sha256(src.read_bytes()).hexdigest(), quiet=True)
    assert got == dest and dest.read_bytes() == src.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["copy.bin"]
    # A second call finds the verified file and does not need the URL any more.
    src.unlink()
    assert fetch(src.as_uri(), dest, md5=md5(dest.read_bytes()), quiet=True) == dest
    assert verify_checksum(dest, md5=md5(dest.read_bytes()))


def test_fetch_wrong_checksum_leaves_no_file(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    out = tmp_path / "out"
    with pytest.raises(CrossDistillError, match="checksum mismatch"):
        fetch(src.as_uri(), out / "copy.bin", md5="0" * 32, quiet=True)
    assert list(out.iterdir()) == []


def test_fetch_replaces_a_corrupt_existing_file(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"good data")
    dest = tmp_path / "copy.bin"
    dest.write_bytes(b"half-downloaded garbage")
    fetch(src.as_uri(), dest, md5=md5(b"good data"), quiet=True)
    assert dest.read_bytes() == b"good data"


def test_fetch_errors(tmp_path):
    with pytest.raises(CrossDistillError, match="checksum .* is required"):
        fetch((tmp_path / "x").as_uri(), tmp_path / "y")
    with pytest.raises(CrossDistillError, match="cannot download"):
        fetch((tmp_path / "missing").as_uri(), tmp_path / "y", md5="0" * 32, quiet=True)
    assert not (tmp_path / "y").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_ensure_fashion_mnist_downloads_from_file_url(tmp_path):
    sums = tiny_fashion_server(tmp_path / "server")
    root = tmp_path / "cache"
    folder = ensure_fashion_mnist(
        root, base_url=(tmp_path / "server").as_uri() + "/", checksums=sums,
        system_dir=tmp_path / "no-system-copy", quiet=True,
    )
    assert folder == root / "fashion-mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(sums)
    assert len(read_fashion_mnist(folder, "train")) == 4
    # Found locally the second time, even with the server gone.
    for p in (tmp_path / "server").iterdir():
        p.unlink()
    again = ensure_fashion_mnist(
        root, base_url=(tmp_path / "server").as_uri(), checksums=sums,
        system_dir=tmp_path / "no-system-copy", quiet=True,
    )
    assert again == folder


def test_ensure_fashion_mnist_prefers_system_dir_and_checks_it(tmp_path):
    sums = tiny_fashion_server(tmp_path / "system")
    folder = ensure_fashion_mnist(
        tmp_path / "cache", base_url="file:///nonexistent/", checksums=sums,
        system_dir=tmp_path / "system", quiet=True,
    )
    assert folder == tmp_path / "system"
    # A tampered local copy is an error, not silently used.
    blob = (tmp_path / "system" / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (tmp_path / "system" / "t10k-labels-idx1-ubyte.gz").write_bytes(blob[:-3] + b"xyz")
    with pytest.raises(CrossDistillError, match="checksum does not match"):
        ensure_fashion_mnist(
            tmp_path / "cache", base_url="file:///nonexistent/", checksums=sums,
            system_dir=tmp_path / "system", quiet=True,
        )


def test_ensure_fashion_mnist_bad_download_checksum(tmp_path):
    sums = tiny_fashion_server(tmp_path / "server")
    sums["t10k-images-idx3-ubyte.gz"] = "f" * 32
    with pytest.raises(CrossDistillError, match="checksum mismatch"):
        ensure_fashion_mnist(
            tmp_path / "cache", base_url=(tmp_path / "server").as_uri(), checksums=sums,
            system_dir=None, quiet=True,
        )
    assert not (tmp_path / "cache" / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").exists()


def test_official_fashion_checksums_are_well_formed():
    assert set(FASHION_MNIST_MD5) == {f"{s}.gz" for s in STEMS}
    assert set(FASHION_MNIST_RAW_MD5) == set(STEMS)
    assert all(len(v) == 32 and int(v, 16) >= 0 for v in FASHION_MNIST_MD5.values())
    assert FASHION_MNIST_MD5["train-images-idx3-ubyte.gz"] == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"


# --- tar archives -----------------------------------------------------------------------------


def make_tar(path: Path, members: dict[str, bytes], *, symlink: tuple[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink[0])
            info.type = tarfile.SYMTYPE
            info.linkname = symlink[1]
            tar.addfile(info)
    return path


@pytest.mark.parametrize(
    "bad_name", ["../escape.txt", "ok/../../escape.txt", "/tmp/abs-escape.txt"]
)
def test_safe_extract_refuses_path_traversal(tmp_path, bad_name):
    archive = make_tar(tmp_path / "evil.tar.gz", {"fine.txt": b"ok", bad_name: b"pwned"})
    dest = tmp_path / "out" / "inner"
    with pytest.raises(CrossDistillError, match="unsafe path"):
        safe_extract(archive, dest)
    assert not (tmp_path / "out" / "escape.txt").exists()
    assert not dest.exists()  # nothing written, not even the harmless member


def test_safe_extract_refuses_links(tmp_path):
    archive = make_tar(tmp_path / "link.tar.gz", {}, symlink=("data", "/etc/passwd"))
    with pytest.raises(CrossDistillError, match="not a plain file"):
        safe_extract(archive, tmp_path / "out")


def test_safe_extract_corrupt_archive(tmp_path):
    (tmp_path / "bad.tar.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(CrossDistillError, match="corrupt"):
        safe_extract(tmp_path / "bad.tar.gz", tmp_path / "out")


def test_ensure_cifar10_downloads_and_extracts(tmp_path):
    import pickle

    rng = np.random.default_rng(2)
    members = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [1, 7]}
        members[f"cifar-10-batches-py/{name}"] = pickle.dumps(d, protocol=2)
    members["cifar-10-batches-py/readme.html"] = b"<html></html>"
    archive = make_tar(tmp_path / "cifar-10-python.tar.gz", members)
    root = tmp_path / "cache"
    folder = ensure_cifar10(root, url=archive.as_uri(), md5=md5(archive.read_bytes()), quiet=True)
    assert folder == root / "cifar-10-batches-py"
    assert read_cifar10_python(folder, "test").y.tolist() == [1, 7]
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]  # no archive/scratch
    archive.unlink()  # the second call must not need the network
    assert ensure_cifar10(root, url=archive.as_uri(), md5="0" * 32, quiet=True) == folder


def test_ensure_cifar10_incomplete_archive(tmp_path):
    archive = make_tar(tmp_path / "a.tar.gz", {"cifar-10-batches-py/test_batch": b"x"})
    with pytest.raises(CrossDistillError, match="complete cifar-10-batches-py"):
        ensure_cifar10(tmp_path / "cache", url=archive.as_uri(), md5=md5(archive.read_bytes()),
                       quiet=True)
    assert not (tmp_path / "cache" / "cifar-10-batches-py").exists()


@pytest.mark.integration
def test_debian_fashion_mnist_matches_official_content():
    system = Path("/usr/share/datasets/fashion-mnist")
    if not (system / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    # Debian re-gzips the files; their decompressed bytes must equal the official ones.
    for stem in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        raw = gzip.decompress((system / f"{stem}.gz").read_bytes())
        assert md5(raw) == FASHION_MNIST_RAW_MD5[stem]
