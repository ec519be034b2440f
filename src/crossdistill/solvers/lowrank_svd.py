"""Low-rank factorisation of a layer by truncated SVD.

`svd`: the best rank-r W under the objective's metric, min tr((W* − W) H (W* − W)ᵀ). With
S = H^(1/2) this is min ‖W* S − W S‖_F over rank-r W S (S is invertible), so by Eckart–Young
W S is the rank-r truncation of W* S = P Σ Qᵀ and W = P_r Σ_r Q_rᵀ S⁻¹.

`svd-plain`: the truncation of the teacher's W^t itself (H = I), the data-free baseline, i.e.
low rank without cross distillation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from crossdistill.errors import CrossDistillError
from crossdistill.linalg import sqrt_and_inverse_sqrt
from crossdistill.problem import QuadraticProblem
from crossdistill.solvers.base import LayerOutcome, LayerSolver, LayerTask


def layer_rank(task: LayerTask, W: torch.Tensor) -> int:
    try:
        r = int(task.params["rank"])
    except KeyError:
        raise CrossDistillError(f"layer {task.name!r}: a low-rank task needs params 'rank'") from None
    full = min(W.shape)
    if not 1 <= r <= full:
        raise CrossDistillError(f"layer {task.name!r}: rank {r} outside [1, {full}]")
    return r


def truncate(M: torch.Tensor, r: int) -> torch.Tensor:
    P, s, Qt = torch.linalg.svd(M, full_matrices=False)
    return (P[:, :r] * s[:r]) @ Qt[:r]


def metric_truncation(W_star: torch.Tensor, H: torch.Tensor, r: int) -> torch.Tensor:
    """argmin over rank-r W of tr((W* − W) H (W* − W)ᵀ)."""
    S, S_inv = sqrt_and_inverse_sqrt(H.to(torch.float64))
    return truncate(W_star.to(torch.float64) @ S, r) @ S_inv


@dataclass
class MetricSVD(LayerSolver):
    name = "svd"

    def solve(self, problem: QuadraticProblem, task: LayerTask, student: nn.Module) -> LayerOutcome:
        target = problem.solve()
        r = layer_rank(task, target)
        return LayerOutcome(weight=metric_truncation(target, problem.H, r), info={"rank": r, "full_rank": min(target.shape)})


@dataclass
class PlainSVD(LayerSolver):
    name = "svd-plain"

    def solve(self, problem: QuadraticProblem, task: LayerTask, student: nn.Module) -> LayerOutcome:
        W = problem.w_teacher.to(torch.float64)
        r = layer_rank(task, W)
        return LayerOutcome(weight=truncate(W, r), info={"rank": r, "full_rank": min(W.shape)})
