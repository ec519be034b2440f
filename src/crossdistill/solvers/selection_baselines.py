"""Channel selection criteria of the classic baselines, expressed on the layer's quadratic problem.

Both ThiNet (Luo et al. 2017) and CP (He et al. 2017) score channels by how well the consumer's
*output* is kept when channels are dropped or re-weighted while the weights stay the teacher's.
With W_a the teacher's columns of input channel a, the problem's loss of the re-weighted weight
W(β) = Σ_a β_a W_a is a quadratic in β alone:

    loss(β) = βᵀ G β − 2 gᵀ β + c,   G_ab = tr(W_a H_ab W_bᵀ),  g_a = tr(B_a W_aᵀ)

so both methods need only this n×n channel Gram matrix, whatever the objective. With the
no-cross objective, loss(β) is exactly ‖W^t X^t − Σ_a β_a W_a X^s_a‖², the original methods'
reconstruction error; with a cross objective the same criteria select under its metric.
The least-squares reconstruction that follows is the solver's job (e.g. the closed form).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from crossdistill.problem import QuadraticProblem
from crossdistill.solvers.base import LayerTask


def channel_gram(problem: QuadraticProblem, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, g) of the docstring above, with the teacher's weight as the reference columns."""
    W = problem.w_teacher.to(problem.H.dtype)
    out, d = W.shape
    n = d // group
    Wv = W.reshape(out, n, group)
    Hv = problem.H.reshape(n, group, n, group)
    G = torch.einsum("oai,aibj,obj->ab", Wv, Hv, Wv)
    g = (problem.B.reshape(out, n, group) * Wv).sum((0, 2))
    return (G + G.T) / 2, g


def thinet_order(G: torch.Tensor, g: torch.Tensor, keep: int) -> torch.Tensor:
    """Greedy ThiNet: remove, one at a time, the channel whose removal (teacher weights kept on
    the others, nothing re-solved) raises the output error least. Returns the kept channels.

    With s the indicator of the kept set, removing j changes the loss by
    G_jj − 2 (G s)_j + 2 g_j, so one step costs O(n) after an O(n) update of G s.
    """
    n = G.shape[0]
    alive = torch.ones(n, dtype=torch.bool, device=G.device)
    Gs = G.sum(1)
    diag = torch.diagonal(G)
    for _ in range(n - keep):
        delta = diag - 2.0 * Gs + 2.0 * g
        delta[~alive] = float("inf")
        j = int(torch.argmin(delta))
        alive[j] = False
        Gs = Gs - G[:, j]
    return torch.nonzero(alive).flatten()


def select_thinet(problem: QuadraticProblem, task: LayerTask, student: nn.Module) -> torch.Tensor:
    """ThiNet (Luo et al. 2017): greedy selection by the consumer's output reconstruction."""
    assert task.keep is not None
    G, g = channel_gram(problem, task.group)
    return thinet_order(G, g, task.keep)


