"""L^m = μ L^c + (1 − μ) L^i (paper defaults: μ 0.6 for VGG, 0.9 for ResNet)."""
from __future__ import annotations

import torch

from crossdistill.moments import Moments
from crossdistill.objectives.base import Objective, check_unit
from crossdistill.objectives.correction import Correction
from crossdistill.objectives.imitation import Imitation
from crossdistill.problem import QuadraticProblem, add_problems


class Mixed(Objective):
    name = "mixed"

    def __init__(self, mu: float = 0.9) -> None:
        self.mu = check_unit("mu", mu)

    def build(self, m: Moments, w_teacher: torch.Tensor) -> QuadraticProblem:
        c = Correction().build(m, w_teacher)
        i = Imitation().build(m, w_teacher)
        return add_problems(c, i, self.mu, 1.0 - self.mu)

    def describe(self) -> str:
        return f"mixed(mu={self.mu:g})"
