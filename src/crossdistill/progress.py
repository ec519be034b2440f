"""Progress bars on stderr: live bars on a terminal, whole lines now and then in a log.

A redirected stderr (a batch job's log, `2> run.log`, a notebook's captured stream) is not a
terminal: tqdm's carriage-return redraws there pile up as thousands of updates on one line that
`tail`, `grep` and log viewers show as garbage. There every bar writes a plain line at most
every LOG_INTERVAL seconds, and its final count when it closes.
"""
from __future__ import annotations

import sys
from typing import Any, TextIO

__all__ = ["LOG_INTERVAL", "PROGRESS_DELAY", "LogLines", "progress_bar"]

# Seconds a phase runs before its bar appears: quick phases (and quick failures) print nothing.
PROGRESS_DELAY = 0.5

# Seconds between two lines of one bar in a log: often enough to see a long run is alive,
# seldom enough that a log stays readable (a ResNet-56 fine-tune writes a handful of lines).
LOG_INTERVAL = 15.0


class LogLines:
    """A stream for tqdm that turns each redraw into one whole line of the stream below."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        # tqdm writes "\r" + the bar padded with spaces to blank out a longer earlier bar; a
        # bar closing without leaving a line writes "\r" (and spaces) alone.
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:  # encoding, fileno: as the stream's
        return getattr(self.stream, name)


def _is_terminal(stream: Any) -> bool:
    # A Jupyter kernel's stream says it is no terminal, yet the notebook draws carriage returns
    # in place like one: its bars stay live.
    if type(stream).__module__.startswith("ipykernel"):
        return True
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or stand-in stream
        return False


def progress_bar(desc: str | None, total: int, unit: str = "it", *, delay: float | None = None,
                 **kwargs: Any) -> Any:
    """A tqdm bar on stderr (a silent stand-in when `desc` is None, as in quiet runs).

    On a terminal it redraws in place and vanishes when done; anywhere else it writes a line
    every LOG_INTERVAL seconds and keeps its last line, so a log shows how far each phase went.
    """
    from tqdm import tqdm

    stream = sys.stderr  # looked up now: callers (pytest, notebooks) replace it
    terminal = _is_terminal(stream)
    options: dict[str, Any] = dict(leave=not terminal, dynamic_ncols=terminal,
                                   delay=PROGRESS_DELAY if delay is None else delay)
    if not terminal:
        # maxinterval: tqdm's monitor thread redraws a bar that has not drawn for that long (10 s
        # by default, under LOG_INTERVAL), which wrote the same line twice.
        options.update(mininterval=LOG_INTERVAL, maxinterval=float("inf"), ncols=100)
    options.update(kwargs)
    return tqdm(total=total, desc=desc, unit=unit, file=stream if terminal else LogLines(stream),
                disable=desc is None, **options)
