"""Results appear atomically or not at all, and never over an existing result without force."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from crossdistill.errors import CrossDistillError


def check_output_dir(out: str | Path, force: bool) -> Path:
    """Fail before any work is done if `out` exists and may not be replaced."""
    out = Path(out)
    if out.exists() and not force:
        raise CrossDistillError(f"output {out} already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise CrossDistillError(f"output {out} exists and is not a directory")
    return out


@contextmanager
def atomic_output_dir(out: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `out`; on success it becomes `out` in one rename."""
    out = check_output_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    # mkdtemp makes the folder private (0700); the result should get the usual permissions.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON through a temporary file so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")
    os.replace(tmp, path)


def json_default(obj: Any) -> Any:
    """`json.dumps(default=...)` for numpy scalars/arrays, torch tensors and paths."""
    import numpy as np

    # Duck-typed so that writing JSON never imports torch; a report may hold a loss tensor.
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):
        return obj.detach().cpu().tolist()
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
