"""Where external data, teachers and caches live (never inside the repository)."""
from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "CROSSDISTILL_DATA"
CACHE_ENV = "CROSSDISTILL_CACHE"


def shared_data_dir() -> Path:
    """The shared data folder: $CROSSDISTILL_DATA, else ../shared/data next to the checkout (an
    installed package, which has no checkout, looks beside the current folder)."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    repo_root = Path(__file__).resolve().parents[2]
    if not (repo_root / "pyproject.toml").is_file():  # in site-packages: its parents mean nothing
        repo_root = Path.cwd()
    return repo_root.parent / "shared" / "data"


def cache_dir() -> Path:
    """Per-user cache for downloads and trained demo teachers ($CROSSDISTILL_CACHE or XDG)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "crossdistill"
