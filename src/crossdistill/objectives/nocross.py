"""L^r = ‖W^t X^t − W X^s‖²: plain layer-wise distillation (the paper's no-cross baseline)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from crossdistill.moments import Moments
from crossdistill.objectives.base import Objective, match_pair
from crossdistill.problem import QuadraticProblem


@dataclass
class NoCross(Objective):
    name = "nocross"

    def build(self, m: Moments, w_teacher: torch.Tensor) -> QuadraticProblem:
        return match_pair(w_teacher, m.ts, m.ss, m.tt)

    def terms(self) -> list[tuple[float, float, float]]:
        return [(1.0, 0.0, 0.0)]
