"""Closed-form channel pruning: choose the kept input channels, then solve W_S = B_S H_SS⁻¹."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from crossdistill.problem import QuadraticProblem
from crossdistill.solvers.base import LayerOutcome, LayerTask
from crossdistill.solvers.selection import SelectingSolver


@dataclass
class ClosedFormChannels(SelectingSolver):
    name = "closed-form"

    def solve(self, problem: QuadraticProblem, task: LayerTask, student: nn.Module) -> LayerOutcome:
        cols, info = self.kept_columns(problem, task, student)
        return LayerOutcome(weight=problem.solve_on(cols), info=info)

