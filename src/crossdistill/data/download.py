"""Checksummed downloads of the public data sets, used only when no local copy exists.

The per-data-set specs (URLs, checksums, folder layouts) and the `ensure_*` helpers live here;
the generic checksummed download and safe extraction are in downloader, and stay importable
from here.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import urllib.parse
import zlib
from pathlib import Path
from typing import Mapping

from crossdistill.errors import CrossDistillError
from crossdistill.paths import cache_dir

from .downloader import (  # noqa: F401 - re-exported: this module's old names
    _CHUNK,
    _check_member,
    _hash_file,
    _pick_checksum,
    fetch,
    safe_extract,
    verify_checksum,
)
from .readers_common import CIFAR10_TEST_BATCHES, CIFAR10_TRAIN_BATCHES, FASHION_MNIST_FILES

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_DIRNAME = "cifar-10-batches-py"

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_DIRNAME = "fashion-mnist"
# md5 of the .gz files as published by Zalando (these are what a download must match).
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# md5 of the decompressed files. Debian's dataset-fashion-mnist re-gzips the same bytes with a
# normalised gzip header (no file name, fixed mtime), so its .gz md5s differ from Zalando's while
# the content is identical; local copies are therefore checked on their decompressed bytes.
FASHION_MNIST_RAW_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}


def default_data_root() -> Path:
    """Where downloaded data sets are kept: <cache_dir>/datasets."""
    return cache_dir() / "datasets"


def _cifar_complete(folder: Path) -> bool:
    return all((folder / n).is_file() for n in CIFAR10_TRAIN_BATCHES + CIFAR10_TEST_BATCHES)


def ensure_cifar10(
    root: str | Path | None = None,
    *,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
    keep_archive: bool = False,
    quiet: bool = False,
) -> Path:
    """Return root/cifar-10-batches-py, downloading and extracting the official archive if needed."""
    root = Path(root) if root is not None else default_data_root()
    folder = root / CIFAR10_DIRNAME
    if _cifar_complete(folder):
        return folder
    archive = fetch(url, root / "cifar-10-python.tar.gz", md5=md5, quiet=quiet)
    # Extract into a scratch folder, then move the result into place, so an interrupted
    # extraction never leaves a half-filled folder that the check above would accept.
    scratch = Path(tempfile.mkdtemp(prefix=".cifar10-extract-", dir=root))
    try:
        safe_extract(archive, scratch)
        extracted = scratch / CIFAR10_DIRNAME
        if not _cifar_complete(extracted):
            raise CrossDistillError(
                f"{archive}: archive does not contain a complete {CIFAR10_DIRNAME} folder"
            )
        if folder.exists():
            shutil.rmtree(folder)  # an incomplete earlier copy
        os.replace(extracted, folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not keep_archive:
        archive.unlink(missing_ok=True)
    return folder


def _fashion_file(folder: Path, stem: str) -> Path | None:
    for cand in (folder / stem, folder / f"{stem}.gz"):
        if cand.is_file():
            return cand
    return None


def _fashion_local_ok(
    path: Path, stem: str, gz_md5: Mapping[str, str], raw_md5: Mapping[str, str] | None
) -> bool:
    """A local file is accepted if its .gz md5 or its decompressed md5 is a known one."""
    try:
        st = path.stat()
        # Hashing the 26 MB image file costs about half a second; do it once per process.
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, gz_md5.get(path.name),
               None if raw_md5 is None else raw_md5.get(stem))
        if key in _VERIFIED:
            return True
        ok = _fashion_local_check(path, stem, gz_md5, raw_md5)
    except (OSError, EOFError, zlib.error) as exc:  # unreadable, truncated or corrupt gzip
        raise CrossDistillError(f"{path}: corrupt or unreadable ({exc})") from exc
    if ok:
        _VERIFIED.add(key)
    return ok


_VERIFIED: set[tuple] = set()


def _fashion_local_check(
    path: Path, stem: str, gz_md5: Mapping[str, str], raw_md5: Mapping[str, str] | None
) -> bool:
    if path.suffix == ".gz":
        if _hash_file(path, "md5") == gz_md5.get(path.name):
            return True
        return raw_md5 is not None and _hash_file(path, "md5", gunzip=True) == raw_md5.get(stem)
    return raw_md5 is not None and _hash_file(path, "md5") == raw_md5.get(stem)


def ensure_fashion_mnist(
    root: str | Path | None = None,
    *,
    base_url: str = FASHION_MNIST_URL,
    checksums: Mapping[str, str] | None = None,
    raw_checksums: Mapping[str, str] | None = None,
    system_dir: str | Path | None = FASHION_MNIST_SYSTEM_DIR,
    verify: bool = True,
    quiet: bool = False,
) -> Path:
    """Return a folder holding the four Fashion-MNIST IDX files.

    Looks in system_dir (the Debian package dataset-fashion-mnist) first, then in
    root/fashion-mnist, and otherwise downloads the missing files from base_url into
    root/fashion-mnist, checking each against `checksums` (md5 of the .gz, by file name).
    Local copies are checked against `checksums` or `raw_checksums` (md5 of the decompressed
    file) when verify is true; a local copy that fails the check is an error, not replaced.
    """
    gz_md5 = dict(FASHION_MNIST_MD5 if checksums is None else checksums)
    raw_md5 = FASHION_MNIST_RAW_MD5 if (checksums is None and raw_checksums is None) else raw_checksums
    stems = [s for pair in FASHION_MNIST_FILES.values() for s in pair]
    root = Path(root) if root is not None else default_data_root()
    target = root / FASHION_MNIST_DIRNAME

    candidates = [Path(system_dir)] if system_dir is not None else []
    candidates.append(target)
    for folder in candidates:
        found = {s: _fashion_file(folder, s) for s in stems}
        if folder != target and not all(found.values()):
            continue
        if verify:
            for stem, path in found.items():
                if path is not None and not _fashion_local_ok(path, stem, gz_md5, raw_md5):
                    raise CrossDistillError(
                        f"{path}: checksum does not match the official Fashion-MNIST file; "
                        "delete it (or reinstall dataset-fashion-mnist) and retry"
                    )
        if all(found.values()):
            return folder

    # Download only what is missing from the cache folder.
    if not base_url.endswith("/"):
        base_url += "/"
    for stem in stems:
        if _fashion_file(target, stem) is not None:
            continue
        name = f"{stem}.gz"
        if name not in gz_md5:
            raise CrossDistillError(f"no checksum known for {name}; cannot download it safely")
        fetch(urllib.parse.urljoin(base_url, name), target / name, md5=gz_md5[name], quiet=quiet)
    return target
