"""Closed-form channel pruning: choose the kept input channels, then solve W_S = B_S H_SS⁻¹."""
from __future__ import annotations

from torch import nn

from crossdistill.problem import QuadraticProblem
from crossdistill.solvers.base import LayerOutcome, LayerSolver, LayerTask, channel_columns
from crossdistill.solvers.selection import get_selector


class ClosedFormChannels(LayerSolver):
    name = "closed-form"

    def __init__(self, selection: str = "obs") -> None:
        self.selection = selection
        self._select = get_selector(selection)

    def solve(self, problem: QuadraticProblem, task: LayerTask, student: nn.Module) -> LayerOutcome:
        kept = self._select(problem, task, student)
        W = problem.solve_on(channel_columns(kept, task.group))
        return LayerOutcome(weight=W, info={"kept": kept.tolist()})

    def describe(self) -> str:
        return f"closed-form(selection={self.selection})"
