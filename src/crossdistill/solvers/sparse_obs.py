"""Second-order unstructured pruning under an objective's metric: the SparseGPT column sweep
(Frantar & Alistarh 2023), plus an exact re-solve of each row on the chosen mask.

Every objective's layer loss is tr((W − W*) H (W − W*)ᵀ) + const with W* = B H⁻¹, so pruning
is "the best sparse W around W* in the metric H" — exactly the problem SparseGPT solves for
plain layer reconstruction (where W* is the dense weight and H = X Xᵀ). The sweep starts from W*
and goes over the columns left to right. In each block of columns it first picks the mask by
the OBS saliency w² / [H_F⁻¹]_jj (F = the columns not yet processed), then, column by column,
fixes the column (zeros where pruned) and spreads the error over the columns to its right with
the optimal OBS update. The needed rows of H_F⁻¹ for the shrinking set F are the rows of the
upper Cholesky factor U of H⁻¹ (scaled by 1/U_jj), so one factorisation serves the whole sweep;
updates inside a block are applied at once to the rest of the matrix ("lazy batch").

The sweep never revisits a column, so its weights are only approximately optimal for its own
mask; `refine` re-solves every row on the mask (rows are independent problems; exactly, or on
wide layers with denser masks to 1e-5 of the mask's cost), which can only lower the loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from crossdistill.linalg import inverse_cholesky_upper
from crossdistill.params import param
from crossdistill.problem import QuadraticProblem
from crossdistill.solvers.base import LayerOutcome, LayerSolver, LayerTask
from crossdistill.solvers.sparse_masks import (
    mask_from_scores,
    measured_sparsity,
    prune_count,
    solve_rows_on_mask,
    sparsity_mask,
    task_sparsity,
)


def sparsegpt_sweep(
    problem: QuadraticProblem,
    sparsity: float,
    pattern: str = "layer",
    *,
    blocksize: int = 128,
    fixed_keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (W, keep mask). The number of zeros is exact: per row for 'row', per layer for
    'layer' (each block of columns takes its share, as SparseGPT's per-block mask selection).
    With `fixed_keep` the mask is given and only the weights are swept (for tests)."""
    H = problem.H
    W = problem.solve().clone()  # W* = B H⁻¹, the point the sweep approximates
    out, d = W.shape
    U = inverse_cholesky_upper(H, context="sparse solve", inverse=problem.inverse)
    keep = torch.ones_like(W, dtype=torch.bool)
    per = d if pattern == "row" else out * d
    for i1 in range(0, d, blocksize):
        i2 = min(i1 + blocksize, d)
        n = i2 - i1
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        # Cumulative rounding, so block shares add up to the exact total.
        n_prune = int(round(sparsity * per * i2 / d)) - int(round(sparsity * per * i1 / d))
        saliency = W1.pow(2) / torch.diagonal(U1).pow(2)[None, :]
        if fixed_keep is None:
            keep1 = mask_from_scores(saliency, n_prune, pattern)
        else:
            keep1 = fixed_keep[:, i1:i2].bool()
        for j in range(n):
            w = W1[:, j]
            q = torch.where(keep1[:, j], w, torch.zeros_like(w))
            err = (w - q) / U1[j, j]
            # OBS update of the columns to the right within the block.
            W1[:, j:] -= err[:, None] * U1[j, j:][None, :]
            W1[:, j] = q  # exact zeros, not round-off
            Err1[:, j] = err
        W[:, i1:i2] = W1
        keep[:, i1:i2] = keep1
        # Lazy batch: the block's accumulated updates, applied to everything to its right at once.
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    W[~keep] = 0.0
    return W, keep


