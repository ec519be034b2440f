"""What an objective is: a map from (moments, teacher weight) to a QuadraticProblem."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from crossdistill.moments import Moments
from crossdistill.params import Plugin
from crossdistill.problem import QuadraticProblem


@dataclass
class Objective(Plugin, ABC):
    """One layer's loss, a dataclass whose settings are `params.param` fields: they are checked
    on construction and appear in `describe()` (which goes into reports), the CLI and sweeps."""

    kind = "objective"

    @abstractmethod
    def build(self, m: Moments, w_teacher: torch.Tensor) -> QuadraticProblem: ...

    def terms(self) -> list[tuple[float, float, float]] | None:
        """The objective as Σ weight · soft(α, β) terms, [(weight, α, β), ...], when it is one; the
        engine then accumulates its problem straight from the inputs (problem_moments.py, one
        d×d Gram per distinct student-side input instead of three). None (the default, for an
        objective that is not such a sum): the three moment matrices and `build`."""
        return None


def match_pair(w_teacher: torch.Tensor, C_in: torch.Tensor, C_out: torch.Tensor, C_tt: torch.Tensor) -> QuadraticProblem:
    """‖W^t X_a − W X_b‖² with C_in = E[x_a x_bᵀ] (cross), C_out = E[x_b x_bᵀ], C_tt = E[x_a x_aᵀ]."""
    wt = w_teacher.to(C_out.dtype)
    return QuadraticProblem(
        H=C_out,
        B=wt @ C_in,
        c=float((wt @ C_tt * wt).sum()),
        w_teacher=wt,
    )
