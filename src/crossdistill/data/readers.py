"""Readers for the on-disk formats the project supports: .npz, CIFAR-10 python pickles, IDX.

Every reader turns a missing, truncated or corrupt file into a CrossDistillError that names the
file, so that the CLI can print one clear line instead of a traceback from deep inside numpy.

One module per format family (readers_npz, readers_cifar with its restricted unpickler,
readers_idx) plus the shared constants and checks (readers_common); every name stays
importable from here.
"""
from __future__ import annotations

from .readers_cifar import (  # noqa: F401 - re-exported: this module's old names
    RestrictedUnpickler,
    _SAFE_GLOBALS,
    _codecs_encode,
    _get,
    _safe_globals,
    read_cifar10_batch,
    read_cifar10_python,
    safe_unpickle,
)
from .readers_common import (  # noqa: F401 - re-exported
    CIFAR10_CLASSES,
    CIFAR10_TEST_BATCHES,
    CIFAR10_TRAIN_BATCHES,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_FILES,
    SPLITS,
    check_split,
)
from .readers_idx import (  # noqa: F401 - re-exported
    _GZIP_MAGIC,
    _GZIP_MAX_RATIO,
    _IDX_CHUNK,
    _IDX_DTYPES,
    _read_exact,
    find_idx_file,
    read_fashion_mnist,
    read_idx,
)
from .readers_npz import read_npz  # noqa: F401 - re-exported
