"""In-memory data set: uint8 NHWC pixels (or float32 N×C×L signals) plus integer labels."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from crossdistill.errors import CrossDistillError


@dataclass
class ImageArrays:
    """Images and labels of one split, as read from disk.

    Pixels stay uint8 until they are turned into tensors, so that a whole split costs a quarter
    of the memory of float32 and so that the exact stored values are never rounded twice.
    Signals (a Conv1d model's inputs) are float32 (N, C, L), used as stored.
    """

    x: np.ndarray  # uint8 (N, H, W, C), or float32 (N, C, L) signals
    y: np.ndarray  # int64 (N,)
    num_classes: int
    class_names: list[str] | None = None
    source: str = field(default="")
    # What a reader did that an error about these images should mention (a mostly gray folder
    # read as RGB because of a few colour files).
    note: str = field(default="", compare=False)
    # Each sample's file, relative to `source` (an image folder's): which images a draw took.
    files: list[str] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise CrossDistillError unless x, y and num_classes describe a usable data set."""
        where = f" ({self.source})" if self.source else ""
        x, y = self.x, self.y
        if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
            raise CrossDistillError(
                f"image data{where}: x and y must be numpy arrays, got "
                f"{type(x).__name__} and {type(y).__name__}"
            )
        if x.ndim == 3 and np.issubdtype(x.dtype, np.floating):
            # Signals: no pixel scale to guess at, so floats are taken as they are.
            if x.size and not bool(np.isfinite(x).all()):
                raise CrossDistillError(f"signal data{where}: x contains NaN or infinite values")
            if x.dtype != np.float32:
                self.x = x = x.astype(np.float32)
        elif x.ndim != 4:
            raise CrossDistillError(
                f"image data{where}: x must be uint8 images (N, H, W, C) or float signals (N, C, L), "
                f"got {x.dtype} of shape {tuple(x.shape)}"
                + ("; token ids are read by the Python API only (crossdistill.compress(model, ids, labels=...), "
                   "crossdistill.export_model(model, path, 'onnx', ids))"
                   if x.ndim == 2 and np.issubdtype(x.dtype, np.integer) else
                   "; rows of features (N, F) are read by the Python API only (crossdistill.compress(model, "
                   "features, labels=...), as a float tensor scaled as the model expects)"
                   if x.ndim == 2 and np.issubdtype(x.dtype, np.floating) else
                   "; volumes and video clips (N, C, D, H, W) are read by the Python API only "
                   "(crossdistill.compress(model, clips, labels=...), as tensors normalised as the model expects)"
                   if x.ndim == 5 else "")
            )
        if x.dtype != np.uint8 and x.ndim == 4:
            detail = ""
            if np.issubdtype(x.dtype, np.floating):
                # Floats are refused rather than guessed at: [0,1] versus [0,255] scaling
                # cannot be told apart reliably, and a wrong guess silently ruins accuracy.
                finite = bool(np.isfinite(x).all()) if x.size else True
                if not finite:
                    detail = " (it also contains NaN or infinite values)"
                elif x.size and float(x.min()) >= 0 and float(x.max()) <= 1:
                    detail = (f" with values in [{float(x.min()):g}, {float(x.max()):g}]; convert explicitly: "
                              "(x * 255).round().astype(np.uint8)")
                elif x.size and float(x.min()) >= 0 and float(x.max()) <= 255:
                    detail = (f" with values in [{float(x.min()):g}, {float(x.max()):g}]; convert explicitly: "
                              "x.round().astype(np.uint8)")
                elif x.size:
                    detail = (f" with values in [{float(x.min()):g}, {float(x.max()):g}], not pixels: images "
                              "normalised already are given to the Python API as tensors (crossdistill.compress)")
            raise CrossDistillError(
                f"image data{where}: x must have dtype uint8 (pixels 0..255), got {x.dtype}{detail}"
            )
        if x.ndim == 4 and x.shape[1] in (1, 3, 4) and x.shape[3] not in (1, 3, 4):
            # Channels first (N, C, H, W), as torch holds images: read as N×H×W×C it would give
            # H = C and C = W, and a model error far from the cause.
            raise CrossDistillError(
                f"image data{where}: x looks channels-first, {tuple(x.shape)} (N, C, H, W); image arrays are "
                "N×H×W×C: save x.transpose(0, 2, 3, 1)")
        if min(x.shape[1:]) < 1:
            raise CrossDistillError(
                f"image data{where}: image size H, W, C must be positive, got {tuple(x.shape)}"
            )
        if x.shape[0] == 0:
            raise CrossDistillError(f"image data{where}: the data set is empty (0 images)")
        if y.ndim != 1:
            raise CrossDistillError(
                f"image data{where}: y must be 1-D (N,), got shape {tuple(y.shape)}"
            )
        if len(y) != len(x):
            raise CrossDistillError(
                f"image data{where}: {len(x)} images but {len(y)} labels"
            )
        if not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
            raise CrossDistillError(
                f"image data{where}: labels must be integers, got dtype {y.dtype}"
            )
        if isinstance(self.num_classes, bool) or not isinstance(
            self.num_classes, (int, np.integer)
        ):
            raise CrossDistillError(
                f"image data{where}: num_classes must be an int, got {self.num_classes!r}"
            )
        self.num_classes = int(self.num_classes)
        if self.num_classes < 1:
            raise CrossDistillError(
                f"image data{where}: num_classes must be >= 1, got {self.num_classes}"
            )
        # Compare before casting: a uint64 label above the int64 range would otherwise wrap.
        lo, hi = int(y.min()), int(y.max())
        if lo < 0:
            # Not "outside [0, K)": K is often inferred from the labels, so it would be misleading.
            raise CrossDistillError(f"image data{where}: label {lo} is negative; labels are class numbers 0, 1, 2, ...")
        if hi >= self.num_classes:
            raise CrossDistillError(
                f"image data{where}: label {hi} is outside [0, {self.num_classes})"
            )
        if y.dtype != np.int64:
            self.y = y.astype(np.int64)
        if self.class_names is not None:
            names = list(self.class_names)
            if len(names) != self.num_classes:
                raise CrossDistillError(
                    f"image data{where}: {len(names)} class names for {self.num_classes} classes"
                )
            self.class_names = [str(n) for n in names]
        if self.files is not None and len(self.files) != len(x):
            raise CrossDistillError(f"image data{where}: {len(self.files)} file names for {len(x)} images")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def is_signal(self) -> bool:
        """Float (N, C, L) signals rather than uint8 images."""
        return self.x.ndim == 3

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample as the model takes it: (C, H, W) for images, (C, L) for signals."""
        if self.is_signal:
            return int(self.x.shape[1]), int(self.x.shape[2])
        h, w, c = self.x.shape[1:]
        return int(c), int(h), int(w)

    def describe_shape(self) -> str:
        """The stored shape of one sample, in the words of error messages."""
        if self.is_signal:
            return f"signals of shape {self.input_shape} (C, L)"
        return f"images are {tuple(int(v) for v in self.x.shape[1:])} (H, W, C)"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        h, w, c = self.x.shape[1:]
        return int(h), int(w), int(c)

    def class_counts(self) -> np.ndarray:
        """Number of images per class, length num_classes (zeros for absent classes)."""
        return np.bincount(self.y, minlength=self.num_classes)

    def subset(self, indices: Sequence[int] | np.ndarray) -> "ImageArrays":
        """A copy holding only the given rows, in the given order."""
        idx = np.asarray(indices)
        if idx.ndim != 1:
            raise CrossDistillError(f"subset indices must be 1-D, got shape {tuple(idx.shape)}")
        if idx.size == 0:
            raise CrossDistillError("subset indices are empty")
        if not np.issubdtype(idx.dtype, np.integer) or idx.dtype == np.bool_:
            raise CrossDistillError(f"subset indices must be integers, got dtype {idx.dtype}")
        n = len(self)
        if int(idx.min()) < 0 or int(idx.max()) >= n:
            # Negative indices are refused too: in a saved few-shot draw they are always a bug.
            bad = int(idx.min()) if int(idx.min()) < 0 else int(idx.max())
            raise CrossDistillError(f"subset index {bad} is outside [0, {n})")
        return ImageArrays(
            x=self.x[idx],
            y=self.y[idx],
            num_classes=self.num_classes,
            class_names=None if self.class_names is None else list(self.class_names),
            source=self.source,
            files=None if self.files is None else [self.files[int(i)] for i in idx],
        )
