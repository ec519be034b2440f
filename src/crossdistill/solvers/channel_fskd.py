"""FSKD (Li et al. 2020, "Few Sample Knowledge Distillation") as a channel solver.

FSKD keeps the pruned student's conv W_s (the teacher's kept columns) and adds a 1×1 conv Q
after it, before BatchNorm, fitted by least squares so that Q W_s X^s matches the teacher's
output; Q is then merged into the conv (W = Q W_s), so inference costs nothing extra.

Fitting Q is the layer's quadratic problem restricted to weights of the form Q W_s:

    loss(Q W_s) = tr(Q (W_s H W_sᵀ) Qᵀ) − 2 tr((B W_sᵀ) Qᵀ) + c   ⇒   Q* = B W_sᵀ (W_s H W_sᵀ)⁻¹

With the no-cross objective this is exactly FSKD (student input, teacher output); with any other
objective it is FSKD under that objective's metric. It is never better than the closed form on
the same channels, which optimises over all of W_S instead of the out×out family Q W_s.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from crossdistill.linalg import solve_right
from crossdistill.problem import QuadraticProblem
from crossdistill.solvers.base import LayerOutcome, LayerTask
from crossdistill.solvers.selection import SelectingSolver


def pointwise_least_squares(problem: QuadraticProblem, w_student: torch.Tensor) -> torch.Tensor:
    """The 1×1 conv Q (out × out) minimising the problem's loss of Q·w_student."""
    Ws = w_student.to(problem.H.dtype)
    H_q = Ws @ problem.H @ Ws.T
    H_q = (H_q + H_q.T) / 2
    return solve_right(problem.B @ Ws.T, H_q)


@dataclass
class FSKDChannels(SelectingSolver):
    name = "fskd"

    def solve(self, problem: QuadraticProblem, task: LayerTask, student: nn.Module) -> LayerOutcome:
        cols, info = self.kept_columns(problem, task, student)
        Ws = torch.zeros_like(problem.w_teacher)
        Ws[:, cols] = problem.w_teacher[:, cols]
        Q = pointwise_least_squares(problem, Ws)
        # Merged form: dropped columns stay exactly zero because they are zero in W_s.
        return LayerOutcome(weight=Q @ Ws.to(Q.dtype), info=info)

