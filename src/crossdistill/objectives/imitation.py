"""L^i = ‖W^t X^s − W X^s‖²: the student's input fed to the teacher layer."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from crossdistill.moments import Moments
from crossdistill.objectives.base import Objective, match_pair
from crossdistill.problem import QuadraticProblem


@dataclass
class Imitation(Objective):
    name = "imitation"

    def build(self, m: Moments, w_teacher: torch.Tensor) -> QuadraticProblem:
        return match_pair(w_teacher, m.ss, m.ss, m.ss)

    def terms(self) -> list[tuple[float, float, float]]:
        return [(1.0, 1.0, 0.0)]
