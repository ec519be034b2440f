"""crossdistill.linalg: damping, the jitter ladder, the constrained solves; plus the one unfold
(capture.patches / capture.unfold) and the one damping policy (defaults.resolve_damping)."""
from __future__ import annotations

import inspect
import math
import unittest.mock as mock

import pytest

import torch
from torch import nn

from crossdistill import linalg
from crossdistill.capture import patches, unfold
from crossdistill.defaults import auto_damping, resolve_damping
from crossdistill.engine import distill_layers
from crossdistill.errors import CrossDistillError
from crossdistill.problem import QuadraticProblem

f64 = torch.float64
GPTQ_LADDER = dict(first_jitter=1e-10, growth=10.0, tries=12, grow_ridge=True, symmetrize=True)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def regression(seed: int, n: int = 60, d: int = 12, out: int = 5):
    """Patches X (n×d), targets Y (n×out), and the quadratic of ‖Y − X Wᵀ‖²: H = XᵀX, B = YᵀX."""
    g = gen(seed)
    X = torch.randn(n, d, generator=g, dtype=f64) @ (torch.eye(d, dtype=f64) + 0.5 * torch.randn(d, d, generator=g, dtype=f64))
    Y = torch.randn(n, out, generator=g, dtype=f64)
    return X, Y, X.T @ X, Y.T @ X


def brute_force(X: torch.Tensor, Y: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """argmin ‖Y − X_S W_Sᵀ‖² by a plain least-squares solve on the patches themselves."""
    W = torch.zeros(Y.shape[1], X.shape[1], dtype=f64)
    if cols.numel():
        W[:, cols] = torch.linalg.lstsq(X[:, cols], Y).solution.T
    return W


def singular_psd(seed: int, d: int = 10, rank: int = 4) -> torch.Tensor:
    X = torch.randn(rank, d, generator=gen(seed), dtype=f64)
    return X.T @ X / rank


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int64)


# --- damping -----------------------------------------------------------------------------------


def test_damping_adds_exactly_fraction_times_mean_diagonal():
    _, _, H, B = regression(0)
    wt = torch.randn_like(B)
    p = QuadraticProblem(H=H, B=B, c=3.0, w_teacher=wt)
    lam = 0.02 * float(torch.diagonal(H).mean())
    assert linalg.damping_ridge(H, 0.02) == lam
    d = p.damped(0.02)
    assert torch.equal(torch.diagonal(d.H), torch.diagonal(H) + lam)
    off = ~torch.eye(H.shape[0], dtype=torch.bool)
    assert torch.equal(d.H[off], H[off])
    # The ridge pulls towards the teacher: ‖W − W^t‖² expanded into B and c.
    assert torch.equal(d.B, B + lam * wt)
    assert d.c == 3.0 + lam * float((wt * wt).sum())
    W = torch.randn_like(B)
    assert d.loss(W) == pytest.approx(p.loss(W) + lam * float(((W - wt) ** 2).sum()), rel=1e-12)


def test_damping_zero_is_identity_negative_is_refused_zero_diagonal_still_invertible():
    _, _, H, B = regression(1)
    p = QuadraticProblem(H=H, B=B, c=0.0, w_teacher=torch.zeros_like(B))
    assert p.damped(0.0) is p
    with pytest.raises(ValueError):
        p.damped(-0.1)
    # All-zero inputs: mean diag is 0, the ridge falls back to the fraction itself.
    Z = torch.zeros(4, 4, dtype=f64)
    assert linalg.damping_ridge(Z, 0.5) == 0.5
    assert torch.equal(linalg.add_ridge(Z, 0.5), 0.5 * torch.eye(4, dtype=f64))


# --- the jitter ladder -------------------------------------------------------------------------


