"""L^c = ‖W^t X^t − W X^t‖²: the teacher's input fed to the student layer."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from crossdistill.moments import Moments
from crossdistill.objectives.base import Objective, match_pair
from crossdistill.problem import QuadraticProblem


@dataclass
class Correction(Objective):
    name = "correction"

    def build(self, m: Moments, w_teacher: torch.Tensor) -> QuadraticProblem:
        return match_pair(w_teacher, m.tt, m.tt, m.tt)

    def terms(self) -> list[tuple[float, float, float]]:
        return [(1.0, 0.0, 1.0)]
