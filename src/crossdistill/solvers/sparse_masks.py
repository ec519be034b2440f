"""Shared pieces of the unstructured-sparsity solvers: exact prune counts, masks from scores,
and the exact per-row re-solve of the quadratic on a fixed mask.

Masks are boolean, True = the weight is kept. Two patterns:
- 'layer': exactly round(s·out·in) weights of the layer are zero, anywhere (the paper's
  per-layer magnitude threshold);
- 'row': exactly round(s·in) zeros in every row (every output filter equally sparse).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from crossdistill.errors import CrossDistillError
from crossdistill.problem import QuadraticProblem

PATTERNS = ("layer", "row")


def check_sparsity(sparsity: float) -> float:
    """A ratio of zeros in [0, 1): 1 would leave an empty layer and a dead network."""
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise CrossDistillError(f"sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if not 0.0 <= s < 1.0:
        raise CrossDistillError(f"sparsity must lie in [0, 1) (fraction of zero weights), got {sparsity}")
    return s


def check_pattern(pattern: str) -> str:
    if pattern not in PATTERNS:
        raise CrossDistillError(f"sparsity pattern must be one of {list(PATTERNS)}, got {pattern!r}")
    return pattern


def task_sparsity(params: Mapping[str, Any]) -> tuple[float, str]:
    """(sparsity, pattern) of a LayerTask's params, validated."""
    if "sparsity" not in params:
        raise CrossDistillError("this solver needs a sparsity ratio (use the 'sparsity' compression method)")
    return check_sparsity(params["sparsity"]), check_pattern(params.get("pattern", "layer"))


def prune_count(n: int, sparsity: float) -> int:
    """Zeros among n weights; rounding, so 0.9 of 144 is 130, never more than n − 1 ... n."""
    return min(n, int(round(sparsity * n)))


def mask_from_scores(scores: torch.Tensor, n_prune: int, pattern: str) -> torch.Tensor:
    """Prune exactly the `n_prune` lowest scores (per row for 'row', per matrix for 'layer');
    ties broken by position, so the count is exact even with many equal scores."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if n_prune <= 0:
        return keep
    if pattern == "row":
        idx = torch.topk(scores, n_prune, dim=1, largest=False).indices
        keep.scatter_(1, idx, False)
    else:
        idx = torch.topk(scores.reshape(-1), n_prune, largest=False).indices
        keep.view(-1)[idx] = False
    return keep


def sparsity_mask(scores: torch.Tensor, sparsity: float, pattern: str) -> torch.Tensor:
    per = scores.shape[1] if pattern == "row" else scores.numel()
    return mask_from_scores(scores, prune_count(per, sparsity), pattern)


def solve_rows_on_mask(problem: QuadraticProblem, keep: torch.Tensor) -> torch.Tensor:
    """Exact minimiser with the zeros of `keep` fixed at zero. The loss is a sum over rows,
    Σ_i w_i H w_iᵀ − 2 b_i w_iᵀ, so each row is its own small problem W_i,S = B_i,S H_SS⁻¹."""
    H, B = problem.H, problem.B
    W = torch.zeros_like(B)
    # Rows with the same support share one factorisation (all of them at sparsity 0).
    supports: dict[bytes, list[int]] = {}
    keep_cpu = keep.to("cpu")
    for i in range(B.shape[0]):
        supports.setdefault(keep_cpu[i].numpy().tobytes(), []).append(i)
    for rows_list in supports.values():
        rows = torch.as_tensor(rows_list, dtype=torch.long)
        cols = torch.nonzero(keep_cpu[rows_list[0]]).flatten()
        if cols.numel() == 0:
            continue
        H_ss = H[cols][:, cols]
        rhs = B[rows][:, cols]
        L, info = torch.linalg.cholesky_ex(H_ss)
        if int(info) == 0:
            sol = torch.cholesky_solve(rhs.T, L).T
        else:
            sol = torch.linalg.lstsq(H_ss, rhs.T, driver="gelsd").solution.T
        W[rows[:, None], cols[None, :]] = sol
    return W


def measured_sparsity(W: torch.Tensor) -> float:
    """Fraction of exact zeros: what is really there, not what was asked for."""
    return float((W == 0).sum()) / max(1, W.numel())
