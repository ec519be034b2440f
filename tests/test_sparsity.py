"""Unstructured sparsity: exact ratios, the second-order solvers against magnitude pruning and
against each other, the paper's Adam solver against the exact per-row closed form, the
compression method on a tiny network, and validation."""
import copy

import pytest
import torch

from crossdistill.compression import create_method
from crossdistill.compression.weight_sparsity import get_masks, prunable_layers
from crossdistill.config import CompressConfig
from crossdistill.engine import distill_layers
from crossdistill.errors import CrossDistillError
from crossdistill.moments import Moments
from crossdistill.objectives import create_objective
from crossdistill.solvers import LayerTask, create_solver
from crossdistill.solvers.sparse_masks import solve_rows_on_mask, sparsity_mask
from crossdistill.solvers.sparse_obs import obc_masks, sparsegpt_sweep
from crossdistill.solvers.adam import AdamOptions
from crossdistill.solvers.sparse_paper import adam_prox_sparse
from tiny import make_tiny


def problem(seed=0, d=36, out=6, n=800, objective="mixed", damping=1e-3):
    """Correlated inputs (like neighbouring pixels) whose scales differ from column to column
    (like channels after BN and ReLU), and a student input that drifted from the teacher's.
    The spread of scales matters: with equal scales and strong correlations the sweep, which
    only compensates to its right, can lose to magnitude pruning; the greedy OBS mask does not."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(d, d, generator=g, dtype=torch.float64)
    scales = torch.exp(0.5 * torch.randn(d, generator=g, dtype=torch.float64))
    xt = (torch.randn(n, d, generator=g, dtype=torch.float64) @ mix) * scales
    xs = xt + 0.2 * torch.randn(n, d, generator=g, dtype=torch.float64) * scales
    wt = torch.randn(out, d, generator=g, dtype=torch.float64)
    m = Moments(tt=xt.T @ xt / n, ss=xs.T @ xs / n, ts=xt.T @ xs / n, count=n)
    return create_objective(objective).build(m, wt).damped(damping)


def task(sparsity, pattern="layer"):
    return LayerTask(name="x", params={"sparsity": sparsity, "pattern": pattern})


# The paper's Adam solver shortened for tests; the other sparse solvers have no iterations.
SOLVER_KW = {"paper": {"iters": 300, "lr": 1e-2}}


@pytest.mark.parametrize("solver", ["closed-form", "sparsegpt", "paper", "magnitude"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_sparsity_ratio_is_exact(solver, sparsity):
    p = problem(1, d=36, out=6)
    for pattern in ("layer", "row"):
        W = create_solver("sparsity", solver, **SOLVER_KW.get(solver, {})).solve(p, task(sparsity, pattern), None).weight
        zeros_per_row = (W == 0).sum(1)
        if pattern == "row":
            assert zeros_per_row.tolist() == [round(sparsity * 36)] * 6
        else:
            assert int(zeros_per_row.sum()) == round(sparsity * 36 * 6)


def test_mask_counts_exact_with_ties():
    scores = torch.zeros(4, 10)  # every score tied
    assert int((~sparsity_mask(scores, 0.7, "layer")).sum()) == 28
    assert (~sparsity_mask(scores, 0.7, "row")).sum(1).tolist() == [7] * 4


def test_sparsegpt_sweep_is_sparsegpt_for_a_given_mask():
    """For a fixed mask, the lazy-batch sweep equals its definition: column by column, fix the
    column, re-solve all columns to its right exactly with the left ones frozen."""
    p = problem(2, d=20, out=4)
    keep = sparsity_mask(torch.rand(4, 20, generator=torch.Generator().manual_seed(0)), 0.5, "row")
    W_ref = p.solve().clone()
    d = 20
    for j in range(d):
        W_ref[:, j] = torch.where(keep[:, j], W_ref[:, j], torch.zeros(4, dtype=W_ref.dtype))
        if j + 1 < d:
            L, R = slice(0, j + 1), slice(j + 1, d)
            rhs = p.B[:, R] - W_ref[:, L] @ p.H[L, R]
            W_ref[:, R] = torch.linalg.solve(p.H[R, R], rhs.T).T
    for blocksize in (1, 3, 7, 128):
        W, _ = sparsegpt_sweep(p, 0.5, "row", blocksize=blocksize, fixed_keep=keep)
        assert torch.allclose(W, W_ref, atol=1e-8), blocksize


def test_sparsegpt_at_zero_sparsity_is_the_unconstrained_optimum():
    p = problem(3)
    W, keep = sparsegpt_sweep(p, 0.0, "layer", blocksize=8)
    assert keep.all()
    assert torch.allclose(W, p.solve(), atol=1e-9)


@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_second_order_beats_magnitude_on_layer_loss(sparsity):
    for seed in range(3):
        p = problem(seed)
        t = task(sparsity)
        mag = p.loss(create_solver("sparsity", "magnitude").solve(p, t, None).weight)
        sweep = p.loss(create_solver("sparsity", "sparsegpt").solve(p, t, None).weight)
        obc = p.loss(create_solver("sparsity", "closed-form").solve(p, t, None).weight)
        assert sweep < mag
        assert obc < sweep


@pytest.mark.parametrize("pattern", ["layer", "row"])
def test_refinement_never_increases_loss(pattern):
    for seed in range(4):
        p = problem(seed)
        W, keep = sparsegpt_sweep(p, 0.6, pattern, blocksize=8)
        refined = solve_rows_on_mask(p, keep)
        assert torch.equal(refined == 0, ~keep)
        assert p.loss(refined) <= p.loss(W) + 1e-9
        out = create_solver("sparsity", "sparsegpt", refine=True).solve(p, task(0.6, pattern), None)
        assert p.loss(out.weight) <= out.info["loss_sweep"] + 1e-9


def test_auto_mask_is_obc_for_small_layers_and_the_sweep_for_large_ones(monkeypatch):
    import crossdistill.solvers.sparse_obs as so

    p, t = problem(2), task(0.7)
    auto = create_solver("sparsity", "closed-form")
    obc = create_solver("sparsity", "closed-form", sparse_mask="obc")
    sweep = create_solver("sparsity", "closed-form", sparse_mask="sparsegpt")
    small = auto.solve(p, t, None)
    assert small.info["mask"] == "obc" and torch.equal(small.weight, obc.solve(p, t, None).weight)
    out, d = p.B.shape
    monkeypatch.setattr(so, "OBC_AUTO_LIMIT", out * float(d) ** 3 - 1)  # this layer is now "large"
    large = auto.solve(p, t, None)
    assert large.info["mask"] == "sparsegpt" and torch.equal(large.weight, sweep.solve(p, t, None).weight)


def test_row_solve_is_the_constrained_minimiser():
    p = problem(5)
    keep = obc_masks(p, 0.7, "layer")
    W = solve_rows_on_mask(p, keep)
    # Zero gradient on the support: nothing kept can move to lower the loss.
    assert torch.allclose(p.gradient(W)[keep], torch.zeros(int(keep.sum()), dtype=W.dtype), atol=1e-8)


@pytest.mark.parametrize("objective", ["nocross", "mixed"])
def test_paper_solver_with_fixed_mask_matches_closed_form(objective):
    p = problem(6, d=18, out=4, objective=objective)
    keep = sparsity_mask(p.w_teacher.abs(), 0.6, "layer")
    closed = solve_rows_on_mask(p, keep)
    adam, keep_out = adam_prox_sparse(p, 0.6, opts=AdamOptions(4000, 1e-2), fixed_mask=keep)
    assert torch.equal(keep_out, keep)
    assert torch.equal(adam == 0, ~keep)
    assert torch.allclose(adam, closed, atol=2e-3), (adam - closed).abs().max()
    assert p.loss(adam) == pytest.approx(p.loss(closed), rel=1e-4)


def test_paper_solver_anneals_to_the_target_and_reconstructs():
    p = problem(7)
    W, keep = adam_prox_sparse(p, 0.75, "layer", AdamOptions(600, 1e-2))
    assert int((W == 0).sum()) == round(0.75 * W.numel())
    assert torch.equal(W == 0, ~keep)
    mag = create_solver("sparsity", "magnitude").solve(p, task(0.75), None).weight
    assert p.loss(W) < p.loss(mag)


def test_magnitude_keeps_teacher_weights():
    p = problem(8)
    W = create_solver("sparsity", "magnitude").solve(p, task(0.5), None).weight
    keep = W != 0
    assert torch.equal(W[keep], p.w_teacher[keep])
    assert p.w_teacher[keep].abs().min() >= p.w_teacher[~keep].abs().max()


def images(n=16, seed=0):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def sparse_tiny(sparsity=0.6, solver="closed-form", pattern="layer"):
    teacher = make_tiny()
    student = copy.deepcopy(teacher)
    method = create_method("sparsity", sparsity=sparsity, sparsity_pattern=pattern)
    tasks = method.plan(student)
    recs = distill_layers(teacher, student, images(), tasks, create_objective("mixed"),
                          create_solver("sparsity", solver, **SOLVER_KW.get(solver, {})), damping=1e-3)
    return teacher, method.finalize(student, recs), recs, method


def test_method_prunes_every_conv_but_the_first_and_measures_sparsity():
    teacher, student, recs, method = sparse_tiny(0.6)
    assert [r.name for r in recs] == ["conv2", "conv3"] == prunable_layers(teacher)
    assert torch.equal(student.conv1.weight, teacher.conv1.weight)
    masks = get_masks(student)
    assert sorted(masks) == ["conv2", "conv3"]
    for r in recs:
        w = student.get_submodule(r.name).weight
        assert r.info["sparsity"] == pytest.approx(round(0.6 * w.numel()) / w.numel())
        assert torch.equal(masks[r.name], w != 0)
        assert w.shape == teacher.get_submodule(r.name).weight.shape  # dense shape kept
    s = method.summary(student)["sparsity"]
    assert s["zeros"] == sum(int((~m).sum()) for m in masks.values())
    assert s["pruned_layers"] == pytest.approx(s["zeros"] / s["weights"])
    assert 0 < s["all_weights"] < s["pruned_layers"]


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, "x"])
def test_bad_sparsity_rejected(bad):
    with pytest.raises(CrossDistillError, match="sparsity"):
        create_method("sparsity", sparsity=bad)
    if not isinstance(bad, str):
        with pytest.raises(CrossDistillError, match="sparsity"):
            CompressConfig(sparsity=bad).validate()


def test_bad_pattern_and_missing_ratio_rejected():
    with pytest.raises(CrossDistillError, match="pattern"):
        create_method("sparsity", sparsity=0.5, sparsity_pattern="column")
    with pytest.raises(CrossDistillError, match="sparsity"):
        create_solver("sparsity", "sparsegpt").solve(problem(0), LayerTask(name="x"), None)
    with pytest.raises(CrossDistillError, match="sparse_mask"):
        create_solver("sparsity", "closed-form", sparse_mask="random")


def test_pipeline_reports_measured_sparsity_and_keeps_it_through_the_finetune():
    from crossdistill.pipeline import FewShot, compress

    teacher = make_tiny()
    cfg = CompressConfig(model="tiny", prune="sparsity", sparsity=0.7, solver="closed-form",
                         finetune_epochs=4, finetune_lr=1e-2, finetune_mode="kd",
                         finetune_kd_weight=0.5).validate()
    fs = FewShot(images=images(), labels=torch.arange(16) % 4, indices=None)
    result = compress(teacher, fs, cfg, show_progress=False)
    student = result.student
    assert result.finetune["steps"] == 4
    s = result.summary["sparsity"]
    assert s["target"] == 0.7
    zeros = sum(int((student.get_submodule(n).weight == 0).sum()) for n in ("conv2", "conv3"))
    assert s["zeros"] == zeros == round(0.7 * 6 * 9 * 8) + round(0.7 * 8 * 9 * 5)
    for r in result.records:
        assert r.info["sparsity"] == pytest.approx(0.7, abs=0.01)
    for name, m in get_masks(student).items():
        assert torch.all(student.get_submodule(name).weight[~m] == 0)


def _obc_rows_eager(W: torch.Tensor, Hinv: torch.Tensor, steps: int):
    """Greedy OBS per row with the whole inverse downdated at every step: the reference."""
    n, d = W.shape
    W, Hinv = W.clone(), Hinv.expand(n, d, d).clone()
    alive = torch.ones(n, d, dtype=torch.bool)
    order, incr = torch.zeros(n, steps, dtype=torch.long), torch.zeros(n, steps, dtype=W.dtype)
    for t in range(steps):
        for r in range(n):
            diag = torch.diagonal(Hinv[r])
            score = W[r].pow(2) / diag
            score[~alive[r]] = float("inf")
            j = int(torch.argmin(score))
            order[r, t], incr[r, t] = j, score[j]
            row = Hinv[r, j].clone()
            W[r] -= W[r, j] / row[j] * row
            W[r, j] = 0.0
            Hinv[r] -= torch.outer(row, row) / row[j]
            alive[r, j] = False
    return order, incr


@pytest.mark.parametrize("rank", [1, 3, 32])
def test_lazy_obc_removes_what_the_eager_downdates_remove(rank):
    from crossdistill.solvers.sparse_obs import _obc_rows

    p = problem(11, d=40, out=3)
    Hinv = torch.linalg.inv(p.H)
    W = p.B @ Hinv
    want_order, want_incr = _obc_rows_eager(W, Hinv, 38)  # past several compactions and flushes
    order, incr = _obc_rows(W, Hinv, 38, rank=rank)
    assert torch.equal(order, want_order)
    torch.testing.assert_close(incr, want_incr, rtol=1e-7, atol=1e-12)


def test_a_sparsity_that_short_rows_cannot_reach_is_named():
    """sparsity 0.9 on depthwise 3x3 filters (9 weights a row, one kept) reached 0.889 with no word
    beyond the numbers in the report."""
    import warnings

    import crossdistill
    from torch import nn

    from crossdistill.compression.coverage import CompressionWarning

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16),
                          nn.ReLU(), nn.Conv2d(16, 16, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 4)).eval()
    x, y = torch.randn(24, 3, 8, 8), torch.arange(24) % 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, report = crossdistill.compress(model, x, labels=y, shots=3, method="sparsity", sparsity=0.9,
                                          show_progress=False)
    said = [str(w.message) for w in caught if issubclass(w.category, CompressionWarning)]
    assert any("sparsity 0.9 was not reached in 1 layer (2 0.889" in m for m in said), said
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        crossdistill.compress(model, x, labels=y, shots=3, method="sparsity", sparsity=0.5, show_progress=False)
    assert not [w for w in caught if "was not reached" in str(w.message)]
