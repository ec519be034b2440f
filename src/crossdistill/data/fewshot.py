"""Few-shot subsets: which training images the compressed network may see."""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from crossdistill.errors import CrossDistillError, outside_stacklevel
from crossdistill.outputs import json_default

MODES = ("random", "first")
INDEX_FORMAT = "crossdistill-few-shot-indices"
INDEX_VERSION = 1


def _labels_array(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise CrossDistillError(f"labels must be 1-D, got shape {tuple(y.shape)}")
    if y.size == 0:
        raise CrossDistillError("labels are empty: nothing to sample from")
    if not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        raise CrossDistillError(f"labels must be integers, got dtype {y.dtype}")
    return y.astype(np.int64, copy=False)


class ClassCoverageWarning(UserWarning):
    """The training data lacks some of the model's classes: the student sees none of them."""


def _class_label(c: int, class_names: Sequence[str] | None) -> str:
    return f"{c} ({class_names[c]})" if class_names is not None and c < len(class_names) else str(c)


def check_class_coverage(labels: Sequence[int] | np.ndarray, num_classes: int, where: str = "data",
                         class_names: Sequence[str] | None = None) -> list[int]:
    """Images per class (length `num_classes`); warns when some class has none, since a
    student distilled without a class's images is fitted to the other classes only."""
    counts = np.bincount(_labels_array(labels), minlength=num_classes)[:num_classes]
    present = int((counts > 0).sum())
    if present < num_classes:
        missing = [c for c, n in enumerate(counts) if not n]
        listed = ", ".join(_class_label(c, class_names) for c in missing[:8]) + (", ..." if len(missing) > 8 else "")
        if present <= 12:  # a short histogram says what is there; a long one buries the missing classes
            shown = "images per class " + (", ".join(f"{_class_label(c, class_names)}: {int(n)}"
                                                      for c, n in enumerate(counts) if n) or "none") + "; "
        else:
            shown = f"{int(counts[counts > 0].min())} to {int(counts.max())} images a class; "
        warnings.warn(f"{where}: the images cover {present} of the model's {num_classes} classes "
                      f"({shown}none of class{'es' * (len(missing) > 1)} {listed}); the student learns nothing "
                      "about the others", ClassCoverageWarning, stacklevel=outside_stacklevel())
    return [int(n) for n in counts]


def check_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CrossDistillError(f"{name} must be an integer, got {value!r}")
    if value < 1:
        raise CrossDistillError(f"{name} must be >= 1, got {value}")
    return int(value)


def sample_few_shot(
    labels: Sequence[int] | np.ndarray,
    *,
    shots: int | None = None,
    n: int | None = None,
    seed: int = 0,
    mode: str = "random",
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """Sorted int64 indices of a few-shot subset.

    shots=K takes K images of every class; n=N takes N images regardless of class. mode='random'
    draws with np.random.default_rng(seed) (classes in increasing order, so the draw depends only
    on labels and seed); mode='first' takes the first K per class (or first N) in data-set order,
    which is what the paper's released code does. A class with no image at all is skipped (the
    callers warn about it first: `check_class_coverage`); one with fewer than K is an error.
    """
    y = _labels_array(labels)
    if mode not in MODES:
        raise CrossDistillError(f"unknown sampling mode {mode!r}; expected one of {', '.join(MODES)}")
    if (shots is None) == (n is None):
        raise CrossDistillError(
            "give exactly one of shots (images per class) or n (images in total)"
        )
    if int(y.min()) < 0:
        raise CrossDistillError(f"labels must be >= 0, found {int(y.min())}")
    rng = np.random.default_rng(seed)

    if n is not None:
        n = check_count(n, "n_samples (--n-samples)")
        if n > len(y):
            raise CrossDistillError(f"n_samples={n} is larger than the data set ({len(y)} images)")
        if mode == "first":
            return np.arange(n, dtype=np.int64)
        return np.sort(rng.choice(len(y), size=n, replace=False)).astype(np.int64)

    k = check_count(shots, "shots (--shots)")
    k_classes = int(y.max()) + 1 if num_classes is None else int(num_classes)
    if int(y.max()) >= k_classes:
        raise CrossDistillError(f"label {int(y.max())} is outside [0, {k_classes})")
    counts = np.bincount(y, minlength=k_classes)
    present = np.flatnonzero(counts)
    smallest = int(present[np.argmin(counts[present])])
    if counts[smallest] < k:
        label = f"class {_class_label(smallest, class_names)}"
        n = int(counts[smallest])
        raise CrossDistillError(
            f"shots={k} per class is more than {label} has ({n} sample{'s' * (n != 1)}): give shots {n} or fewer, "
            "or n_samples (--n-samples) to draw that many samples whatever their classes"
        )
    # A stable sort groups indices by class while keeping data-set order inside each class.
    order = np.argsort(y, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    picked = []
    for c in present:
        members = order[starts[c]:starts[c + 1]]
        if mode == "first":
            picked.append(members[:k])
        else:
            picked.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int64)


def save_indices(
    path: str | Path, indices: Sequence[int] | np.ndarray, meta: Mapping[str, Any] | None = None
) -> Path:
    """Write indices and the settings that produced them (seed, shots, data...) as JSON."""
    path = Path(path)
    idx = np.asarray(indices)
    if idx.ndim != 1 or (idx.size and (not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0)):
        raise CrossDistillError("indices must be a 1-D array of non-negative integers")
    doc = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "count": int(idx.size),
        "indices": [int(i) for i in idx],
        "meta": dict(meta or {}),
    }
    try:
        text = json.dumps(doc, default=json_default, indent=1)
    except (TypeError, ValueError) as exc:
        raise CrossDistillError(f"cannot save few-shot metadata as JSON ({exc})") from exc
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write-then-rename: a crash never leaves a half-written index file behind.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise CrossDistillError(f"{path}: cannot write ({exc})") from exc
    return path


def load_indices(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a file written by save_indices: (int64 indices, meta dict)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CrossDistillError(f"{path}: few-shot index file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CrossDistillError(f"{path}: not a readable JSON index file ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        raise CrossDistillError(f"{path}: not a crossdistill few-shot index file")
    if doc.get("version") != INDEX_VERSION:
        raise CrossDistillError(f"{path}: unsupported index file version {doc.get('version')!r}")
    raw = doc.get("indices")
    if not isinstance(raw, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in raw
    ):
        raise CrossDistillError(f"{path}: 'indices' must be a list of non-negative integers")
    if doc.get("count", len(raw)) != len(raw):
        raise CrossDistillError(
            f"{path}: file says {doc.get('count')} indices but holds {len(raw)} (edited or truncated?)"
        )
    meta = doc.get("meta") or {}
    if not isinstance(meta, dict):
        raise CrossDistillError(f"{path}: 'meta' must be a JSON object")
    return np.asarray(raw, dtype=np.int64), meta