def test_inverse_cholesky_upper_on_a_definite_h():
    _, _, H, _ = regression(2)
    U = linalg.inverse_cholesky_upper(H)
    assert torch.equal(U, torch.triu(U))
    assert torch.allclose(U.T @ U, torch.linalg.inv(H), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("ladder,first", [({}, 1e-8), (GPTQ_LADDER, 1e-10)])
def test_ladder_rescues_a_singular_psd_h_with_its_first_rung(ladder, first):
    H = singular_psd(3)
    assert linalg.cholesky(H) is None  # the ladder really has to step
    U = linalg.inverse_cholesky_upper(H, **ladder)
    assert torch.isfinite(U).all() and torch.equal(U, torch.triu(U))
    # The smallest ridge of the ladder suffices for an exactly rank-deficient H.
    ridge = first * float(torch.diagonal(H).mean())
    expected = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(linalg.add_ridge(H, ridge))), upper=True)
    assert torch.allclose(U, expected, rtol=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_ladder_refuses_non_finite_h_with_crossdistill_error(bad):
    H = singular_psd(4) + torch.eye(10, dtype=f64)
    H[3, 5] = H[5, 3] = bad
    for ladder in ({}, GPTQ_LADDER):
        with pytest.raises(CrossDistillError, match="NaN or infinite"):
            linalg.inverse_cholesky_upper(H, **ladder)


def test_ladder_gives_up_on_an_indefinite_h_with_a_clear_error():
    H = torch.diag(torch.tensor([1.0, 1.0, -5.0], dtype=f64))
    with pytest.raises(CrossDistillError, match=r"GPTQ: H \(3×3\) is not positive definite.*damping > 0"):
        linalg.inverse_cholesky_upper(H, context="GPTQ", **GPTQ_LADDER)
    with pytest.raises(CrossDistillError, match="not positive definite"):
        linalg.inverse_cholesky_upper(H)


def _reference_sweep_ladder(H):
    # The SparseGPT/OBC ladder as it was written in solvers/sparse_obs.py before the move.
    d, jitter = H.shape[0], 0.0
    scale = float(torch.diagonal(H).mean().clamp_min(1e-12))
    for _ in range(6):
        Hj = H if jitter == 0 else H + jitter * scale * torch.eye(d, dtype=H.dtype)
        L, info = torch.linalg.cholesky_ex(Hj)
        if int(info) == 0:
            U, info2 = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if int(info2) == 0:
                return U
        jitter = 1e-8 if jitter == 0 else jitter * 100
    return None


def _reference_gptq_ladder(H):
    # The GPTQ ladder as it was written in solvers/quant_gptq.py before the move.
    H = (H + H.T) / 2
    mean_diag = float(torch.diagonal(H).mean()) or 1.0
    eye, jitter = torch.eye(H.shape[0], dtype=H.dtype), 0.0
    for _ in range(12):
        L, info = torch.linalg.cholesky_ex(H + jitter * eye)
        if int(info) == 0:
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if int(info) == 0:
                return U
        jitter = mean_diag * 1e-10 if jitter == 0.0 else jitter * 10.0
    return None


def test_both_ladders_keep_their_historical_arithmetic_bit_for_bit():
    """Matrices made indefinite by round-off-sized eigenvalues walk several rungs; the merged
    ladder must give the very same bits as each solver's own loop did."""
    g = gen(5)
    walked = 0
    for trial in range(60):
        d = 3 + trial % 20
        Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=f64))
        e = torch.rand(d, generator=g, dtype=f64) * 3
        e[: 1 + trial % (d - 1)] = -(10.0 ** -(2 + trial % 9))
        H = (Q * e) @ Q.T
        if trial % 2:
            H[0, :] = H[:, 0] = 0.0  # a dead input channel
        for reference, ladder in ((_reference_sweep_ladder, {}), (_reference_gptq_ladder, GPTQ_LADDER)):
            want = reference(H)
            if want is None:
                with pytest.raises(CrossDistillError):
                    linalg.inverse_cholesky_upper(H, **ladder)
                continue
            walked += 1
            assert torch.equal(bits(linalg.inverse_cholesky_upper(H, **ladder)), bits(want)), (trial, ladder)
    assert walked > 60


# --- constrained solves ------------------------------------------------------------------------


def test_solve_right_is_the_least_squares_solution():
    X, Y, H, B = regression(6)
    assert torch.allclose(linalg.solve_right(B, H), brute_force(X, Y, torch.arange(X.shape[1])), atol=1e-9)


def test_solve_right_falls_back_to_a_minimiser_when_h_is_singular():
    X, Y, H, B = regression(7, n=6, d=12)  # fewer patches than inputs: H has rank 6
    assert linalg.cholesky(H) is None
    W = linalg.solve_right(B, H)
    assert torch.isfinite(W).all()
    assert torch.allclose(W @ H, B, atol=1e-8)  # zero gradient: a global minimiser


