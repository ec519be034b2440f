"""Readers for the on-disk formats the project supports: .npz, CIFAR-10 python pickles, IDX.

Every reader turns a missing, truncated or corrupt file into a CrossDistillError that names the
file, so that the CLI can print one clear line instead of a traceback from deep inside numpy.
"""
from __future__ import annotations

import gzip
import io
import math
import pickle
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from crossdistill.errors import CrossDistillError

from .arrays import ImageArrays

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


# ---------------------------------------------------------------------------------------------
# .npz


def read_npz(path: str | Path, *, num_classes: int | None = None) -> ImageArrays:
    """Read arrays `x` (uint8 N×H×W×C, or N×H×W for grayscale) and `y` (integer labels).

    Optional arrays `class_names` (strings) and `num_classes` (scalar) in the file are honoured;
    otherwise num_classes is the argument, else max(y) + 1.
    """
    path = Path(path)
    if not path.is_file():
        raise CrossDistillError(f"{path}: no such .npz file")
    try:
        # allow_pickle=False: an .npz is a zip of arrays, and an object array inside it would be
        # a pickle that could run code when loaded. The file is opened here because np.load
        # leaks its own handle when the zip directory is unreadable.
        with open(path, "rb") as fh:
            npz = np.load(fh, allow_pickle=False)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise CrossDistillError(f"{path}: not an .npz archive (a single .npy array?)")
            keys = set(npz.files)
            missing = {"x", "y"} - keys
            if missing:
                raise CrossDistillError(
                    f"{path}: .npz must hold arrays 'x' (images) and 'y' (labels); "
                    f"missing {sorted(missing)}, found {sorted(keys)}"
                )
            x = npz["x"]
            y = npz["y"]
            names = [str(s) for s in npz["class_names"].tolist()] if "class_names" in keys else None
            stored_k = int(npz["num_classes"]) if "num_classes" in keys else None
    except CrossDistillError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error...
        raise CrossDistillError(f"{path}: cannot read .npz ({type(exc).__name__}: {exc})") from exc
    if x.ndim == 3:
        x = x[..., None]
    if y.ndim != 1:
        raise CrossDistillError(f"{path}: 'y' must be 1-D, got shape {tuple(y.shape)}")
    if num_classes is None:
        num_classes = stored_k
    if num_classes is None and names is not None:
        num_classes = len(names)
    if num_classes is None:
        if y.size == 0 or not np.issubdtype(y.dtype, np.integer):
            num_classes = 1  # let validate() report the real problem (empty / non-integer)
        else:
            num_classes = int(y.max()) + 1
    if names is None and num_classes == 10 and "cifar" in path.name.lower().replace("-", ""):
        names = list(CIFAR10_CLASSES)
    return ImageArrays(x=x, y=y, num_classes=num_classes, class_names=names, source=str(path))


# ---------------------------------------------------------------------------------------------
# CIFAR-10 python pickles

# The official batches were written by Python 2 cPickle (protocol 2): a dict of byte strings,
# a list of int labels and one numpy array rebuilt through numpy's _reconstruct. Only what such
# files (and files re-pickled by Python 3 / numpy 2) need is allowed; anything else, such as
# os.system or subprocess, is refused before it can be called.
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {}


