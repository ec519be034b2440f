"""Prune only: the kept channels keep the teacher's weights; nothing is reconstructed."""
from __future__ import annotations

import torch
from torch import nn

from crossdistill.problem import QuadraticProblem
from crossdistill.solvers.base import LayerOutcome, LayerSolver, LayerTask, channel_columns
from crossdistill.solvers.selection import get_selector


class PruneOnlyChannels(LayerSolver):
    name = "prune-only"

    def __init__(self, selection: str = "l1") -> None:
        self.selection = selection
        self._select = get_selector(selection)

    def solve(self, problem: QuadraticProblem, task: LayerTask, student: nn.Module) -> LayerOutcome:
        kept = self._select(problem, task, student)
        W = torch.zeros_like(problem.w_teacher)
        cols = channel_columns(kept, task.group)
        W[:, cols] = problem.w_teacher[:, cols]
        return LayerOutcome(weight=W, info={"kept": kept.tolist()})

    def describe(self) -> str:
        return f"prune-only(selection={self.selection})"