def test_solve_on_columns_equals_brute_force_and_keeps_zeros():
    X, Y, H, B = regression(8)
    for cols in (torch.tensor([0, 3, 4, 9]), torch.arange(12), torch.tensor([], dtype=torch.long)):
        W = linalg.solve_right_on_columns(B, H, cols)
        assert torch.allclose(W, brute_force(X, Y, cols), atol=1e-9)
        dropped = torch.ones(12, dtype=torch.bool)
        dropped[cols] = False
        assert torch.equal(W[:, dropped], torch.zeros_like(W[:, dropped]))
        p = QuadraticProblem(H=H, B=B, c=0.0, w_teacher=torch.zeros_like(B))
        assert torch.equal(p.solve_on(cols), W)


def test_solve_on_mask_solves_each_row_on_its_own_support():
    X, Y, H, B = regression(9, out=6)
    keep = torch.rand(6, 12, generator=gen(10)) > 0.5
    keep[1] = keep[0]  # a shared support: one factorisation, two rows
    keep[2] = False  # an empty row stays zero
    keep[3] = True
    W = linalg.solve_right_on_mask(B, H, keep)
    for i in range(6):
        cols = torch.nonzero(keep[i]).flatten()
        assert torch.allclose(W[i], brute_force(X, Y[:, i : i + 1], cols)[0], atol=1e-9)
    assert torch.equal(W[~keep], torch.zeros_like(W[~keep]))


def test_sqrt_and_inverse_sqrt():
    _, _, H, _ = regression(11)
    S, S_inv = linalg.sqrt_and_inverse_sqrt(H)
    assert torch.allclose(S @ S, H, rtol=1e-9, atol=1e-9)
    assert torch.allclose(S @ S_inv, torch.eye(12, dtype=f64), atol=1e-9)
    # A singular H still gets a finite inverse root (eigenvalues floored).
    assert torch.isfinite(linalg.sqrt_and_inverse_sqrt(singular_psd(12))[1]).all()


# --- the one unfold ----------------------------------------------------------------------------


def test_patches_and_unfold_are_one_im2col():
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=1, bias=False).double()
    x = torch.randn(2, 3, 7, 7, generator=gen(13), dtype=f64)
    P = patches(conv, x)
    rows = unfold(conv, x)
    assert P.shape == (2, 27, 16)
    assert torch.equal(P.transpose(1, 2).reshape(-1, 27), rows)
    # The rows are what the conv multiplies: Y = W X over every output position.
    y = conv(x).permute(0, 2, 3, 1).reshape(-1, 4)
    assert torch.allclose(rows @ conv.weight.reshape(4, -1).T, y, atol=1e-12)
    lin = nn.Linear(5, 2)
    z = torch.randn(3, 4, 5, generator=gen(14))
    assert torch.equal(unfold(lin, z), z.reshape(-1, 5))
    assert torch.equal(patches(lin, z)[0].T, z.reshape(-1, 5))


# --- the one damping policy --------------------------------------------------------------------


def test_resolve_damping_is_the_setting_or_auto_from_the_draw():
    five_shot = torch.arange(10).repeat(5)
    assert resolve_damping(None, five_shot) == auto_damping(5) == pytest.approx(0.02)
    assert resolve_damping(None, [0, 1, 2]) == pytest.approx(0.1)
    assert resolve_damping(None, torch.tensor([0, 0, 1, 1, 2, 2])) == pytest.approx(0.05)
    assert resolve_damping(0.0, five_shot) == 0.0
    assert resolve_damping(0.3, []) == 0.3  # a fixed setting needs no labels
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(CrossDistillError, match="damping"):
            resolve_damping(bad, five_shot)
    with pytest.raises(CrossDistillError, match="labels"):
        resolve_damping(None, [])


def test_the_engine_has_no_damping_policy_of_its_own():
    param = inspect.signature(distill_layers).parameters["damping"]
    assert param.kind is inspect.Parameter.KEYWORD_ONLY and param.default is inspect.Parameter.empty


