"""uint8 NHWC arrays -> normalised float32 NCHW tensors."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from crossdistill.errors import CrossDistillError

from .arrays import ImageArrays

IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)
# The pretrained CIFAR-10 ResNets in shared/data were trained with the ImageNet statistics,
# so CIFAR-10 uses these too rather than its own per-channel statistics.
CIFAR10_MEAN, CIFAR10_STD = IMAGENET_MEAN, IMAGENET_STD
FASHION_MEAN: tuple[float, ...] = (0.2860,)
FASHION_STD: tuple[float, ...] = (0.3530,)


def default_mean_std(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The project's normalisation for a channel count: ImageNet for RGB, Fashion-MNIST for gray."""
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    if channels == 1:
        return FASHION_MEAN, FASHION_STD
    raise CrossDistillError(f"no default normalisation for {channels}-channel images")


def _stats(values: Sequence[float], channels: int, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(values, dtype=np.float32).reshape(-1))
    if t.numel() == 1 and channels != 1:
        t = t.expand(channels)
    if t.numel() != channels:
        raise CrossDistillError(f"{name} has {t.numel()} values for {channels}-channel images")
    if not torch.isfinite(t).all():
        raise CrossDistillError(f"{name} must be finite, got {list(values)}")
    return t.reshape(1, channels, 1, 1)


def to_tensor(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x / 255 - mean) / std as float32 N×C×H×W, from uint8 N×H×W×C; float32 N×C×L signals
    as (x - mean) / std per channel (no pixel scale)."""
    if isinstance(x, np.ndarray) and x.ndim == 3 and np.issubdtype(x.dtype, np.floating):
        m, s = _stats(mean, x.shape[1], "mean"), _stats(std, x.shape[1], "std")
        if (s <= 0).any():
            raise CrossDistillError(f"std must be positive, got {list(std)}")
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return ((t - m.reshape(1, -1, 1)) / s.reshape(1, -1, 1)).contiguous()
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        shape = getattr(x, "shape", None)
        raise CrossDistillError(f"to_tensor expects a uint8 array N×H×W×C, got shape {shape}")
    if x.dtype != np.uint8:
        raise CrossDistillError(f"to_tensor expects uint8 pixels, got dtype {x.dtype}")
    c = x.shape[3]
    m = _stats(mean, c, "mean")
    s = _stats(std, c, "std")
    if (s <= 0).any():
        raise CrossDistillError(f"std must be positive, got {list(std)}")
    n, h, w, _ = x.shape
    need = 4 * x.size
    if need > 2**28:  # a whole folder given to the Python API, not a batch: a kill would say nothing
        from .folder_pixels import check_fits_memory

        check_fits_memory(need, f"{n} images of {w}x{h} as float32", "give fewer images, or smaller ones "
                          "(`crossdistill pack FOLDER --size HxW` scales them as it reads them)")
    # Made NCHW at once and scaled in place: the float copies of a whole set in turn (permuted,
    # divided, shifted, made contiguous) took 13 times the pixels' bytes at their peak.
    t = torch.empty((n, c, h, w), dtype=torch.float32)
    t.copy_(torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2))
    return t.div_(255.0).sub_(m).div_(s)


def iterate_batches(
    arrays: ImageArrays,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    shuffle: bool = False,
    seed: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (float32 N×C×H×W images, int64 labels) batches; the last batch may be smaller.

    Converting batch by batch keeps memory at uint8 size for the whole split (a float copy of
    CIFAR-10 train would be 600 MB).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise CrossDistillError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = len(arrays)
    order = np.random.default_rng(seed).permutation(n) if shuffle else None
    bs = int(batch_size)
    for start in range(0, n, bs):
        sl: slice | np.ndarray = slice(start, start + bs) if order is None else order[start:start + bs]
        xb = to_tensor(arrays.x[sl], mean, std)
        yb = torch.from_numpy(np.ascontiguousarray(arrays.y[sl])).to(torch.int64)
        yield xb, yb
