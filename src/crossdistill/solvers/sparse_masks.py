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
from crossdistill.params import check_setting
from crossdistill.linalg import solve_right_on_mask, uses_cg
from crossdistill.problem import QuadraticProblem

PATTERNS = ("layer", "row")


def check_sparsity(sparsity: float) -> float:
    """A ratio of zeros in [0, 1): 1 would leave an empty layer and a dead network."""
    return float(check_setting("sparsity", sparsity, low=0, high=1, high_open=True))


def check_pattern(pattern: str) -> str:
    return check_setting("sparsity pattern", pattern, choices=PATTERNS)


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


def solve_rows_on_mask(problem: QuadraticProblem, keep: torch.Tensor,
                       start: torch.Tensor | None = None) -> torch.Tensor:
    """Exact minimiser with the zeros of `keep` fixed at zero: every row solved on its own
    support, W_i,S = B_i,S H_SS⁻¹ (crossdistill.linalg.solve_right_on_mask; `start`, a near
    solution, only shortens its iterations on wide layers)."""
    inverse = problem.inverse if uses_cg(keep) else None
    return solve_right_on_mask(problem.B, problem.H, keep, start=start, inverse=inverse)


def measured_sparsity(W: torch.Tensor) -> float:
    """Fraction of exact zeros: what is really there, not what was asked for."""
    return float((W == 0).sum()) / max(1, W.numel())
