"""The generic checksummed downloader: fetch a URL only to a verified file, and unpack a tar
archive without letting its members escape the target folder.

Knows nothing about any data set; download.py holds the per-data-set URLs, checksums and
layouts and calls these.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from crossdistill.errors import CrossDistillError

_CHUNK = 1 << 20  # hash and copy in 1 MiB pieces: memory stays bounded for any file size


def _hash_file(path: Path, algo: str, *, gunzip: bool = False) -> str:
    h = hashlib.new(algo)
    opener = gzip.open if gunzip else open
    with opener(path, "rb") as fh:  # type: ignore[operator]
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _pick_checksum(sha256: str | None, md5: str | None) -> tuple[str, str]:
    if sha256 and md5:
        raise CrossDistillError("give either sha256 or md5, not both")
    if sha256:
        return "sha256", sha256.lower()
    if md5:
        return "md5", md5.lower()
    # Never download unverified data: a truncated or swapped file would train silently wrong.
    raise CrossDistillError("a checksum (sha256 or md5) is required to download a file")


def verify_checksum(path: str | Path, *, sha256: str | None = None, md5: str | None = None) -> bool:
    """True when the file exists and its checksum matches."""
    algo, expected = _pick_checksum(sha256, md5)
    path = Path(path)
    if not path.is_file():
        return False
    try:
        return _hash_file(path, algo) == expected
    except OSError as exc:
        raise CrossDistillError(f"{path}: cannot read ({exc})") from exc


def fetch(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    timeout: float = 60.0,
    quiet: bool = False,
) -> Path:
    """Download url to dest unless dest already has the expected checksum.

    The data go to a temporary file next to dest and are moved into place with os.replace only
    after the checksum matched, so dest is either absent or complete and correct, even when the
    process is killed mid-download or two processes download at once.
    """
    algo, expected = _pick_checksum(sha256, md5)
    dest = Path(dest)
    if dest.is_file() and _hash_file(dest, algo) == expected:
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CrossDistillError(f"cannot create folder {dest.parent} ({exc})") from exc
    if not quiet:
        print(f"downloading {url} -> {dest}", file=sys.stderr)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.new(algo)
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    while chunk := resp.read(_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                # ValueError: malformed URL; URLError covers HTTP errors and no network.
                raise CrossDistillError(
                    f"cannot download {url} ({exc}); place the file at {dest} by hand "
                    "or check the network"
                ) from exc
            out.flush()
            os.fsync(out.fileno())
        actual = h.hexdigest()
        if actual != expected:
            raise CrossDistillError(
                f"checksum mismatch for {url}: {algo} {actual}, expected {expected}; "
                "the download is corrupt or the file changed upstream (nothing was saved)"
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise CrossDistillError(f"{archive}: refusing unsafe path {name!r} in archive")
    if not (member.isfile() or member.isdir()):
        # Links and devices could point outside the target folder; the data sets have none.
        raise CrossDistillError(
            f"{archive}: refusing archive member {name!r} that is not a plain file or folder"
        )


def safe_extract(archive: str | Path, dest: str | Path) -> list[str]:
    """Extract a tar archive into dest, refusing absolute paths, '..' and links.

    All members are checked before anything is written, so a refused archive leaves no files.
    Returns the member names.
    """
    archive, dest = Path(archive), Path(dest)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                _check_member(m, archive)
            dest.mkdir(parents=True, exist_ok=True)
            if hasattr(tarfile, "data_filter"):
                # Defence in depth where the stdlib offers it (3.11.4+).
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - older Pythons
                tar.extractall(dest, members=members)
    except CrossDistillError:
        raise
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise CrossDistillError(f"{archive}: corrupt or unreadable archive ({exc})") from exc
    return [m.name for m in members]
