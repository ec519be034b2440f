"""Which version of the rules that follow channels through ops a trace uses.

A saved student of a user's model records the ids of the channel groups it kept units of, and
loading re-traces the freshly built model to find them again (persistence/codecs/slim.py). Group
ids are counted over the traced groups, so a rule that follows channels further (through an op
that stopped a group before) can merge groups and move every id after them: each slim record
therefore says which rules it was traced with (`trace`), and loading replays it under those.

  1  until 2026-12-02: a 3-d tensor's channel axis is its last in a model no layer of which
     reads a 3-d tensor; a softmax and a pixel (un)shuffle stop a group.
  2  a 3-d tensor's channel axis comes from the layers it comes from in such a model (dim 1
     after x.flatten(2) of a conv's output); a softmax over another dim than the channels and
     PixelShuffle/PixelUnshuffle are followed.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

TRACE_RULES = 2
LEGACY_RULES = 1  # what a record without `trace` was traced with

_current: ContextVar[int] = ContextVar("crossdistill_trace_rules", default=TRACE_RULES)


def current_rules() -> int:
    return _current.get()


@contextmanager
def trace_rules(version: int) -> Iterator[None]:
    """Trace under the rules of `version` (1..TRACE_RULES) inside the block."""
    if not LEGACY_RULES <= version <= TRACE_RULES:
        raise ValueError(f"trace rules {version} are not known (1..{TRACE_RULES})")
    token = _current.set(version)
    try:
        yield
    finally:
        _current.reset(token)
