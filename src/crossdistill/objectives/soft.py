"""Soft cross distillation: the inputs are mixed instead of the losses.

    x̃^t = (1−α) x^t + α x^s,  x̃^s = (1−β) x^s + β x^t,  L = ‖W^t x̃^t − W x̃^s‖²

α = β = 0 gives L^r, (α, β) = (0, 1) gives L^c, (1, 0) gives L^i. The moments of the mixed
inputs follow from C_tt, C_ss, C_ts without another pass over the data.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from crossdistill.moments import Moments
from crossdistill.objectives.base import Objective, match_pair
from crossdistill.params import param
from crossdistill.problem import QuadraticProblem


def mixed_moments(m: Moments, alpha: float, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(C̃_tt, C̃_ss, C̃_ts) of x̃^t = at·x^t + as_·x^s and x̃^s = bt·x^t + bs·x^s."""
    at, as_ = 1.0 - alpha, alpha
    bt, bs = beta, 1.0 - beta

    def cross(a1: float, a2: float, b1: float, b2: float) -> torch.Tensor:
        # E[(a1 x^t + a2 x^s)(b1 x^t + b2 x^s)ᵀ]; zero terms skipped (the default α = 0 has
        # three), which for a wide layer saves passes over several d×d matrices.
        pairs = [(c, t) for c, t in ((a1 * b1, m.tt), (a1 * b2, m.ts), (a2 * b1, m.st), (a2 * b2, m.ss)) if c != 0]
        if not pairs:
            return torch.zeros_like(m.tt)
        if len(pairs) == 1 and pairs[0][0] == 1.0:
            return pairs[0][1]  # the moment itself (α = 0 leaves C_tt as it is): no d×d copy
        out = pairs[0][0] * pairs[0][1]
        for c, t in pairs[1:]:
            out = out + c * t
        return out

    return cross(at, as_, at, as_), cross(bt, bs, bt, bs), cross(at, as_, bt, bs)


@dataclass
class Soft(Objective):
    name = "soft"
    # (0, 0.3): chosen over no-cross, mixed and other soft settings on a validation split
    # (crossdistill.defaults, docs/results/objective_defaults.md)
    alpha: float = param(0.0, "share of the student's input in the teacher's", low=0, high=1)
    beta: float = param(0.3, "share of the teacher's input in the student's", low=0, high=1)

    def build(self, m: Moments, w_teacher: torch.Tensor) -> QuadraticProblem:
        tt, ss, ts = mixed_moments(m, self.alpha, self.beta)
        return match_pair(w_teacher, ts, ss, tt)

    def terms(self) -> list[tuple[float, float, float]]:
        return [(1.0, self.alpha, self.beta)]