def test_masked_rows_of_a_large_layer_by_cg_match_the_direct_solves():
    from crossdistill import linalg

    gen = torch.Generator().manual_seed(0)
    d, out = linalg.ITERATIVE_MIN_D, 12
    X = torch.randn(2 * d, d, generator=gen, dtype=torch.float64) * torch.linspace(0.2, 2.0, d, dtype=torch.float64)
    H = X.T @ X / X.shape[0] + 0.02 * torch.eye(d, dtype=torch.float64)
    B = torch.randn(out, d, generator=gen, dtype=torch.float64) @ H
    keep = torch.rand(out, d, generator=gen) > 0.5
    keep[3] = True  # a dense row and an empty one among them
    keep[4] = False
    exact = linalg._direct_on_mask(B, H, keep)

    def cost(W: torch.Tensor) -> float:  # loss above the unconstrained optimum B H⁻¹
        E = W - torch.linalg.solve(H, B.T).T
        return float((E @ H * E).sum())

    # Stopped by the loss criterion: within a small multiple of CG_LOSS_TOL of the mask's cost.
    fast, done = linalg._masked_cg(B, H, keep)
    assert bool(done.all()) and torch.all(fast[~keep] == 0)
    assert 0 <= cost(fast) - cost(exact) <= 10 * linalg.CG_LOSS_TOL * cost(exact)
    # With that criterion off, every row runs to its residual tolerance: the direct answer.
    with mock.patch.object(linalg, "CG_LOSS_TOL", 0.0):
        tight, done = linalg._masked_cg(B, H, keep)
        assert bool(done.all())
        assert torch.allclose(tight, exact, rtol=0, atol=1e-8 * float(exact.abs().max()))
        # From a start near the answer (off the mask too: it must be masked) the same rows come back.
        near = exact + 1e-3 * torch.randn(exact.shape, generator=gen, dtype=torch.float64)
        warm, done = linalg._masked_cg(B, H, keep, start=near)
        assert bool(done.all()) and torch.all(warm[~keep] == 0)
        assert torch.allclose(warm, exact, rtol=0, atol=1e-8 * float(exact.abs().max()))


