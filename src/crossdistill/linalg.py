"""The linear algebra every layer solve shares, in one place.

Every objective reduces a layer to loss(W) = tr(W H Wᵀ) − 2 tr(B Wᵀ) + c with H symmetric PSD
(problem.py). This module owns what the solvers do with H:

- damping: the ridge λ = fraction · mean(diag H) added to the diagonal;
- factorisation: Cholesky, and the upper Cholesky factor of H⁻¹ that the OBS-style sweeps
  (SparseGPT, OBC, GPTQ) need, with the one jitter policy for a singular H;
- the constrained solves: B H⁻¹ (Cholesky, else least squares), the same on a subset of
  columns, and row by row on a sparsity mask;
- the symmetric square root of H (and its inverse) of the metric low-rank solver.

Errors a user can fix (an undamped singular H, a non-finite H) are CrossDistillError.
"""
from __future__ import annotations

import torch

from crossdistill.errors import CrossDistillError

# --- damping ---------------------------------------------------------------------------------


def damping_ridge(H: torch.Tensor, fraction: float) -> float:
    """λ = fraction · mean(diag H): the ridge scales with H, so one fraction means the same
    pull whatever the layer's input magnitude. An all-zero diagonal (a layer whose inputs are
    all zero) gets λ = fraction so that damping still makes H invertible."""
    if fraction < 0:
        raise ValueError("damping must be >= 0")
    lam = fraction * float(torch.diagonal(H).mean())
    if lam <= 0:
        lam = fraction
    return lam


def add_ridge(H: torch.Tensor, ridge: float) -> torch.Tensor:
    """H + ridge · I (a new tensor; H is left alone)."""
    return H + ridge * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)


# --- factorisation ---------------------------------------------------------------------------


def cholesky(H: torch.Tensor) -> torch.Tensor | None:
    """Lower Cholesky factor of H, or None when H is not (numerically) positive definite."""
    L, info = torch.linalg.cholesky_ex(H)
    return L if int(info) == 0 else None


def _check_finite(H: torch.Tensor, context: str) -> None:
    # No ridge rescues NaN or inf; say so instead of walking the whole ladder.
    if not bool(torch.isfinite(H).all()):
        raise CrossDistillError(f"{context}: H has NaN or infinite entries (non-finite layer inputs?)")


def inverse_cholesky_upper(
    H: torch.Tensor,
    *,
    first_jitter: float = 1e-8,
    growth: float = 100.0,
    tries: int = 6,
    grow_ridge: bool = False,
    symmetrize: bool = False,
    context: str = "layer solve",
    inverse: torch.Tensor | None = None,
) -> torch.Tensor:
    """Upper U with UᵀU = H⁻¹. Row j of U divided by U_jj is row j of (H_F)⁻¹ restricted to
    F = {j, …, d−1}: the OBS quantities of a left-to-right column sweep, for every step, from
    one factorisation.

    The jitter policy: try H itself, then H + λ·I with λ = ρ·s for ρ = first_jitter,
    first_jitter·growth, … (`tries` attempts in all, H itself included), s = mean(diag H)
    floored at 1e-12; if none factorises, CrossDistillError. The engine damps H already; this
    only rescues an undamped, numerically singular H.

    Callers keep their published ladders (SparseGPT/OBC: 1e-8 ×100, 6 tries; GPTQ: 1e-10 ×10,
    12 tries). `grow_ridge` multiplies λ itself by `growth` at each step (GPTQ's arithmetic)
    instead of ρ: the two agree up to the last bit of λ and are kept apart only so that each
    solver's results stay bit-identical. `symmetrize` first replaces H by (H + Hᵀ)/2: Cholesky
    reads only the lower triangle, so an asymmetric round-off would otherwise be dropped.
    `inverse`: H⁻¹ already computed from H's own Cholesky factor (QuadraticProblem.inverse),
    which is what the first try would compute."""
    if inverse is not None and not symmetrize:
        U, info = torch.linalg.cholesky_ex(inverse, upper=True)
        if int(info) == 0:
            return U
    _check_finite(H, context)
    if symmetrize:
        H = (H + H.T) / 2
    d = H.shape[0]
    scale = float(torch.diagonal(H).mean().clamp_min(1e-12))
    eye = torch.eye(d, dtype=H.dtype, device=H.device)
    rho = ridge = last = 0.0
    for _ in range(tries):
        L = cholesky(H if ridge == 0 else H + ridge * eye)
        if L is not None:
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if int(info) == 0:
                return U
        last = ridge
        rho = first_jitter if rho == 0 else rho * growth
        if grow_ridge:
            ridge = first_jitter * scale if ridge == 0 else ridge * growth
        else:
            ridge = rho * scale
    raise CrossDistillError(
        f"{context}: H ({d}×{d}) is not positive definite even with a ridge of "
        f"{last / scale:.3g}·mean(diag H); use damping > 0"
    )


