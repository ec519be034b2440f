"""The .npz reader: arrays `x` and `y`, with optional class names and class count.

Like every reader (see readers), a missing, truncated or corrupt file becomes a
CrossDistillError that names the file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from crossdistill.errors import CrossDistillError

from .arrays import ImageArrays
from .readers_common import CIFAR10_CLASSES

def read_npz(path: str | Path, *, num_classes: int | None = None) -> ImageArrays:
    """Read arrays `x` (uint8 N×H×W×C, or N×H×W for grayscale; float N×C×L: signals, as stored)
    and `y` (integer labels).

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
        if "pickled" in str(exc):
            # numpy's way of saying "not an archive it knows" (a text file) or an object array:
            # its advice (allow_pickle) is neither safe nor reachable from here.
            raise CrossDistillError(f"{path}: cannot read .npz: not an archive of arrays (numpy read it as pickled "
                                    "objects, which are not loaded); write it with np.savez(path, x=images, "
                                    "y=labels)") from None
        raise CrossDistillError(f"{path}: cannot read .npz ({type(exc).__name__}: {exc})") from exc
    if x.ndim == 3 and x.dtype == np.uint8:
        x = x[..., None]
    if y.ndim != 1:
        raise CrossDistillError(f"{path}: 'y' must be 1-D, got shape {tuple(y.shape)}")
    if np.issubdtype(y.dtype, np.floating) and y.size and bool(np.isfinite(y).all()) and bool((y == np.round(y)).all()):
        # Whole-number labels saved as floats (a pandas column, a one-hot argmax kept in float):
        # the Python API takes them as they are, and so does the file. Fractions stay refused.
        y = y.astype(np.int64)
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
