"""Channel solvers: exactness of the closed form, agreement with the paper's Adam solver,
and the greedy OBS selection against brute force."""
import itertools

import pytest
import torch

from crossdistill.errors import CrossDistillError
from crossdistill.moments import Moments
from crossdistill.objectives import create_objective
from crossdistill.problem import QuadraticProblem
from crossdistill.solvers import LayerTask, create_solver
from crossdistill.solvers.base import channel_columns
from crossdistill.solvers.adam import AdamOptions
from crossdistill.solvers.channel_paper import adam_prox_channels
from crossdistill.solvers.selection import select_obs


def problem(seed=0, n_ch=6, group=4, out=5, n=600, objective="nocross"):
    g = torch.Generator().manual_seed(seed)
    d = n_ch * group
    xt = torch.randn(n, d, generator=g, dtype=torch.float64) @ (torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(d, d, generator=g, dtype=torch.float64))
    xs = xt + 0.2 * torch.randn(n, d, generator=g, dtype=torch.float64)
    wt = torch.randn(out, d, generator=g, dtype=torch.float64)
    m = Moments(tt=xt.T @ xt / n, ss=xs.T @ xs / n, ts=xt.T @ xs / n, count=n)
    return create_objective(objective).build(m, wt)


def test_solve_on_is_the_constrained_minimiser():
    p = problem()
    kept = torch.tensor([0, 2, 3])
    cols = channel_columns(kept, 4)
    W = p.solve_on(cols)
    dropped = torch.ones(W.shape[1], dtype=torch.bool)
    dropped[cols] = False
    assert torch.all(W[:, dropped] == 0)
    # Zero gradient on the free columns, and any perturbation there increases the loss.
    assert torch.allclose(p.gradient(W)[:, cols], torch.zeros_like(W[:, cols]), atol=1e-9)
    delta = torch.zeros_like(W)
    delta[:, cols] = 1e-3 * torch.randn(W.shape[0], len(cols), dtype=W.dtype)
    assert p.loss(W + delta) > p.loss(W)


def test_loss_of_a_pruned_weight_equals_the_dense_formula():
    # loss() skips the zero columns of a pruned W; a wrong restriction would show here.
    p = problem(n_ch=8)
    W = torch.randn(p.B.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    W[:, channel_columns(torch.tensor([1, 4, 5]), 4)] = 0.0
    dense = float((W @ p.H * W).sum() - 2.0 * (p.B * W).sum() + p.c)
    assert p.loss(W) == pytest.approx(dense, rel=1e-12)
    assert p.loss(torch.zeros_like(W)) == pytest.approx(p.c, rel=1e-12)


@pytest.mark.parametrize("objective", ["nocross", "mixed"])
def test_paper_solver_with_fixed_mask_matches_closed_form(objective):
    p = problem(1, objective=objective)
    kept = torch.tensor([1, 2, 5])
    closed = p.solve_on(channel_columns(kept, 4))
    adam, kept_out = adam_prox_channels(p, 4, 3, AdamOptions(4000, 1e-2), fixed_kept=kept)
    assert kept_out.tolist() == kept.tolist()
    assert torch.allclose(adam, closed, atol=2e-3), (adam - closed).abs().max()
    assert p.loss(adam) == pytest.approx(p.loss(closed), rel=1e-4)


def test_paper_solver_anneals_to_the_requested_channel_count():
    p = problem(2)
    W, kept = adam_prox_channels(p, 4, 2, AdamOptions(600, 1e-2))
    assert len(kept) == 2
    zero_groups = (W.reshape(W.shape[0], 6, 4).abs().sum((0, 2)) == 0).sum()
    assert int(zero_groups) == 4


def test_closed_form_at_least_as_good_as_paper_solver_on_its_mask():
    p = problem(3)
    task = LayerTask(name="x", group=4, keep=3)
    paper = create_solver("channels", "paper", iters=600, lr=1e-2).solve(p, task, None)
    kept = torch.tensor(paper.info["kept"])
    closed = p.solve_on(channel_columns(kept, 4))
    assert p.loss(closed) <= p.loss(paper.weight) + 1e-9


def _best_subset_loss(p, keep, group=4, n_ch=6):
    return min(
        p.loss(p.solve_on(channel_columns(torch.tensor(s), group)))
        for s in itertools.combinations(range(n_ch), keep)
    )


def test_obs_single_removal_is_optimal():
    for seed in range(3):
        p = problem(seed)
        kept = select_obs(p, LayerTask(name="x", group=4, keep=5), None)
        got = p.loss(p.solve_on(channel_columns(kept, 4)))
        assert got == pytest.approx(_best_subset_loss(p, 5), rel=1e-9)


def test_obs_beats_weight_norm_selection_on_average():
    obs_total = norm_total = 0.0
    for seed in range(5):
        p = problem(seed)
        task = LayerTask(name="x", group=4, keep=3)
        for name in ("obs", "weight-norm"):
            out = create_solver("channels", "closed-form", selection=name).solve(p, task, None)
            if name == "obs":
                obs_total += p.loss(out.weight)
            else:
                norm_total += p.loss(out.weight)
    assert obs_total < norm_total


def test_prune_only_keeps_teacher_columns():
    p = problem(4)
    task = LayerTask(name="x", group=4, keep=3)
    out = create_solver("channels", "prune-only", selection="weight-norm").solve(p, task, None)
    cols = channel_columns(torch.tensor(out.info["kept"]), 4)
    assert torch.equal(out.weight[:, cols], p.w_teacher[:, cols])


def test_solvers_refuse_settings_they_do_not_declare():
    # Before, unknown keyword arguments were dropped: `iters` for the closed form ran as if unset.
    with pytest.raises(CrossDistillError, match=r"channels solver closed-form: unknown settings \['iters', 'lr'\]; "
                                                r"its settings are \['selection'\]"):
        create_solver("channels", "closed-form", iters=5, lr=1e-2)
    with pytest.raises(CrossDistillError, match=r"channels solver paper: unknown setting \['selection'\]"):
        create_solver("channels", "paper", selection="l1")
    with pytest.raises(CrossDistillError, match=r"solver closed-form: selection must be one of .*got 'nope'"):
        create_solver("channels", "closed-form", selection="nope")


@pytest.mark.parametrize("name", ["prune-only", "fskd"])
def test_prune_only_and_fskd_default_to_the_obs_selection(name):
    # What the pipeline always passed them; their describe() shows it.
    solver = create_solver("channels", name)
    assert solver.selection == "obs" and solver.describe() == f"{name}(selection=obs)"
    p, task = problem(5), LayerTask(name="x", group=4, keep=3)
    default = solver.solve(p, task, None)
    assert default.info["kept"] == create_solver("channels", name, selection="obs").solve(p, task, None).info["kept"]
