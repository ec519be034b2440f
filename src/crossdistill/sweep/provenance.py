"""Which code made a result: the git commit of the checkout the library runs from, and its version.

Both are recorded in every sweep row so that a number in a report can be traced to the code that
produced it. The commit says nothing about uncommitted changes; it is the checkout's HEAD.
"""
from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

_SHORT = 12  # enough to stay unambiguous in a repository of any realistic size
_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")  # sha1 or sha256 object names


def library_version() -> str:
    """`crossdistill.__version__`."""
    from crossdistill._version import __version__

    return __version__


def checkout_root() -> Path | None:
    """The repository the package is imported from, if it runs from a source checkout (src/ layout).

    Only that exact folder counts, never a parent: a copy installed into a virtual environment
    that happens to sit inside some checkout must not claim that checkout's commit.
    """
    package = Path(__file__).resolve().parents[1]  # src/crossdistill
    if package.parent.name != "src":
        return None
    root = package.parent.parent
    return root if (root / ".git").exists() else None


def _git_dir(root: Path) -> Path | None:
    dot_git = root / ".git"
    if dot_git.is_dir():
        return dot_git
    # A worktree or submodule: .git is a file "gitdir: <path>".
    text = dot_git.read_text().strip()
    if not text.startswith("gitdir:"):
        return None
    path = Path(text[len("gitdir:"):].strip())
    return path if path.is_absolute() else (root / path).resolve()


def _read_ref(git_dir: Path, ref: str) -> str | None:
    # Loose refs live in the worktree's own folder or in the shared one ("commondir").
    dirs = [git_dir]
    common = git_dir / "commondir"
    if common.is_file():
        c = Path(common.read_text().strip())
        dirs.append(c if c.is_absolute() else (git_dir / c).resolve())
    for d in dirs:
        loose = d / ref
        if loose.is_file():
            return loose.read_text().strip()
    for d in dirs:
        packed = d / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref:
                    return parts[0]
    return None


def _commit_from_files(root: Path) -> str | None:
    git_dir = _git_dir(root)
    if git_dir is None:
        return None
    head = (git_dir / "HEAD").read_text().strip()
    sha = _read_ref(git_dir, head[4:].strip()) if head.startswith("ref:") else head
    return sha if sha and _SHA.match(sha) else None


def _commit_from_git(root: Path) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = done.stdout.strip()
    return sha if done.returncode == 0 and _SHA.match(sha) else None


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """Short hash of HEAD of the checkout the library runs from; None outside a git checkout.

    Read from .git directly (no process per call, works without git installed); `git rev-parse`
    only for layouts the files do not cover (e.g. the reftable format, a branch without commits).
    Cached: the checkout's HEAD is taken once per process, like the code that was imported.
    """
    root = checkout_root()
    if root is None:
        return None
    try:
        sha = _commit_from_files(root)
    except OSError:
        sha = None
    sha = sha or _commit_from_git(root)
    return sha[:_SHORT] if sha else None
