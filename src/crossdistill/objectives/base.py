"""What an objective is: a map from (moments, teacher weight) to a QuadraticProblem."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from crossdistill.errors import CrossDistillError
from crossdistill.moments import Moments
from crossdistill.problem import QuadraticProblem


class Objective(ABC):
    """One layer's loss. `describe()` goes into reports, so keep it exact."""

    name: str = ""

    @abstractmethod
    def build(self, m: Moments, w_teacher: torch.Tensor) -> QuadraticProblem: ...

    def describe(self) -> str:
        return self.name


def check_unit(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise CrossDistillError(f"{name} must lie in [0, 1], got {value}")
    return value


def match_pair(w_teacher: torch.Tensor, C_in: torch.Tensor, C_out: torch.Tensor, C_tt: torch.Tensor) -> QuadraticProblem:
    """‖W^t X_a − W X_b‖² with C_in = E[x_a x_bᵀ] (cross), C_out = E[x_b x_bᵀ], C_tt = E[x_a x_aᵀ]."""
    wt = w_teacher.to(C_out.dtype)
    return QuadraticProblem(
        H=C_out,
        B=wt @ C_in,
        c=float((wt @ C_tt * wt).sum()),
        w_teacher=wt,
    )
