"""Where saved models live on disk and how their bytes are read and written (no model logic)."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable

import torch

from crossdistill.errors import CrossDistillError
from crossdistill.persistence.spec import CHECKSUM_FIELD, META_KEY, SavedModelInfo, parse_info

__all__ = [
    "DIR_CANDIDATES",
    "atomic_write",
    "check_checksum",
    "is_crossdistill_file",
    "read_header",
    "read_info",
    "read_tensors",
    "resolve_model_path",
    "temp_sibling",
    "tensors_checksum",
]

# What `load(DIR)` looks for: a compress/baseline run directory writes student.safetensors.
DIR_CANDIDATES = ("student.safetensors", "model.safetensors")


def temp_sibling(path: Path) -> Path:
    """An unused name beside `path`. Not created here, so the writer creates the file with the
    user's umask (mkstemp would make it private)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")


def remove_dead_siblings(path: Path) -> None:
    """Remove the temporary files of writers of `path` that died before their rename (SIGKILL):
    their pid, in the name (temp_sibling), no longer runs."""
    import re

    from crossdistill.outputs import dead_writers

    for p, _ in dead_writers(path.parent, rf"^\.{re.escape(path.name)}\.(\d+)-[0-9a-f]{{12}}\.tmp$"):
        p.unlink(missing_ok=True)


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Run `write(tmp)` on a name beside `path`, then rename it into place."""
    # A reader (or a crash) never sees half a weights file: write beside, then rename.
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_siblings(path)
    tmp = str(temp_sibling(path))
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def resolve_model_path(path: str | Path) -> Path:
    """The weights file of `path`: the file itself, or the model file inside a run directory."""
    if not isinstance(path, (str, os.PathLike)):
        raise CrossDistillError(f"a model's path must be a str or a Path, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        for cand in DIR_CANDIDATES:
            if (path / cand).is_file():
                return path / cand
        raise CrossDistillError(
            f"{path}: directory holds no saved model (expected {' or '.join(DIR_CANDIDATES)}, "
            "as written by `crossdistill compress` or crossdistill.save)"
        )
    if not path.exists():
        raise CrossDistillError(f"{path}: no such file or directory")
    if not path.is_file():
        raise CrossDistillError(f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise CrossDistillError(f"{path}: not readable (permission denied)")
    return path


def _unreadable(path: Path, exc: BaseException) -> CrossDistillError:
    # SafetensorError, OSError; a Rust panic surfaces as a BaseException: all mean a bad file.
    return CrossDistillError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}")


# Not a defect of the file: the user or the interpreter wants to stop.
_STOP = (KeyboardInterrupt, SystemExit, GeneratorExit)


def read_header(path: Path) -> dict[str, str]:
    """The metadata entries of a safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except _STOP:
        raise
    except BaseException as exc:
        raise _unreadable(path, exc) from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, by name; checked against the checksum saved with them."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except _STOP:
        raise
    except BaseException as exc:
        raise _unreadable(path, exc) from None
    check_checksum(path, tensors, meta)
    return tensors


def tensors_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors in name order: each one's name, dtype, shape and bytes."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_checksum(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Refuse tensors that differ from the checksum saved with them (files saved before the
    checksum existed have none and load as they are)."""
    import json

    try:
        doc = json.loads(meta[META_KEY]) if META_KEY in meta else {}
    except ValueError:
        return  # an unreadable document is reported by whoever parses it
    saved = doc.get(CHECKSUM_FIELD) if isinstance(doc, dict) else None
    if saved is not None and saved != tensors_checksum(tensors):
        raise CrossDistillError(f"{path}: its weights do not match the checksum saved with them: the file was changed or "
                                "damaged after it was written (a copy, a disk); save or copy it again")


def is_crossdistill_file(path: str | Path) -> bool:
    """True when `path` is a `.safetensors` file with a crossdistill model document."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        return META_KEY in read_header(path)
    except CrossDistillError:
        return False


def read_info(path: str | Path) -> SavedModelInfo:
    """The validated JSON document of a saved model (file or run directory), without its tensors."""
    path = resolve_model_path(path)
    meta = read_header(path)
    if META_KEY not in meta:
        raise CrossDistillError(
            f"{path}: not a model saved by crossdistill.save (no '{META_KEY}' metadata); "
            "plain weight files load with crossdistill.models.load_model(path, name)"
        )
    return parse_info(meta[META_KEY], str(path))
