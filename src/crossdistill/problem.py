"""The one problem every objective reduces to: a quadratic in the student weight W.

    loss(W) = tr(W H Wᵀ) - 2 tr(B Wᵀ) + c

with H symmetric PSD (in×in) and B (out×in). Its unconstrained optimum is W* = B H⁻¹, and
loss(W) = tr((W - W*) H (W - W*)ᵀ) + const, the "approximate W* in the metric H" form of
NOTES-math.md. B is kept instead of W* so that no inverse is needed until a solver picks the
columns it keeps.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import torch

from crossdistill.linalg import add_ridge, cholesky, damping_ridge, solve_right, solve_right_on_columns


@dataclass(frozen=True)
class QuadraticProblem:
    H: torch.Tensor
    B: torch.Tensor
    c: float
    w_teacher: torch.Tensor  # (out, in): the start point and the anchor of damping

    def loss(self, W: torch.Tensor) -> float:
        W = W.to(self.H.dtype)
        # A pruned W has whole zero columns: the quadratic term needs H on the others only
        # (a quarter of the product at keep 0.5).
        live = torch.nonzero(W.abs().sum(0)).flatten()
        if live.numel() < W.shape[1]:
            Wl = W[:, live]
            quad = (Wl @ self.H[live[:, None], live[None, :]] * Wl).sum()
        else:
            quad = (W @ self.H * W).sum()
        return float(quad - 2.0 * (self.B * W).sum() + self.c)

    def gradient(self, W: torch.Tensor) -> torch.Tensor:
        return 2.0 * (W.to(self.H.dtype) @ self.H - self.B)

    def damped(self, fraction: float) -> "QuadraticProblem":
        """Add fraction·mean(diag H)·‖W - W^t‖²: with few samples H is nearly singular, and
        pulling the under-determined directions towards the teacher (not towards zero) is what
        helped at K = 1 (NOTES-math.md)."""
        if fraction == 0:
            return self
        lam = damping_ridge(self.H, fraction)
        wt = self.w_teacher.to(self.H.dtype)
        return replace(
            self,
            H=add_ridge(self.H, lam),
            B=self.B + lam * wt,
            c=self.c + lam * float((wt * wt).sum()),
        )

    def solve_on(self, columns: torch.Tensor) -> torch.Tensor:
        """Exact minimiser with every column outside `columns` fixed at zero: W_S = B_S H_SS⁻¹."""
        return solve_right_on_columns(self.B, self.H, columns)

    def solve(self) -> torch.Tensor:
        """W* = B H⁻¹ (least squares when H is singular)."""
        return solve_right(self.B, self.H, factor=self.cholesky_factor)

    # A sparse solve on a wide layer needs H's factor for W*, H⁻¹ for the sweep's OBS rows and
    # H⁻¹ again to precondition the masked re-solve: computed once per problem, not three times
    # (d = 4608: about 2 CPU-s a layer). A problem lives for one layer's solve.
    @cached_property
    def cholesky_factor(self) -> torch.Tensor | None:
        """Lower Cholesky factor of H, or None when H is not (numerically) positive definite."""
        return cholesky(self.H)

    @cached_property
    def inverse(self) -> torch.Tensor | None:
        """H⁻¹ from the Cholesky factor, or None when H is not (numerically) positive definite."""
        L = self.cholesky_factor
        return None if L is None else torch.cholesky_inverse(L)


def add_problems(a: QuadraticProblem, b: QuadraticProblem, wa: float, wb: float) -> QuadraticProblem:
    return QuadraticProblem(H=wa * a.H + wb * b.H, B=wa * a.B + wb * b.B, c=wa * a.c + wb * b.c, w_teacher=a.w_teacher)