def _safe_globals() -> dict[tuple[str, str], Any]:
    if _SAFE_GLOBALS:
        return _SAFE_GLOBALS
    from numpy._core import multiarray as _ma
    from numpy._core import numeric as _num

    table: dict[tuple[str, str], Any] = {
        ("builtins", "dict"): dict,
        ("builtins", "list"): list,
        ("builtins", "tuple"): tuple,
        ("builtins", "bytes"): bytes,
        ("builtins", "bytearray"): bytearray,
        ("builtins", "str"): str,
        ("builtins", "int"): int,
        # Python 3 writes bytes as _codecs.encode(text, 'latin1') under protocol <= 2.
        ("_codecs", "encode"): _codecs_encode,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    # numpy 1 pickles name numpy.core, numpy 2 names numpy._core; map both without importing
    # the deprecated alias.
    for mod in ("numpy.core", "numpy._core"):
        table[(f"{mod}.multiarray", "_reconstruct")] = _ma._reconstruct
        table[(f"{mod}.multiarray", "scalar")] = _ma.scalar
        table[(f"{mod}.numeric", "_frombuffer")] = _num._frombuffer
    _SAFE_GLOBALS.update(table)
    return _SAFE_GLOBALS


def _codecs_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Only the text codecs that pickle itself uses; codecs.encode with an arbitrary codec name
    # could reach codecs that are not plain byte conversions.
    if encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise pickle.UnpicklingError(f"codec {encoding!r} is not allowed")
    return obj.encode(encoding, errors)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a CIFAR-10 batch needs."""

    def find_class(self, module: str, name: str) -> Any:
        # fix_imports has already mapped Python 2 names (__builtin__ -> builtins).
        obj = _safe_globals().get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only plain data and numpy arrays "
                "are allowed in a CIFAR-10 batch"
            )
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def safe_unpickle(data: bytes | BinaryIO, *, source: str = "pickle") -> Any:
    """Unpickle data allowing only plain containers and numpy arrays; raise CrossDistillError."""
    fh = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    try:
        # encoding='bytes' is what the CIFAR-10 page prescribes for its Python 2 pickles: keys
        # stay b'data' / b'labels' and array payloads stay raw bytes.
        return RestrictedUnpickler(fh, encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise CrossDistillError(f"{source}: unsafe or corrupt pickle ({exc})") from exc
    except Exception as exc:  # EOFError on truncation, ValueError/TypeError on garbage, ...
        raise CrossDistillError(
            f"{source}: corrupt or truncated pickle ({type(exc).__name__}: {exc})"
        ) from exc


def _get(d: dict, key: str) -> Any:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise KeyError(key)


def read_cifar10_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One `data_batch_*` / `test_batch` file as (x uint8 N×32×32×3, y int64 N)."""
    path = Path(path)
    if not path.is_file():
        raise CrossDistillError(f"{path}: CIFAR-10 batch file not found")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CrossDistillError(f"{path}: cannot read ({exc})") from exc
    obj = safe_unpickle(raw, source=str(path))
    if not isinstance(obj, dict):
        raise CrossDistillError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    try:
        data = _get(obj, "data")
        labels = _get(obj, "labels")
    except KeyError as exc:
        raise CrossDistillError(
            f"{path}: CIFAR-10 batch lacks key {exc}; found keys {sorted(map(repr, obj))}"
        ) from None
    try:
        data = np.asarray(data)
        labels = np.asarray(labels)
    except Exception as exc:
        raise CrossDistillError(f"{path}: malformed batch contents ({exc})") from exc
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise CrossDistillError(
            f"{path}: 'data' must be N×3072 (3 planes of 32×32), got shape {tuple(data.shape)}"
        )
    if data.dtype != np.uint8:
        if not np.issubdtype(data.dtype, np.integer) or data.min() < 0 or data.max() > 255:
            raise CrossDistillError(f"{path}: 'data' must be uint8 pixels, got {data.dtype}")
        data = data.astype(np.uint8)
    if labels.ndim != 1 or len(labels) != len(data):
        raise CrossDistillError(
            f"{path}: {len(data)} images but labels of shape {tuple(labels.shape)}"
        )
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise CrossDistillError(f"{path}: labels must be integers, got {labels.dtype}")
    # Rows are channel-planar (1024 R, 1024 G, 1024 B); the project stores HWC.
    x = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return x, labels.astype(np.int64)


def read_cifar10_python(folder: str | Path, split: str = "train") -> ImageArrays:
    """Read the official `cifar-10-batches-py` folder (train: data_batch_1..5, test: test_batch)."""
    folder = Path(folder)
    check_split(split)
    if not folder.is_dir():
        raise CrossDistillError(f"{folder}: CIFAR-10 folder not found")
    names = CIFAR10_TRAIN_BATCHES if split == "train" else CIFAR10_TEST_BATCHES
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise CrossDistillError(
            f"{folder}: not a complete cifar-10-batches-py folder; missing {', '.join(missing)}"
        )
    xs, ys = [], []
    for n in names:
        x, y = read_cifar10_batch(folder / n)
        xs.append(x)
        ys.append(y)
    return ImageArrays(
        x=np.concatenate(xs),
        y=np.concatenate(ys),
        num_classes=10,
        class_names=list(CIFAR10_CLASSES),
        source=f"{folder} ({split})",
    )


# ---------------------------------------------------------------------------------------------
# IDX (MNIST / Fashion-MNIST)

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
