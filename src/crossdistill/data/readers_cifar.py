"""The CIFAR-10 python batches (`cifar-10-batches-py`) and the restricted unpickler they need.

The batches are pickles, and a pickle can run code when loaded: `safe_unpickle` resolves only
the globals such a batch holds. Like every reader (see readers), a missing, truncated or
corrupt file becomes a CrossDistillError that names the file.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from crossdistill.errors import CrossDistillError

from .arrays import ImageArrays
from .readers_common import CIFAR10_CLASSES, CIFAR10_TEST_BATCHES, CIFAR10_TRAIN_BATCHES, check_split

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
