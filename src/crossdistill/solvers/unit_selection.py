"""Choosing the kept units of a channel group that several layers read (a residual stream, a
concatenation, a flatten into a Linear): each unit is a set of columns in each reader's weight
matrix, and the cost of dropping it is summed over the readers.

The greedy group OBS of `selection.select_obs` generalises directly: under each reader's H,
removing the columns S of a unit (the others re-solved) raises that reader's loss by
tr(W_S (H⁻¹)_SS⁻¹ W_Sᵀ); the unit with the least total goes first, and every reader's H⁻¹ and W
are updated as in OBS. With one reader whose units are its channels this is `select_obs`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from crossdistill.errors import CrossDistillError
from crossdistill.problem import QuadraticProblem


@dataclass
class Reader:
    """One layer reading a group: its problem (on its live columns) and, per unit, the columns
    (positions in that problem) that the unit feeds."""

    problem: QuadraticProblem
    unit_columns: Sequence[Sequence[int]]


class _ObsState:
    def __init__(self, reader: Reader) -> None:
        H = reader.problem.H
        Hinv = torch.linalg.inv(H)
        self.Hinv = (Hinv + Hinv.T) / 2
        self.W = reader.problem.B @ self.Hinv
        sizes = {len(c) for c in reader.unit_columns}
        if len(sizes) != 1:
            raise CrossDistillError("the units of a channel group feed unequal column counts in one layer")
        self.idx = torch.as_tensor([list(c) for c in reader.unit_columns], dtype=torch.long)  # (n, s)
        self.eye = torch.eye(self.idx.shape[1], dtype=H.dtype)

    def costs(self, alive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.idx
        blocks = self.Hinv[idx[:, :, None], idx[:, None, :]]  # (n, s, s)
        blocks[~alive] = self.eye
        inv_blocks = torch.linalg.inv(blocks)
        Wg = self.W[:, idx]  # (out, n, s)
        return torch.einsum("oni,nij,onj->n", Wg, inv_blocks, Wg), inv_blocks

    def remove(self, u: int, inv_block: torch.Tensor) -> None:
        cols = self.idx[u]
        coupling = inv_block @ self.Hinv[cols, :]
        self.W = self.W - self.W[:, cols] @ coupling
        self.Hinv = self.Hinv - self.Hinv[:, cols] @ coupling
        self.W[:, cols] = 0.0
        self.Hinv[:, cols] = 0.0
        self.Hinv[cols, :] = 0.0


def select_units_obs(readers: Sequence[Reader], keep: int) -> torch.Tensor:
    """The `keep` units (sorted indices) whose removal order under the summed OBS cost comes last."""
    states = [_ObsState(r) for r in readers]
    n = int(states[0].idx.shape[0])
    if not 1 <= keep <= n:
        raise CrossDistillError(f"cannot keep {keep} of {n} channel units")
    alive = torch.ones(n, dtype=torch.bool)
    for _ in range(n - keep):
        total = torch.zeros(n, dtype=states[0].Hinv.dtype)
        inverses = []
        for s in states:
            cost, inv_blocks = s.costs(alive)
            total += cost
            inverses.append(inv_blocks)
        total[~alive] = float("inf")
        u = int(torch.argmin(total))
        for s, inv_blocks in zip(states, inverses):
            s.remove(u, inv_blocks[u])
        alive[u] = False
    return torch.nonzero(alive).flatten()


def select_units_norm(readers: Sequence[Reader], keep: int) -> torch.Tensor:
    """Largest summed squared norm of the readers' teacher columns of each unit."""
    n = len(readers[0].unit_columns)
    scores = torch.zeros(n, dtype=torch.float64)
    for r in readers:
        w = r.problem.w_teacher.to(torch.float64)
        for u, cols in enumerate(r.unit_columns):
            scores[u] += w[:, list(cols)].pow(2).sum()
    return torch.sort(torch.topk(scores, keep).indices).values
