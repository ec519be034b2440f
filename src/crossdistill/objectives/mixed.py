"""L^m = μ L^c + (1 − μ) L^i (paper defaults: μ 0.6 for VGG, 0.9 for ResNet)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from crossdistill.moments import Moments
from crossdistill.objectives.base import Objective
from crossdistill.objectives.correction import Correction
from crossdistill.objectives.imitation import Imitation
from crossdistill.params import param
from crossdistill.problem import QuadraticProblem, add_problems

# Used where neither the user nor the model (ModelInfo.default_mu) gives μ.
DEFAULT_MU = 0.9


@dataclass
class Mixed(Objective):
    name = "mixed"
    # None defers to the model's paper default (ModelInfo.default_mu): 0.9 ResNet, 0.6 VGG.
    mu: float | None = param(None, "weight of correction L^c against imitation L^i "
                             "(default: the model's, 0.9 ResNet / 0.6 VGG and fashion_cnn / 0.9 for a model of "
                             "your own; `crossdistill models` lists it)",
                             low=0, high=1)

    def build(self, m: Moments, w_teacher: torch.Tensor) -> QuadraticProblem:
        mu = DEFAULT_MU if self.mu is None else self.mu
        c = Correction().build(m, w_teacher)
        i = Imitation().build(m, w_teacher)
        return add_problems(c, i, mu, 1.0 - mu)

    def terms(self) -> list[tuple[float, float, float]]:
        mu = DEFAULT_MU if self.mu is None else self.mu
        return [(mu, 0.0, 1.0), (1.0 - mu, 1.0, 0.0)]