def obc_masks(
    problem: QuadraticProblem,
    sparsity: float,
    pattern: str = "layer",
    *,
    max_bytes: int = 1 << 28,
) -> torch.Tensor:
    """Greedy Optimal Brain Surgeon, one weight at a time, exactly, in every row (the OBC scheme
    of Frantar & Alistarh 2022): each row removes the weight whose removal, with the row's other
    weights re-solved, raises the loss least, w_j² / [H_S⁻¹]_jj over its current support S, then
    updates the row and H_S⁻¹ (rank-one downdate). Unlike the sweep, every removal sees the
    exact inverse of its row's support, which matters at high sparsity.

    'row' stops each row at its prune count; 'layer' records every row's loss increments and
    picks the cheapest prefix of each row's removal order under the layer's total count. Cost
    O(out·d³) time and out·d² memory per layer (rows are processed in chunks of `max_bytes`):
    fine for CIFAR-sized convs, slow for d in the thousands — use `sparsegpt` there."""
    H = problem.H
    out, d = problem.B.shape
    U = inverse_cholesky_upper(H, context="sparse solve")
    Hinv0 = U.T @ U
    W_all = problem.B @ Hinv0
    steps = prune_count(d, sparsity) if pattern == "row" else d
    order = torch.zeros(out, steps, dtype=torch.long, device=H.device)
    incr = torch.zeros(out, steps, dtype=H.dtype, device=H.device)
    chunk = max(1, int(max_bytes // (d * d * H.element_size())))
    for r0 in range(0, out, chunk):
        r1 = min(out, r0 + chunk)
        o, i = _obc_rows(W_all[r0:r1], Hinv0, steps)
        order[r0:r1], incr[r0:r1] = o, i
    keep = torch.ones(out, d, dtype=torch.bool, device=H.device)
    if pattern == "row":
        keep.scatter_(1, order, False)
        return keep
    total = prune_count(out * d, sparsity)
    if total == 0:
        return keep
    # Greedy increments need not grow along a row; their running max does, so the globally
    # cheapest `total` of them always form a prefix of each row's removal order.
    mono = torch.cummax(incr.nan_to_num(nan=float("inf")), dim=1).values
    flat = mono.reshape(-1)
    chosen = torch.topk(flat, total, largest=False).indices
    counts = torch.bincount(chosen // steps, minlength=out)
    for r in range(out):
        keep[r, order[r, : int(counts[r])]] = False
    return keep


# Rank-one downdates of the rows' inverses gathered before one batched product (see _obc_rows).
OBC_LAZY_RANK = 32


def _obc_rows(W: torch.Tensor, Hinv0: torch.Tensor, steps: int,
              rank: int = OBC_LAZY_RANK) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy OBS removals for a batch of rows: (removal order, loss increment per removal).

    Every row loses one weight per step, so all rows keep the same number of live columns; the
    per-row inverses are compacted to the live columns whenever an eighth of them are dead,
    which makes the sweep about three times cheaper than updating full d×d inverses. Each
    step's rank-one downdate of H_S⁻¹ is kept as a column of F (H_S⁻¹ = base − F Fᵀ) and applied
    to `base` once every `rank` steps as one batched product: a step then reads the row it
    needs in O(a·rank) instead of rewriting a×a numbers (memory-bound), and the diagonal is
    kept up to date on the side."""
    n, d = W.shape
    W = W.clone()
    base = Hinv0.expand(n, d, d).clone()
    F = W.new_zeros(n, d, rank)
    k = 0  # downdates held in F
    diag = torch.diagonal(base, dim1=1, dim2=2).clone()
    device = W.device
    cols = torch.arange(d, device=device).expand(n, d).clone()  # original column of each compact position
    alive = torch.ones(n, d, dtype=torch.bool, device=device)
    order = torch.zeros(n, steps, dtype=torch.long, device=device)
    incr = torch.zeros(n, steps, dtype=W.dtype, device=device)
    ar = torch.arange(n, device=device)
    dead = 0

    def flush() -> None:
        nonlocal k, diag
        if k:
            base.baddbmm_(F[:, :, :k], F[:, :, :k].transpose(1, 2), alpha=-1.0)
            F[:, :, :k] = 0.0
            k = 0
            diag = torch.diagonal(base, dim1=1, dim2=2).clone()

    for t in range(steps):
        score = W.pow(2) / diag
        score[~alive] = float("inf")
        j = torch.argmin(score, dim=1)
        incr[:, t] = score[ar, j]
        order[:, t] = cols[ar, j]
        h_jj = diag[ar, j].clone()
        row = base[ar, j, :]  # (n, a): row j of each row's H_S⁻¹, the pending downdates subtracted
        if k:
            row = row - torch.bmm(F[ar, j, :k].unsqueeze(1), F[:, :, :k].transpose(1, 2)).squeeze(1)
        # OBS: remove w_j, re-solve the rest of the row; then the rank-one downdate of H_S⁻¹.
        W.sub_((W[ar, j] / h_jj)[:, None] * row)
        W[ar, j] = 0.0
        f = row / h_jj.sqrt()[:, None]
        F[:, :, k] = f
        k += 1
        diag = diag - f * f
        alive[ar, j] = False
        dead += 1
        if k == rank:
            flush()
        a = base.shape[1]
        if dead * 8 >= a and t + 1 < steps:
            flush()
            live = torch.nonzero(alive)[:, 1].reshape(n, a - dead)  # row-major: per-row live positions
            W = W.gather(1, live)
            cols = cols.gather(1, live)
            # One gather of the live block from the flattened inverses: no (a-dead)×a intermediate.
            flat = (live[:, :, None] * a + live[:, None, :]).reshape(n, -1)
            base = base.reshape(n, a * a).gather(1, flat).reshape(n, a - dead, a - dead)
            diag = torch.diagonal(base, dim1=1, dim2=2).clone()
            F = W.new_zeros(n, a - dead, rank)
            alive = torch.ones(n, a - dead, dtype=torch.bool, device=device)
            dead = 0
    return order, incr


@dataclass
class SparseGPT(LayerSolver):
    name = "sparsegpt"

    blocksize: int = param(128, "columns per block of the sweep", low=1)
    refine: bool = param(False, "re-solve every row exactly on the sweep's mask")

    def solve(self, problem: QuadraticProblem, task: LayerTask, student: nn.Module) -> LayerOutcome:
        sparsity, pattern = task_sparsity(task.params)
        W, keep = sparsegpt_sweep(problem, sparsity, pattern, blocksize=self.blocksize)
        info = {}
        if self.refine:
            info["loss_sweep"] = problem.loss(W)
            W = solve_rows_on_mask(problem, keep, start=W)
        info["sparsity_solved"] = measured_sparsity(W)
        return LayerOutcome(weight=W, info=info)



MASK_CHOICES = ("auto", "obc", "sparsegpt", "magnitude")
# 'auto' takes OBC masks while out·d³ stays under this (about 20 s for one layer at one CPU thread:
# a CIFAR ResNet layer, out 64, d 576, is 1.2e10 and took ≈ 1 s) and the sweep's mask above it
# (a VGG-16 layer, 512 × 4608³ ≈ 5e13, would take over an hour with OBC).
OBC_AUTO_LIMIT = 2e11


@dataclass
class ClosedFormSparse(LayerSolver):
    """A mask, then every row solved on it: the best weights for that mask (exactly on narrow
    layers and sparse masks; on wide layers with denser masks by conjugate gradients to within
    1e-5 of what the mask costs, crossdistill.linalg.CG_LOSS_TOL and uses_cg).
    `sparse_mask` picks the mask: 'obc' (greedy exact OBS per row; best, O(out·d³)),
    'sparsegpt' (the column sweep's mask; fast at any size), 'magnitude' (the teacher's), or
    'auto' (the default): 'obc' where out·d³ ≤ OBC_AUTO_LIMIT, else 'sparsegpt'. Each layer's
    record says which mask it got."""

    name = "closed-form"

    sparse_mask: str = param("auto", "the mask, then every row solved exactly on it: obc "
                             "(greedy exact OBS per row), sparsegpt (the sweep's mask), magnitude, or auto "
                             "(obc where out*d^3 <= 2e11, else sparsegpt)", choices=MASK_CHOICES)
    blocksize: int = param(128, "columns per block of the sweep", low=1, show=False)

    def mask_for(self, problem: QuadraticProblem) -> str:
        if self.sparse_mask != "auto":
            return self.sparse_mask
        out, d = problem.B.shape
        return "obc" if out * float(d) ** 3 <= OBC_AUTO_LIMIT else "sparsegpt"

    def solve(self, problem: QuadraticProblem, task: LayerTask, student: nn.Module) -> LayerOutcome:
        sparsity, pattern = task_sparsity(task.params)
        mask = self.mask_for(problem)
        start = None
        if mask == "obc":
            keep = obc_masks(problem, sparsity, pattern)
        elif mask == "sparsegpt":
            start, keep = sparsegpt_sweep(problem, sparsity, pattern, blocksize=self.blocksize)
        else:
            keep = sparsity_mask(problem.w_teacher.abs(), sparsity, pattern)
        W = solve_rows_on_mask(problem, keep, start=start)
        return LayerOutcome(weight=W, info={"sparsity_solved": measured_sparsity(W), "mask": mask})

