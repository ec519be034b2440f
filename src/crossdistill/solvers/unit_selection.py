"""Choosing the kept units of a channel group that several layers read (a residual stream, a
concatenation, a flatten into a Linear): each unit is a set of columns in each reader's weight
matrix, and the cost of dropping it is summed over the readers.

Greedy group OBS: under each reader's H, removing the columns S of a unit (the others
re-solved) raises that reader's loss by tr(W_S (H⁻¹)_SS⁻¹ W_Sᵀ); the unit with the least total
goes first, and every reader's H⁻¹ and W are updated as in OBS. With one reader whose units are
its channels this is the single-layer criterion `selection.select_obs`.

Why the updates are lazy: removing one unit of s columns is a rank-s change of the d×d H⁻¹
and of the re-solved W, which as eager updates stream both matrices through memory for every
removed unit (128 s for d = 4608). Each step only needs the s×s diagonal blocks of the alive
units (of H⁻¹ and of WᵀW) and the removed unit's s columns, so the rank-s factors are collected
(H⁻¹ − F Gᵀ, W − C Fᵀ) and applied as one matrix product every `d/12` columns or so, where the
CPU runs at its GEMM speed (tests/test_unit_selection.py checks it against the eager reference).
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


def _symmetric_inverse(H: torch.Tensor) -> torch.Tensor:
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) == 0:
        return torch.cholesky_inverse(L)  # symmetric as returned (one triangle, mirrored)
    Hinv = torch.linalg.inv(H)
    return (Hinv + Hinv.T) / 2


def _inverse_columns(H: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """H⁻¹[:, columns] by one factorisation and |columns| solves (d³/3 + 2d²·|columns|), not the
    whole inverse (d³)."""
    E = torch.zeros(H.shape[0], columns.numel(), dtype=H.dtype, device=H.device)
    E[columns, torch.arange(columns.numel(), device=H.device)] = 1.0
    L, info = torch.linalg.cholesky_ex(H)
    return torch.cholesky_solve(E, L) if int(info) == 0 else torch.linalg.solve(H, E)


class _ObsState:
    """One reader's greedy-OBS state on the columns its units feed (S): H⁻¹ and the re-solved W,
    both kept lazily as a base minus the low-rank corrections of the removals so far, and per
    unit the s×s diagonal blocks of H⁻¹ and of Q = WᵀW. A unit's cost is tr((H⁻¹_uu)⁻¹ Q_uu), so
    a step reads W once (the removed unit's s rows of Q, R = W_cᵀW) instead of gathering and
    multiplying all of W: on a 512-channel layer that is the difference between a few and tens
    of passes over 19 MB per step. Rows and columns outside S are never read: a DenseNet layer
    deciding its newest 12 channels (108 of ~4000 columns) factors H once instead of inverting it."""

    def __init__(self, reader: Reader, flush_columns: int | None = None) -> None:
        H = reader.problem.H
        sizes = {len(c) for c in reader.unit_columns}
        if len(sizes) != 1:
            raise CrossDistillError("the units of a channel group feed unequal column counts in one layer")
        idx = torch.as_tensor([list(c) for c in reader.unit_columns], dtype=torch.long, device=H.device)  # (n, s)
        S = torch.unique(idx.flatten())  # sorted
        if S.numel() == H.shape[0]:
            self.base = _symmetric_inverse(H)
            self.W0 = reader.problem.B @ self.base
        else:
            X = _inverse_columns(H, S)  # (d, |S|)
            self.base = (X[S] + X[S].T) / 2
            self.W0 = reader.problem.B @ X
            position = torch.full((H.shape[0],), -1, dtype=torch.long, device=H.device)
            position[S] = torch.arange(S.numel(), device=H.device)
            idx = position[idx]
        self.idx = idx
        s = self.idx.shape[1]
        d = self.base.shape[0]
        cap = max(flush_columns if flush_columns is not None else max(8 * s, d // 12), s)
        dtype, device = H.dtype, H.device
        # H⁻¹ = base − F Gᵀ (G = F K per removed unit: the correction P K Pᵀ kept as two factors,
        # which needs no factorisation of K) and W = W0 − Cw Fᵀ (W's correction runs along the
        # same columns P of H⁻¹).
        self.F = torch.zeros(d, cap, dtype=dtype, device=device)
        self.G = torch.zeros(d, cap, dtype=dtype, device=device)
        self.Cw = torch.zeros(self.W0.shape[0], cap, dtype=dtype, device=device)
        self.rank = 0
        self.dead = torch.zeros(d, dtype=torch.bool, device=device)
        self.eye = torch.eye(s, dtype=dtype, device=device)
        self._refresh_blocks()

    def _refresh_blocks(self) -> None:
        idx = self.idx
        self.blocks = self.base[idx[:, :, None], idx[:, None, :]]  # (n, s, s) of H⁻¹
        Wu = self.W0[:, idx]  # (out, n, s)
        self.qblocks = torch.einsum("onk,onl->nkl", Wu, Wu)  # (n, s, s) of WᵀW

    def costs(self, alive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per unit, the loss increase of removing it now (inf for removed units), and the
        inverses of the alive units' blocks (identity for removed ones)."""
        live = torch.nonzero(alive).flatten()
        inv_blocks = self.eye.expand(alive.shape[0], -1, -1).clone()
        inv_blocks[live] = torch.linalg.inv(self.blocks[live])
        cost = torch.full((alive.shape[0],), float("inf"), dtype=self.W0.dtype, device=self.W0.device)
        cost[live] = (inv_blocks[live] * self.qblocks[live]).sum((1, 2))
        return cost, inv_blocks

    def remove(self, u: int, inv_block: torch.Tensor) -> None:
        s = self.idx.shape[1]
        if self.rank + s > self.F.shape[1]:
            self._flush()
        cols = self.idx[u]
        r = self.rank
        P = self.base[:, cols] - self.F[:, :r] @ self.G[cols, :r].T  # (d, s): H⁻¹'s columns now
        P[self.dead] = 0.0
        Wc = self.W0[:, cols] - self.Cw[:, :r] @ self.F[cols, :r].T  # (out, s)
        R = Wc.T @ self.W0 - (Wc.T @ self.Cw[:, :r]) @ self.F[:, :r].T  # (s, d) = W_cᵀ W
        K = (inv_block + inv_block.T) / 2
        # H⁻¹ loses P K Pᵀ and W loses (W_c K) Pᵀ; each unit's blocks follow from P's rows of
        # that unit (A_v = P_v K) and from R.
        Pv = P[self.idx]  # (n, s, s)
        A = Pv @ K
        self.blocks -= A @ Pv.transpose(1, 2)
        X = A @ R[:, self.idx].permute(1, 0, 2)  # (n, s, s): A_v (W_cᵀ W_v)
        self.qblocks += A @ R[:, cols] @ A.transpose(1, 2) - X - X.transpose(1, 2)
        self.F[:, r : r + s] = P
        self.G[:, r : r + s] = P @ K
        self.Cw[:, r : r + s] = Wc @ K
        self.rank = r + s
        self.dead[cols] = True

    def _flush(self) -> None:
        # Dropping the removed columns here (compacting) saved flops but its copies cost more.
        r = self.rank
        self.base.addmm_(self.F[:, :r], self.G[:, :r].T, alpha=-1.0)
        self.base[self.dead] = 0.0
        self.base[:, self.dead] = 0.0
        self.W0.addmm_(self.Cw[:, :r], self.F[:, :r].T, alpha=-1.0)
        self.W0[:, self.dead] = 0.0
        self.F.zero_()
        self.G.zero_()
        self.Cw.zero_()
        self.rank = 0
        self._refresh_blocks()


def removal_path(readers: Sequence[Reader], n_remove: int, *,
                 flush_columns: int | None = None) -> tuple[list[int], list[float]]:
    """The first `n_remove` units of the greedy order and the summed loss increase of each step
    (exact for that step, the earlier removals re-solved): what a global budget compares across
    groups. `flush_columns`: removed columns collected before H⁻¹ is updated (speed only;
    about d/12 by default)."""
    states = [_ObsState(r, flush_columns) for r in readers]
    n = int(states[0].idx.shape[0])
    if not 0 <= n_remove < n:
        raise CrossDistillError(f"cannot remove {n_remove} of {n} channel units (one must stay)")
    device = states[0].base.device
    alive = torch.ones(n, dtype=torch.bool, device=device)
    order: list[int] = []
    steps: list[float] = []
    for _ in range(n_remove):
        total = torch.zeros(n, dtype=states[0].base.dtype, device=device)
        inverses = []
        for s in states:
            cost, inv_blocks = s.costs(alive)
            total += cost
            inverses.append(inv_blocks)
        u = int(torch.argmin(total))
        for s, inv_blocks in zip(states, inverses):
            s.remove(u, inv_blocks[u])
        alive[u] = False
        order.append(u)
        steps.append(float(total[u]))
    return order, steps


def select_units_obs(readers: Sequence[Reader], keep: int, *, flush_columns: int | None = None) -> torch.Tensor:
    """The `keep` units (sorted indices) whose removal order under the summed OBS cost comes last."""
    n = len(readers[0].unit_columns)
    if not 1 <= keep <= n:
        raise CrossDistillError(f"cannot keep {keep} of {n} channel units")
    order, _ = removal_path(readers, n - keep, flush_columns=flush_columns)
    gone = set(order)
    return torch.as_tensor([u for u in range(n) if u not in gone], dtype=torch.long, device="cpu")


def select_units_norm(readers: Sequence[Reader], keep: int) -> torch.Tensor:
    """Largest summed squared norm of the readers' teacher columns of each unit."""
    n = len(readers[0].unit_columns)
    scores = torch.zeros(n, dtype=torch.float64, device=readers[0].problem.w_teacher.device)
    for r in readers:
        w = r.problem.w_teacher.to(torch.float64)
        for u, cols in enumerate(r.unit_columns):
            scores[u] += w[:, list(cols)].pow(2).sum()
    return torch.sort(torch.topk(scores, keep).indices).values.cpu()
