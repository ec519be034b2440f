"""Small synthetic Fashion-like data and sweep files for the sweep, report and demo tests."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import yaml

from crossdistill.data import ImageArrays


def fashion_like(n: int, seed: int = 0) -> ImageArrays:
    """n random 28×28 grey images, labels 0..9 in turn (so every class has n // 10 images)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
    y = (np.arange(n) % 10).astype(np.int64)
    # A class-dependent bright square makes the task learnable, so trained teachers beat chance.
    for c in range(10):
        x[y == c, 2 * c:2 * c + 6, 2:8, 0] = 255
    return ImageArrays(x=x, y=y, num_classes=10, source=f"synthetic({n})")


def write_npz_pair(folder: Path, n_train: int = 40, n_test: int = 20) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        d = fashion_like(n, seed)
        p = folder / f"{name}.npz"
        np.savez(p, x=d.x, y=d.y)
        paths.append(p)
    return paths[0], paths[1]


def _idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_fashion_idx(folder: Path, n_train: int = 200, n_test: int = 50) -> Path:
    """A Fashion-MNIST-format folder (gzipped IDX files) of synthetic images."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        d = fashion_like(n, seed)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(d.x[..., 0]), mtime=0))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(d.y.astype(np.uint8)), mtime=0))
    return folder


def write_sweep(path: Path, train: Path, test: Path, *, grid: dict | None = None, runs: list | None = None,
                base: dict | None = None) -> Path:
    doc = {
        "name": path.stem,
        "base": {"model": "fashion_cnn", "data": str(train), "eval_data": str(test), "keep": 0.5, **(base or {})},
        "grid": grid if grid is not None else {"shots": [1, 2], "seed": [0, 1, 2]},
        "runs": runs if runs is not None else [{"objective": "nocross", "solver": "prune-only"},
                                               {"objective": "mixed", "mu": 0.6}],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
