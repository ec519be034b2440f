"""Results appear atomically or not at all, never over an existing result without force, and
never two runs into one output.

A command that writes `--out` first claims it (`output_lock`): an exclusive lock on a file
beside it (`.NAME.lock`), taken before any work, so a second run on the same `--out` fails at
once with a message instead of silently replacing the first one's result at the end. The lock
is a kernel lock (flock): a run killed with SIGKILL releases it by dying, and the next run
cleans the temporary folders that dead runs left (their pid is in the name).
`atomic_output_dir` adds the folder: a temporary one beside `out`, created at the claim (so an
unwritable place fails before the work), renamed into place when the work succeeded.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from crossdistill import stop_request
from crossdistill.errors import CrossDistillError

try:  # POSIX; elsewhere runs are not locked against each other (the checks below still apply)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


def check_output_dir(out: str | Path, force: bool) -> Path:
    """Fail if `out` exists and may not be replaced (a check without a claim; see output_lock)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CrossDistillError(f"output {out} exists and is not a directory (--force replaces folders only)")
    if out.exists() and not force:
        raise CrossDistillError(f"output {out} already exists; pass --force to replace it")
    return out


def _why_unwritable(out: Path, exc: OSError) -> str:
    """The reason in the user's terms: which part of their path is in the way."""
    if isinstance(exc, (NotADirectoryError, FileExistsError)):
        for anc in [out, *out.parents]:
            if anc.exists() and not anc.is_dir():
                return f"{anc} is a file, not a folder"
    if exc.errno in (errno.EACCES, errno.EPERM):
        # Name the user's folder, not the lock or temporary name we tried to create in it.
        where = next((a for a in [out.parent, *out.parent.parents] if a.exists()), out.parent)
        return f"permission denied in {where}"
    if exc.errno == errno.EROFS:
        return "read-only file system"
    return exc.strerror or str(exc)


def _unwritable(out: Path, exc: OSError) -> CrossDistillError:
    return CrossDistillError(f"cannot write {out}: {_why_unwritable(out, exc)}")


def _lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


def _acquire(lock: Path, out: Path, option: str = "--out") -> int:
    """An fd holding an exclusive flock on `lock` (created if absent)."""
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError as exc:
            try:  # another user's stale lock file: flock works on a read-only descriptor too
                fd = os.open(lock, os.O_RDONLY)
            except OSError:
                raise _unwritable(out, exc) from None
        except OSError as exc:
            raise _unwritable(out, exc) from None
        if fcntl is None:  # pragma: no cover
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise CrossDistillError(f"{out} is being written by another crossdistill run{who}; "
                                    f"wait for it to finish or choose another {option}") from None
        # The holder before us unlinks the file when it is done: if that happened between our
        # open and our lock, we hold a lock nobody else can see; start again on the new file.
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            try:  # the holder's pid, for the message another run shows
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError:
                pass
            return fd
        os.close(fd)


# The errors of a disk that cannot take more, whatever file met them.
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextmanager
def output_lock(out: str | Path, force: bool = False, option: str = "--out") -> Iterator[Path]:
    """Claim `out` (a file or a folder) for this process until the block ends.

    Raises CrossDistillError before any work when another run holds the claim, when `out`
    exists and `force` is not given, or when its folder cannot be written (naming `out`)."""
    out = Path(out)
    target = Path(os.path.abspath(out))  # `runs/x/`, `./runs/x` and `/abs/runs/x` share one lock
    made = [p for p in (target.parent, *target.parent.parents) if not p.exists()]  # deepest first
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(out, exc) from None
    # The lock sits beside what a symlink points to: a database named through a link and by its
    # own path is one database, claimed once.
    real = Path(os.path.realpath(target))
    lock = _lock_path(real if real.exists() else target)
    fd = _acquire(lock, out, option)
    try:
        if (target.exists() or target.is_symlink()) and not force:
            raise CrossDistillError(f"output {out} already exists; pass --force to replace it")
        yield target
    finally:
        # Unlink while still holding the lock: a waiting run then sees the inode change (_acquire).
        try:
            lock.unlink()
        except OSError:
            pass
        os.close(fd)
        if not (target.exists() or target.is_symlink()):
            for p in made:  # the folders made for an output that never came: left as they were
                try:
                    p.rmdir()
                except OSError:
                    break  # not empty (another run's, or files put there meanwhile)


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a folder named with our pid before we made any: its process is gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def dead_writers(folder: str | Path, pattern: str) -> list[tuple[Path, "re.Match[str]"]]:
    """The entries of `folder` whose name matches `pattern` (its first group: the pid of the
    process that made it) and whose process no longer runs: what a run killed outright left."""
    compiled = re.compile(pattern)
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return []
    found = []
    for p in entries:
        m = compiled.match(p.name)
        if m and not pid_alive(int(m.group(1))):
            found.append((p, m))
    return found


