"""Prune only: the kept channels keep the teacher's weights; nothing is reconstructed."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from crossdistill.problem import QuadraticProblem
from crossdistill.solvers.base import LayerOutcome, LayerTask
from crossdistill.solvers.selection import SelectingSolver


@dataclass
class PruneOnlyChannels(SelectingSolver):
    name = "prune-only"
    uses_objective = False

    def solve(self, problem: QuadraticProblem, task: LayerTask, student: nn.Module) -> LayerOutcome:
        cols, info = self.kept_columns(problem, task, student)
        W = torch.zeros_like(problem.w_teacher)
        W[:, cols] = problem.w_teacher[:, cols]
        return LayerOutcome(weight=W, info=info)