def _normalise(G: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # CP constrains every channel's weights to unit norm so that one λ means the same for all
    # channels; in Gram form that is unit diagonal. Dead channels (zero weights) get scale 1 and
    # stay at β = 0 because their row of G and their g are zero.
    d = np.diag(G).copy()
    scale = np.where(d > 0, np.sqrt(np.maximum(d, 0.0)), 1.0)
    return G / np.outer(scale, scale), g / scale, scale


def lasso_coefficients(G: np.ndarray | torch.Tensor, g: np.ndarray | torch.Tensor, lam: float, *,
                       beta0: np.ndarray | None = None, sweeps: int = 1000, tol: float = 1e-10) -> np.ndarray:
    """β̃ minimising β̃ᵀ G̃ β̃ − 2 g̃ᵀ β̃ + λ‖β̃‖₁ on the unit-diagonal (normalised) Gram form, by
    cyclic coordinate descent. `beta0` warm-starts it (the λ search reuses each solution)."""
    Gn, gn, _ = _normalise(np.asarray(G, dtype=np.float64), np.asarray(g, dtype=np.float64))
    return _lasso_cd(Gn, gn, lam, beta0=beta0, sweeps=sweeps, tol=tol)


def _lasso_cd(Gn: np.ndarray, gn: np.ndarray, lam: float, *, beta0: np.ndarray | None = None,
              sweeps: int = 1000, tol: float = 1e-10) -> np.ndarray:
    n = len(gn)
    beta = np.zeros(n) if beta0 is None else beta0.astype(np.float64).copy()
    diag = np.diag(Gn)
    Gb = Gn @ beta
    half = lam / 2.0
    for _ in range(sweeps):
        change = 0.0
        for j in range(n):
            if diag[j] <= 0:
                continue
            # Minimise over β_j alone: the residual correlation without j's own term, soft-thresholded.
            r = gn[j] - Gb[j] + diag[j] * beta[j]
            new = np.sign(r) * max(abs(r) - half, 0.0) / diag[j]
            step = new - beta[j]
            if step != 0.0:
                Gb += step * Gn[:, j]
                beta[j] = new
                change = max(change, abs(step))
        if change <= tol * max(1.0, float(np.abs(beta).max(initial=0.0))):
            break
    return beta


def lasso_select(G: np.ndarray | torch.Tensor, g: np.ndarray | torch.Tensor, keep: int, *,
                 max_bisections: int = 60) -> tuple[np.ndarray, float]:
    """CP's selection: raise λ until at most `keep` channels have β ≠ 0, bisecting on log λ so
    that exactly `keep` remain where the path allows it. Returns (kept channels, λ).

    When the path jumps over `keep` (several channels leave at one λ), the survivors at the
    smallest λ with ≤ keep nonzeros are topped up with the largest |β̃| just below it, so the
    budget is always met exactly.
    """
    Gn, gn, _ = _normalise(np.asarray(G, dtype=np.float64), np.asarray(g, dtype=np.float64))
    n = len(gn)
    if keep >= n:
        return np.arange(n), 0.0
    # At λ ≥ 2 max|g̃| the zero vector is optimal (its subgradient condition holds).
    lam_hi = 2.0 * float(np.abs(gn).max()) * (1.0 + 1e-9)
    if lam_hi == 0.0:
        return np.sort(np.argsort(-np.diag(Gn), kind="stable")[:keep]), 0.0
    lam_lo = lam_hi * 1e-8
    beta_hi = np.zeros(n)
    beta_lo = _lasso_cd(Gn, gn, lam_lo)
    if np.count_nonzero(beta_lo) <= keep:
        # Even a tiny penalty leaves fewer than `keep` (a singular Gram): rank what is there.
        return _top_up(beta_lo, beta_lo, keep), lam_lo
    for _ in range(max_bisections):
        lam = float(np.sqrt(lam_lo * lam_hi))
        beta = _lasso_cd(Gn, gn, lam, beta0=beta_hi)
        count = np.count_nonzero(beta)
        if count == keep:
            return np.flatnonzero(beta), lam
        if count > keep:
            lam_lo, beta_lo = lam, beta
        else:
            lam_hi, beta_hi = lam, beta
        if lam_hi / lam_lo < 1.0 + 1e-9:
            break
    return _top_up(beta_hi, beta_lo, keep), lam_hi


def _top_up(beta_hi: np.ndarray, beta_lo: np.ndarray, keep: int) -> np.ndarray:
    chosen = [int(i) for i in np.flatnonzero(beta_hi)]
    taken = set(chosen)
    rest = [int(i) for i in np.argsort(-np.abs(beta_lo), kind="stable") if int(i) not in taken]
    chosen += rest[: keep - len(chosen)]
    return np.sort(np.asarray(chosen[:keep], dtype=np.int64))


def select_lasso(problem: QuadraticProblem, task: LayerTask, student: nn.Module) -> torch.Tensor:
    """CP (He et al. 2017): LASSO on the channel weights β of the consumer's output."""
    assert task.keep is not None
    G, g = channel_gram(problem, task.group)
    kept, _ = lasso_select(G.cpu().numpy(), g.cpu().numpy(), task.keep)
    return torch.as_tensor(kept, dtype=torch.long, device="cpu")
