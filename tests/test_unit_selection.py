"""The lazy greedy OBS (solvers/unit_selection.py) against an eager reference that recomputes
every candidate's loss increase from scratch: same units removed in the same order."""
from __future__ import annotations

import pytest
import torch

from crossdistill.problem import QuadraticProblem
from crossdistill.solvers.base import LayerTask
from crossdistill.solvers.selection import select_obs
from crossdistill.solvers.unit_selection import Reader, select_units_obs


def _problem(gen: torch.Generator, d: int, out: int) -> QuadraticProblem:
    X = torch.randn(3 * d, d, generator=gen, dtype=torch.float64) * torch.linspace(0.3, 2.0, d, dtype=torch.float64)
    H = X.T @ X / X.shape[0] + 1e-3 * torch.eye(d, dtype=torch.float64)
    W = torch.randn(out, d, generator=gen, dtype=torch.float64)
    return QuadraticProblem(H=H, B=W @ H * 0.9, c=0.0, w_teacher=W)


def _optimal_loss(p: QuadraticProblem, columns: list[int]) -> float:
    if not columns:
        return p.c
    return p.loss(p.solve_on(torch.as_tensor(sorted(columns))))


def _eager_reference(readers: list[Reader], keep: int) -> list[int]:
    """Remove, one unit at a time, the unit whose removal raises the summed re-solved loss least."""
    n = len(readers[0].unit_columns)
    alive = list(range(n))

    def loss_without(removed: set[int]) -> float:
        total = 0.0
        for r in readers:
            gone = {c for u in removed for c in r.unit_columns[u]}
            total += _optimal_loss(r.problem, [c for c in range(r.problem.H.shape[0]) if c not in gone])
        return total

    removed: set[int] = set()
    while len(alive) > keep:
        u = min(alive, key=lambda v: loss_without(removed | {v}))
        removed.add(u)
        alive.remove(u)
    return alive


@pytest.mark.parametrize("flush", [None, 2, 5])
def test_lazy_obs_removes_what_the_eager_reference_removes(flush):
    gen = torch.Generator().manual_seed(3)
    n, s = 7, 2
    # Reader A: the units' columns interleaved with two columns of other channels (kept whole);
    # reader B: only the units' columns, in a different order.
    a_cols = [[2 * u + 1, 2 * u + 2] for u in range(n)]
    b_cols = [[n + u, u] for u in range(n)]
    readers = [Reader(_problem(gen, 2 * n + 2, 5), a_cols), Reader(_problem(gen, 2 * n, 3), b_cols)]
    for keep in (1, 3, 6):
        got = select_units_obs(readers, keep, flush_columns=flush).tolist()
        assert got == _eager_reference(readers, keep)


def test_units_on_a_few_of_many_columns_are_chosen_as_with_the_whole_inverse():
    # A DenseNet reader: the group feeds 12 of 48 columns, the rest stay free to compensate;
    # the state is kept on those 12 columns only and must still follow the eager reference.
    gen = torch.Generator().manual_seed(5)
    n, s = 6, 2
    cols = [[40 - 7 * u, 41 - 7 * u] for u in range(n)]
    readers = [Reader(_problem(gen, 48, 4), cols), Reader(_problem(gen, 2 * n, 3), [[u, n + u] for u in range(n)])]
    for keep in (1, 2, 4):
        assert select_units_obs(readers, keep).tolist() == _eager_reference(readers, keep)


def test_channel_obs_of_a_large_layer_matches_the_reference_order():
    # Enough removals to cross several lazy flushes at the default size.
    gen = torch.Generator().manual_seed(1)
    n, g = 40, 3
    p = _problem(gen, n * g, 6)
    units = [list(range(j * g, (j + 1) * g)) for j in range(n)]
    got = select_obs(p, LayerTask(name="x", group=g, keep=12), None).tolist()
    assert got == select_units_obs([Reader(p, units)], 12, flush_columns=g).tolist()
    assert got == _eager_reference([Reader(p, units)], 12)


@pytest.mark.parametrize("flush", [None, 3])
def test_each_step_of_the_removal_path_is_the_exact_loss_increase(flush):
    # The global budget compares these steps across groups: each must be the rise of the
    # re-solved loss when that unit goes, whatever the lazy state's flushes did before it.
    from crossdistill.solvers.unit_selection import removal_path

    gen = torch.Generator().manual_seed(11)
    n, g = 10, 3
    p = _problem(gen, n * g, 8)
    units = [list(range(j * g, (j + 1) * g)) for j in range(n)]
    order, steps = removal_path([Reader(p, units)], 7, flush_columns=flush)
    gone: list[int] = []
    before = _optimal_loss(p, list(range(n * g)))
    for u, step in zip(order, steps):
        gone += units[u]
        after = _optimal_loss(p, [c for c in range(n * g) if c not in gone])
        assert step == pytest.approx(after - before, rel=1e-7, abs=1e-9)
        before = after
