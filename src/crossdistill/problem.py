"""The one problem every objective reduces to: a quadratic in the student weight W.

    loss(W) = tr(W H Wᵀ) - 2 tr(B Wᵀ) + c

with H symmetric PSD (in×in) and B (out×in). Its unconstrained optimum is W* = B H⁻¹, and
loss(W) = tr((W - W*) H (W - W*)ᵀ) + const, the "approximate W* in the metric H" form of
NOTES-math.md. B is kept instead of W* so that no inverse is needed until a solver picks the
columns it keeps.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class QuadraticProblem:
    H: torch.Tensor
    B: torch.Tensor
    c: float
    w_teacher: torch.Tensor  # (out, in): the start point and the anchor of damping

    def loss(self, W: torch.Tensor) -> float:
        W = W.to(self.H.dtype)
        return float((W @ self.H * W).sum() - 2.0 * (self.B * W).sum() + self.c)

    def gradient(self, W: torch.Tensor) -> torch.Tensor:
        return 2.0 * (W.to(self.H.dtype) @ self.H - self.B)

    def damped(self, fraction: float) -> "QuadraticProblem":
        """Add fraction·mean(diag H)·‖W - W^t‖²: with few samples H is nearly singular, and
        pulling the under-determined directions towards the teacher (not towards zero) is what
        helped at K = 1 (NOTES-math.md)."""
        if fraction < 0:
            raise ValueError("damping must be >= 0")
        if fraction == 0:
            return self
        lam = fraction * float(torch.diagonal(self.H).mean())
        if lam <= 0:
            lam = fraction
        eye = torch.eye(self.H.shape[0], dtype=self.H.dtype)
        wt = self.w_teacher.to(self.H.dtype)
        return replace(
            self,
            H=self.H + lam * eye,
            B=self.B + lam * wt,
            c=self.c + lam * float((wt * wt).sum()),
        )

    def solve_on(self, columns: torch.Tensor) -> torch.Tensor:
        """Exact minimiser with every column outside `columns` fixed at zero: W_S = B_S H_SS⁻¹."""
        W = torch.zeros_like(self.B)
        if columns.numel() == 0:
            return W
        H_ss = self.H[columns][:, columns]
        W[:, columns] = _spd_solve_right(self.B[:, columns], H_ss)
        return W

    def solve(self) -> torch.Tensor:
        return _spd_solve_right(self.B, self.H)


def _spd_solve_right(B: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """B H⁻¹ for symmetric PSD H; falls back to least squares when H is singular."""
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) == 0:
        return torch.cholesky_solve(B.T, L).T
    return torch.linalg.lstsq(H, B.T, driver="gelsd").solution.T


def add_problems(a: QuadraticProblem, b: QuadraticProblem, wa: float, wb: float) -> QuadraticProblem:
    return QuadraticProblem(H=wa * a.H + wb * b.H, B=wa * a.B + wb * b.B, c=wa * a.c + wb * b.c, w_teacher=a.w_teacher)
