"""Prune only: the kept channels keep the teacher's weights; nothing is reconstructed."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from crossdistill.problem import QuadraticProblem
from crossdistill.solvers.base import LayerOutcome, LayerTask, channel_columns
from crossdistill.solvers.selection import SelectingSolver


@dataclass
class PruneOnlyChannels(SelectingSolver):
    name = "prune-only"
    uses_objective = False

    def solve(self, problem: QuadraticProblem, task: LayerTask, student: nn.Module) -> LayerOutcome:
        kept = self._select(problem, task, student)
        W = torch.zeros_like(problem.w_teacher)
        cols = channel_columns(kept, task.group)
        W[:, cols] = problem.w_teacher[:, cols]
        return LayerOutcome(weight=W, info={"kept": kept.tolist()})

