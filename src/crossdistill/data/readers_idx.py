"""IDX files (MNIST / Fashion-MNIST), plain or gzip-compressed, read with bounded memory.

Like every reader (see readers), a missing, truncated or corrupt file becomes a
CrossDistillError that names the file.
"""
from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from crossdistill.errors import CrossDistillError

from .arrays import ImageArrays
from .readers_common import FASHION_MNIST_CLASSES, FASHION_MNIST_FILES, check_split

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


_IDX_CHUNK = 1 << 24
# Deflate expands at most about 1032:1, so a gzip file of s bytes holds at most this × s bytes.
_GZIP_MAX_RATIO = 1100


def _read_exact(fh: BinaryIO, n: int, path: Path, what: str) -> bytes:
    # In chunks: a forged header can claim more bytes than fit in memory (or in a C size_t),
    # and one fh.read(n) would try to allocate them before finding the file is short.
    chunks: list[bytes] = []
    got = 0
    while got < n:
        buf = fh.read(min(n - got, _IDX_CHUNK))
        if not buf:
            break
        chunks.append(buf)
        got += len(buf)
    if got != n:
        raise CrossDistillError(
            f"{path}: truncated IDX file ({what}: expected {n} bytes, got {got})"
        )
    return b"".join(chunks)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (plain or gzip-compressed, detected from its first bytes)."""
    path = Path(path)
    if not path.is_file():
        raise CrossDistillError(f"{path}: IDX file not found")
    try:
        with open(path, "rb") as raw:
            is_gz = raw.read(2) == _GZIP_MAGIC
        # Streaming keeps memory bounded: the header tells the payload size, so a gzip bomb
        # or trailing garbage is caught without inflating more than one byte past the end.
        fh: BinaryIO = gzip.open(path, "rb") if is_gz else open(path, "rb")  # type: ignore[assignment]
        with fh:
            magic = _read_exact(fh, 4, path, "magic number")
            if magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES or magic[3] == 0:
                raise CrossDistillError(
                    f"{path}: not an IDX file (bad magic number {magic.hex()})"
                )
            dtype = _IDX_DTYPES[magic[2]]
            ndim = magic[3]
            dims = tuple(
                int(d) for d in np.frombuffer(_read_exact(fh, 4 * ndim, path, "dimensions"), ">u4")
            )
            count = math.prod(dims)
            nbytes = count * dtype.itemsize
            room = path.stat().st_size * (_GZIP_MAX_RATIO if is_gz else 1)
            if nbytes > room:
                raise CrossDistillError(
                    f"{path}: truncated or corrupt IDX file (its header announces shape {dims}, "
                    f"{nbytes} bytes of data, more than the file can hold)"
                )
            payload = _read_exact(fh, nbytes, path, f"payload for shape {dims}")
            if fh.read(1):
                raise CrossDistillError(
                    f"{path}: IDX file is longer than its header says (shape {dims})"
                )
    except CrossDistillError:
        raise
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise CrossDistillError(
            f"{path}: corrupt or truncated IDX file ({type(exc).__name__}: {exc})"
        ) from exc
    return np.frombuffer(payload, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def find_idx_file(folder: Path, stem: str) -> Path | None:
    """`stem` or `stem.gz` inside folder, whichever exists (uncompressed first)."""
    for cand in (folder / stem, folder / f"{stem}.gz"):
        if cand.is_file():
            return cand
    return None


def read_fashion_mnist(folder: str | Path, split: str = "train") -> ImageArrays:
    """Read Fashion-MNIST (or MNIST) IDX files from folder: x uint8 N×28×28×1."""
    folder = Path(folder)
    check_split(split)
    if not folder.is_dir():
        raise CrossDistillError(f"{folder}: Fashion-MNIST folder not found")
    img_stem, lbl_stem = FASHION_MNIST_FILES[split]
    img_path = find_idx_file(folder, img_stem)
    lbl_path = find_idx_file(folder, lbl_stem)
    missing = [s for s, p in ((img_stem, img_path), (lbl_stem, lbl_path)) if p is None]
    if missing:
        raise CrossDistillError(
            f"{folder}: missing {' and '.join(m + '(.gz)' for m in missing)}"
        )
    assert img_path is not None and lbl_path is not None
    images = read_idx(img_path)
    labels = read_idx(lbl_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise CrossDistillError(
            f"{img_path}: expected uint8 images N×H×W, got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise CrossDistillError(
            f"{lbl_path}: expected uint8 labels N, got {labels.dtype} {labels.shape}"
        )
    if len(images) != len(labels):
        raise CrossDistillError(
            f"{folder}: {len(images)} images in {img_path.name} but {len(labels)} labels "
            f"in {lbl_path.name}"
        )
    return ImageArrays(
        x=images[..., None],
        y=labels,
        num_classes=10,
        class_names=list(FASHION_MNIST_CLASSES),
        source=f"{folder} ({split})",
    )