def clean_stale(target: Path) -> list[Path]:
    """Remove the temporary folders of dead runs beside `target` (called with the claim held).
    A `.old` folder of a run killed between its two renames is its previous result: put back
    when `target` is missing, else removed. Returns what was removed or restored."""
    done = []
    for p, _ in dead_writers(target.parent, rf"^\.{re.escape(target.name)}\.(?:tmp|old)-(\d+)(?:-|$)"):
        if p.name.startswith(f".{target.name}.old-") and not target.exists():
            os.replace(p, target)
        else:
            shutil.rmtree(p, ignore_errors=True)
        done.append(p)
    return done


@contextmanager
def atomic_output_dir(out: str | Path, force: bool = False) -> Iterator[Path]:
    """Claim `out`, yield a temporary folder beside it, and on success rename it to `out` in one
    step (replacing the old `out` only with `force`). Do the work inside the block: the claim
    and the temporary folder exist before it starts, so a clash or an unwritable `out` costs
    nothing; on an exception the temporary folder is removed and `out` is left as it was."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        # Before the claim, whose own refusal would suggest --force, which replaces folders only.
        raise CrossDistillError(f"output {out} exists and is not a directory (--force replaces folders only)")
    with output_lock(out, force) as target:
        if target.exists() and not target.is_dir():
            raise CrossDistillError(f"output {out} exists and is not a directory")
        if target.exists():
            check_replaceable(target, out)
        clean_stale(target)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
        except OSError as exc:
            raise _unwritable(out, exc) from None
        # mkdtemp makes the folder private (0700); the result should get the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        try:
            yield tmp
            stop_request.check()  # a stop whose exception was lost on the way: nothing is committed
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, CrossDistillError) and str(tmp) in str(exc):
                # A writer's own message (a full disk under save) names our temporary folder: the
                # user knows --out.
                raise CrossDistillError(f"{str(exc).replace(str(tmp), str(out))}; nothing was written") from None
            name = str(getattr(exc, "filename", None) or "")
            if isinstance(exc, OSError) and not name and exc.errno in DISK_ERRNOS:
                # A full disk met by a write or close (json, a plot's PNG), which name no file.
                raise CrossDistillError(f"a write failed while making {out}: {exc.strerror or exc}; nothing was "
                                        "written there") from exc
            if isinstance(exc, OSError) and name.startswith(str(tmp)):
                # Disk full, quota: name the user's --out, not our temporary folder inside it.
                inside = Path(name).relative_to(tmp)
                raise CrossDistillError(f"cannot write {out}: {exc.strerror or exc} (writing {inside}); "
                                        "nothing was written") from exc
            raise
        _commit(tmp, target, out, force)


# Every folder a command writes holds this file: what --force may replace is recognised by it.
RESULT_MARK = "report.json"


def check_replaceable(target: Path, out: Path) -> None:
    """Refuse to replace (with --force) a folder that is not a result of ours: --force removes the
    whole folder, and `--out .` or a mistyped path would take the user's files with it. An empty
    folder or one holding RESULT_MARK may go; the current folder, its parents and the home folder
    never."""
    here = Path.cwd().resolve()
    resolved = target.resolve()
    where = ("the current folder" if resolved == here else "a folder above the current one"
             if resolved in here.parents else "the home folder" if resolved == Path.home().resolve() else None)
    if where:
        raise CrossDistillError(f"output {out} is {where}: --force would remove it with everything in it; give a "
                                "new folder for the results")
    try:
        entries = [p.name for p in target.iterdir()]
    except OSError as exc:
        raise _unwritable(out, exc) from None
    if entries and RESULT_MARK not in entries:
        shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
        raise CrossDistillError(f"output {out} exists and is not a crossdistill result (it holds {shown} and no "
                                f"{RESULT_MARK}): --force replaces only result folders; give a new folder, or remove "
                                "this one yourself")


def _commit(tmp: Path, target: Path, out: Path, force: bool) -> None:
    if target.exists() and not force:
        # Only a writer that does not take the claim (another program, a person) gets here.
        kept = target.with_name(f"{target.name}.conflict-{os.getpid()}")
        os.replace(tmp, kept)
        raise CrossDistillError(f"{out} was created by something else while this run worked; it was left "
                                f"alone and this run's result is in {kept}")
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON through a temporary file so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    text = json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n"
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half file behind
        raise


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
