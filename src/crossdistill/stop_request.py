"""A stop asked for by a signal (SIGTERM, SIGHUP), remembered beside the exception it raises.

The command line's handler raises SystemExit in the main thread; when the signal reached another
thread while the main one slept or waited, CPython runs that handler at the next check, which
may be inside a C extension that discards the exception (seen: a run stopped by SIGTERM went on
to write its result and exit 0, one time in four). The request stays here, and the output
folder's commit asks for it first: a stopped run never writes its result."""
from __future__ import annotations

_requested: list[int] = []


def request(code: int) -> None:
    """Record a stop with this exit status (the signal handler calls it before raising)."""
    _requested.append(code)


def requested() -> int | None:
    """The exit status of a stop asked for, if any."""
    return _requested[0] if _requested else None


def check() -> None:
    """Raise SystemExit with the status of a stop asked for (nothing when none was)."""
    if _requested:
        raise SystemExit(_requested[0])