# --- constrained solves ----------------------------------------------------------------------


def solve_right(B: torch.Tensor, H: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
    """B H⁻¹ for symmetric PSD H: Cholesky, else (H singular) the minimum-norm least-squares
    solution, which is still a minimiser of the quadratic when B lies in H's row space.
    `factor`: H's lower Cholesky factor if already computed."""
    L = cholesky(H) if factor is None else factor
    if L is not None:
        return torch.cholesky_solve(B.T, L).T
    # gelsd (SVD, rank-revealing) exists on the CPU only: a GPU's H makes the trip there (rare:
    # only an undamped, singular H gets here).
    return torch.linalg.lstsq(H.cpu(), B.T.cpu(), driver="gelsd").solution.T.to(H.device)


def solve_right_on_columns(B: torch.Tensor, H: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Minimiser of tr(W H Wᵀ) − 2 tr(B Wᵀ) with every column outside `columns` fixed at zero:
    W_S = B_S H_SS⁻¹, zeros elsewhere."""
    W = torch.zeros_like(B)
    if columns.numel() == 0:
        return W
    W[:, columns] = solve_right(B[:, columns], H[columns][:, columns])
    return W


# From this many columns on, rows with distinct supports may be solved together by conjugate
# gradients (one d×d product per iteration for all rows) instead of one factorisation per row
# (out·d³/3; `uses_cg` decides): 6x faster at d = 2304 with 256 half-dense rows, and
# CIFAR-sized layers (d ≤ 576) keep the exact direct path.
ITERATIVE_MIN_D = 1024
CG_TOL = 1e-10  # a row whose normal equations' relative residual is below this is solved
CG_MAX_ITER = 300
# CG only on layers of at least this many rows: with fewer, each iteration's product is a thin,
# memory-bound one (a DenseNet-40 layer of 12 rows at 70 %, d ≈ 2300: ~2.5 s by CG, 0.1 s direct).
CG_MIN_ROWS = 64
# The layer's CG stops once its last CG_WINDOW iterations together lowered the loss by less than
# CG_LOSS_TOL of what the mask costs (loss above the unconstrained optimum). Those decreases are
# a lower bound on the error CG_WINDOW iterations back, and CG converges superlinearly at the end:
# on a ResNet-18 layer (512 rows, d = 4608, 50 % mask) the loss then sits within ~1e-6 of the
# mask's exact optimum (direct solves) after ~35 iterations, where a residual of 1e-10 on every
# row needs ~60 and Jacobi preconditioning ~300.
CG_LOSS_TOL = 1e-5
CG_WINDOW = 5


# Direct solves cost Σ_i k_i³/3 for rows of k_i kept weights (a Cholesky of each row's H_SS); CG
# about 2·rows·d² an iteration for all rows, and its iterations depend on H's conditioning. On
# VGG-16's 512×4608 layers (SparseGPT masks, two threads) the direct solves took 3 s at 90 %
# zeros (Σk³/3 ≈ 1.5·rows·d²) against CG's 24, but at 70 % (≈ 42·rows·d²) 13–20 s against
# CG's 10–48 s depending on the inputs: direct below DIRECT_BELOW · rows·d², i.e. from about
# 75 % zeros at d = 4608 and 68 % at d = 2304, where it is as fast or faster on every input seen.
DIRECT_BELOW = 25.0


def uses_cg(keep: torch.Tensor) -> bool:
    """Whether the rows on this mask are solved by conjugate gradients: wide layers of many rows,
    on the CPU only where their supports are too large for one factorisation per row to be cheaper."""
    rows, d = keep.shape
    if d < ITERATIVE_MIN_D or rows < CG_MIN_ROWS:
        return False
    if keep.device.type != "cpu":
        # On a GPU CG's batched products take milliseconds, while the direct path is a loop of
        # one small factorisation per row: its launches, not its flops, would set the time.
        return True
    kept = keep.sum(1).to(torch.float64)
    return float((kept ** 3).sum()) / 3 > DIRECT_BELOW * rows * float(d) ** 2


def solve_right_on_mask(B: torch.Tensor, H: torch.Tensor, keep: torch.Tensor,
                        start: torch.Tensor | None = None, inverse: torch.Tensor | None = None) -> torch.Tensor:
    """Minimiser with the zeros of the boolean `keep` (same shape as B) fixed at zero. The loss
    is a sum over rows, Σ_i w_i H w_iᵀ − 2 b_i w_iᵀ, so each row is its own small problem
    W_i,S = B_i,S H_SS⁻¹ on its own support S: solved directly on narrow layers and on sparse
    masks, by conjugate gradients to CG_LOSS_TOL of the mask's cost on wide, denser ones
    (`uses_cg`). `start`: a near solution on that mask (say the SparseGPT sweep's weights) for
    the iterative path to begin from; the answer does not depend on it, only the iterations it
    takes. `inverse`: H⁻¹ if already computed."""
    if uses_cg(keep):
        W, done = _masked_cg(B, H, keep, start=start, inverse=inverse)
        if bool(done.all()):
            return W
        # Rows that did not converge (a badly conditioned H_SS) get the direct solve.
        rest = torch.nonzero(~done).flatten()
        W[rest] = _direct_on_mask(B[rest], H, keep[rest])
        return W
    return _direct_on_mask(B, H, keep)


def _masked_cg(B: torch.Tensor, H: torch.Tensor, keep: torch.Tensor,
               max_iter: int | None = None, start: torch.Tensor | None = None,
               inverse: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Preconditioned conjugate gradients on every row's H_SS w = b_S at once, from zero or from
    `start` (on the mask). Returns the rows and which of them count as solved: all of them once
    the loss stalls (CG_LOSS_TOL), else those whose residual fell below CG_TOL.

    The preconditioner is (H⁻¹)_SS, the row's block of the full inverse: by the Schur complement
    it differs from H_SS⁻¹ only through the pruned block, and it is one d×d product per
    iteration for all rows (Jacobi, diag H, when H cannot be factorised)."""
    tiny = torch.finfo(B.dtype).tiny
    M = keep.to(B.dtype)
    if inverse is None:
        L = cholesky(H)
        inverse = None if L is None else torch.cholesky_inverse(L)
    H_inv = inverse
    if H_inv is not None:
        precondition = lambda R: (R @ H_inv) * M  # noqa: E731
        # What the mask costs at the start: (W − W*) H (W − W*)ᵀ with W* = B H⁻¹.
        W_star = B @ H_inv
    else:
        D = torch.diagonal(H).clamp_min(tiny)
        precondition = lambda R: R / D  # noqa: E731
        W_star = None
    scale = (B * M).norm(dim=1).clamp_min(tiny)
    if start is None:
        W = torch.zeros_like(B)
        R = B * M
    else:
        W = start.to(B.dtype) * M
        R = (B - W @ H) * M
    gap = float(((W - W_star) @ H * (W - W_star)).sum()) if W_star is not None else None
    Z = precondition(R)
    P = Z.clone()
    rz = (R * Z).sum(1)
    done = R.norm(dim=1) / scale < CG_TOL
    recent: list[float] = []
    for _ in range(CG_MAX_ITER if max_iter is None else max_iter):
        if bool(done.all()):
            break
        AP = (P @ H) * M
        curv = (P * AP).sum(1)
        alpha = torch.where(done | (curv <= 0), torch.zeros_like(curv), rz / curv.clamp_min(tiny))
        W += alpha[:, None] * P
        R -= alpha[:, None] * AP
        done = done | (R.norm(dim=1) / scale < CG_TOL)
        if gap is not None:
            # The step's exact loss decrease, α²·pHp = α·rz summed over rows.
            step = float((alpha * rz).sum())
            gap -= step
            recent = (recent + [step])[-CG_WINDOW:]
            if len(recent) == CG_WINDOW and sum(recent) <= CG_LOSS_TOL * max(gap, 0.0):
                done = torch.ones_like(done)
                break
        Z = precondition(R)
        rz_new = (R * Z).sum(1)
        P = Z + (rz_new / rz.clamp_min(tiny))[:, None] * P
        rz = rz_new
    return W * M, done


def _direct_on_mask(B: torch.Tensor, H: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    W = torch.zeros_like(B)
    # Rows with the same support share one factorisation (all of them at sparsity 0).
    supports: dict[bytes, list[int]] = {}
    keep_cpu = keep.to("cpu")
    for i in range(B.shape[0]):
        supports.setdefault(keep_cpu[i].numpy().tobytes(), []).append(i)
    for rows_list in supports.values():
        rows = torch.as_tensor(rows_list, dtype=torch.long, device=B.device)
        cols = torch.nonzero(keep_cpu[rows_list[0]]).flatten().to(B.device)
        if cols.numel() == 0:
            continue
        W[rows[:, None], cols[None, :]] = solve_right(B[rows][:, cols], H[cols][:, cols])
    return W


# --- square roots ----------------------------------------------------------------------------

# Eigenvalues of H below this fraction of the largest are raised to it: S⁻¹ must stay finite
# even when the problem was not damped.
EIG_FLOOR = 1e-12


def sqrt_and_inverse_sqrt(H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(H^½, H^-½) of the symmetrised H by eigendecomposition, eigenvalues floored (EIG_FLOOR)."""
    e, V = torch.linalg.eigh((H + H.T) / 2)
    e = torch.clamp(e, min=float(e.max().clamp(min=0)) * EIG_FLOOR or EIG_FLOOR)
    return (V * e.sqrt()) @ V.T, (V / e.sqrt()) @ V.T