def test_masked_cg_is_preconditioned_by_the_inverse():
    # On a full mask (H⁻¹)_SS is H_SS⁻¹ itself: one iteration solves every row, where diag H
    # (Jacobi) needs many on this spread-out spectrum.
    from crossdistill import linalg

    gen = torch.Generator().manual_seed(1)
    d = 200
    X = torch.randn(2 * d, d, generator=gen, dtype=torch.float64) * torch.logspace(-2, 1, d, dtype=torch.float64)
    H = X.T @ X / X.shape[0] + 1e-3 * torch.eye(d, dtype=torch.float64)
    B = torch.randn(8, d, generator=gen, dtype=torch.float64) @ H
    W, done = linalg._masked_cg(B, H, torch.ones(8, d, dtype=torch.bool), max_iter=1)
    assert bool(done.all())
    assert torch.allclose(W, torch.linalg.solve(H, B.T).T, rtol=0, atol=1e-8)
    # A half mask is not solved in one step, but in far fewer than d.
    keep = torch.rand(8, d, generator=gen) > 0.5
    with mock.patch.object(linalg, "CG_LOSS_TOL", 0.0):
        _, done = linalg._masked_cg(B, H, keep, max_iter=d // 4)
    assert bool(done.all())


def test_cg_is_used_on_wide_layers_of_many_rows_and_falls_back_exactly():
    from crossdistill import linalg

    d = linalg.ITERATIVE_MIN_D
    gen = torch.Generator().manual_seed(0)
    assert linalg.uses_cg(torch.rand(512, 2 * d, generator=gen) > 0.2)
    assert not linalg.uses_cg(torch.rand(12, 2 * d, generator=gen) > 0.7)  # a DenseNet layer: few rows
    assert not linalg.uses_cg(torch.ones(512, d // 2, dtype=torch.bool))  # narrow: direct
    # CG stopped early: the unconverged rows are solved directly, the answer is still exact.
    X = torch.randn(d, d, generator=gen, dtype=torch.float64) * torch.linspace(0.01, 3.0, d, dtype=torch.float64)
    H = X.T @ X / d + 1e-4 * torch.eye(d, dtype=torch.float64)
    B = torch.randn(64, d, generator=gen, dtype=torch.float64) @ H
    keep = torch.rand(64, d, generator=gen) > 0.3
    W, done = linalg._masked_cg(B, H, keep, max_iter=3)
    assert not bool(done.all())
    exact = linalg._direct_on_mask(B, H, keep)
    import unittest.mock as mock

    with mock.patch.object(linalg, "CG_MAX_ITER", 3):
        got = linalg.solve_right_on_mask(B, H, keep)
    assert torch.allclose(got, exact, rtol=0, atol=1e-8 * float(exact.abs().max()))


def test_wide_sparse_solve_factorises_h_once_and_changes_nothing():
    # The SparseGPT mask then the masked re-solve need W* = B H⁻¹, H⁻¹'s upper factor and H⁻¹
    # as the CG's preconditioner: one Cholesky of H (plus the one of H⁻¹ the sweep needs), not
    # three, and the same student bit for bit as computing each from scratch.
    from crossdistill.solvers.base import LayerTask
    from crossdistill.solvers.sparse_obs import ClosedFormSparse

    g = gen(3)
    d, out = linalg.ITERATIVE_MIN_D, linalg.CG_MIN_ROWS
    X = torch.randn(2 * d, d, generator=g, dtype=f64) * torch.linspace(0.2, 2.0, d, dtype=f64)
    H = X.T @ X / X.shape[0] + 0.05 * torch.eye(d, dtype=f64)
    wt = torch.randn(out, d, generator=g, dtype=f64)
    B = wt @ H + 0.1 * torch.randn(out, d, generator=g, dtype=f64)
    problem = QuadraticProblem(H=H, B=B, c=0.0, w_teacher=wt)
    task = LayerTask(name="wide", params={"sparsity": 0.2})  # dense enough for the CG path
    real = torch.linalg.cholesky_ex
    calls: list[int] = []

    def counting(A, *args, **kwargs):
        calls.append(A.shape[0])
        return real(A, *args, **kwargs)

    with mock.patch.object(torch.linalg, "cholesky_ex", counting):
        got = ClosedFormSparse(sparse_mask="sparsegpt").solve(problem, task, nn.Identity()).weight
    assert calls == [d, d]  # H, then H⁻¹ for the sweep's upper factor

    # From scratch, every step factorising for itself (the problem's caches never filled).
    from crossdistill.solvers.sparse_obs import sparsegpt_sweep

    fresh = lambda: QuadraticProblem(H=H, B=B, c=0.0, w_teacher=wt)  # noqa: E731
    with mock.patch.object(QuadraticProblem, "inverse", None):
        start, keep = sparsegpt_sweep(fresh(), 0.2, "layer")
        assert linalg.uses_cg(keep)
        want = linalg.solve_right_on_mask(B, H, keep, start=start)
    assert torch.equal(got, want)


def test_sparse_rows_of_a_wide_layer_are_solved_directly_where_that_is_cheaper():
    # At high sparsity each row's support is small: one factorisation per row (Σ k³/3) costs less
    # than CG's products with the whole d×d H, and is exact.
    g = gen(4)
    d, out = 2 * linalg.ITERATIVE_MIN_D, linalg.CG_MIN_ROWS
    dense = torch.rand(out, d, generator=g) < 0.8
    sparse = torch.rand(out, d, generator=g) < 0.1
    assert linalg.uses_cg(dense) and not linalg.uses_cg(sparse)
    assert linalg.uses_cg(sparse.to("meta"))  # off the CPU (a GPU): CG's batched products, always
    X = torch.randn(d + 50, d, generator=g, dtype=f64)
    H = X.T @ X / X.shape[0] + 0.1 * torch.eye(d, dtype=f64)
    B = torch.randn(out, d, generator=g, dtype=f64) @ H
    with mock.patch.object(linalg, "_masked_cg", side_effect=AssertionError("CG on a sparse mask")):
        W = linalg.solve_right_on_mask(B, H, sparse)
    rows = [0, out - 1]
    for i in rows:  # each row the exact minimiser on its own support
        cols = torch.nonzero(sparse[i]).flatten()
        want = torch.linalg.solve(H[cols][:, cols], B[i, cols])
        assert torch.allclose(W[i, cols], want, rtol=0, atol=1e-10 * float(want.abs().max()))
        assert torch.all(W[i][~sparse[i]] == 0)
