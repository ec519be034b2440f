"""Channel index maps: how one channel index of a tensor becomes indices of another.

graph_trace installs these on Torch-Pruning's dependencies in place of its own maps (see the
docstring there for why). They are plain closures over the shapes read from the traced pass,
kept apart from the op classification (graph_ops) that chooses them, so that each can be read
and tested alone.
"""
from __future__ import annotations

from typing import Callable

Shape = tuple[int, ...]
IdxMap = Callable[[int], tuple[int, ...]]  # one channel index -> the indices it becomes


def _offset(k: int) -> IdxMap:
    return lambda i: (i + k,)


def _window(lo: int, hi: int) -> IdxMap:
    return lambda i: (i - lo,) if lo <= i < hi else ()


def _spread(s: int) -> IdxMap:  # channel -> its s features after a flatten
    return lambda i: tuple(range(i * s, (i + 1) * s))


def _gather(s: int) -> IdxMap:
    return lambda i: (i // s,)


def _table(t: dict[int, int]) -> IdxMap:
    return lambda i: (t[i],) if i in t else ()


def _either(paths: list[list[IdxMap]]) -> IdxMap:
    def run(i: int) -> tuple[int, ...]:
        out = []
        for path in paths:
            cur = [i]
            for fn in path:
                cur = [j for c in cur for j in fn(c)]
            out += cur
        return tuple(out)
    return run


def _stop(_: int) -> tuple[int, ...]:
    return ()


class DepMap:
    """Installed as a Dependency's index map: maps Torch-Pruning's (idx, root_idx) pairs."""

    def __init__(self, fns: list[IdxMap]) -> None:
        self.fns = fns

    def __call__(self, idxs: list) -> list:
        out = list(idxs)
        for fn in self.fns:
            out = [i._replace(idx=j) for i in out for j in fn(i.idx)]
        seen: set = set()  # many-to-one maps (a flatten, backwards) repeat pairs
        return [i for i in out if not ((i.idx, i.root_idx) in seen or seen.add((i.idx, i.root_idx)))]
