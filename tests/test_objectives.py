"""Each objective's quadratic form must equal its loss computed directly from the data."""
import pytest
import torch

from crossdistill.errors import CrossDistillError
from crossdistill.moments import Moments
from crossdistill.objectives import OBJECTIVES, create_objective


def _data(seed=0, n=400, d=7, out=3):
    g = torch.Generator().manual_seed(seed)
    xt = torch.randn(n, d, generator=g, dtype=torch.float64)
    xs = xt + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    wt = torch.randn(out, d, generator=g, dtype=torch.float64)
    w = torch.randn(out, d, generator=g, dtype=torch.float64)
    m = Moments(tt=xt.T @ xt / n, ss=xs.T @ xs / n, ts=xt.T @ xs / n, count=n)
    return xt, xs, wt, w, m


def _mse(a, b):
    return float(((a - b) ** 2).sum() / a.shape[0])


def direct_loss(name, xt, xs, wt, w, mu=0.9, alpha=0.3, beta=0.6):
    lt, ls = xt @ wt.T, xs @ w.T
    if name == "nocross":
        return _mse(xt @ wt.T, xs @ w.T)
    if name == "correction":
        return _mse(xt @ wt.T, xt @ w.T)
    if name == "imitation":
        return _mse(xs @ wt.T, xs @ w.T)
    if name == "mixed":
        return mu * _mse(xt @ wt.T, xt @ w.T) + (1 - mu) * _mse(xs @ wt.T, xs @ w.T)
    if name == "soft":
        at = (1 - alpha) * xt + alpha * xs
        bs = (1 - beta) * xs + beta * xt
        return _mse(at @ wt.T, bs @ w.T)
    raise AssertionError(name)


# The settings direct_loss uses, given to the objectives that declare them (and only to those).
SETTINGS = {"mixed": {"mu": 0.9}, "soft": {"alpha": 0.3, "beta": 0.6}}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_quadratic_form_equals_direct_loss(name):
    xt, xs, wt, w, m = _data()
    obj = create_objective(name, **SETTINGS.get(name, {}))
    assert obj.settings() == SETTINGS.get(name, {})  # every setting it has is the one direct_loss uses
    prob = obj.build(m, wt)
    assert prob.loss(w) == pytest.approx(direct_loss(name, xt, xs, wt, w), rel=1e-9)


@pytest.mark.parametrize("alpha,beta,other", [(0, 0, "nocross"), (0, 1, "correction"), (1, 0, "imitation")])
def test_soft_reduces_to_the_hard_losses(alpha, beta, other):
    xt, xs, wt, w, m = _data(1)
    soft = create_objective("soft", alpha=alpha, beta=beta).build(m, wt)
    hard = create_objective(other).build(m, wt)
    assert torch.allclose(soft.H, hard.H) and torch.allclose(soft.B, hard.B)
    assert soft.loss(w) == pytest.approx(hard.loss(w), rel=1e-10)


@pytest.mark.parametrize("name", ["correction", "imitation", "mixed"])
def test_cross_losses_keep_teacher_weights_without_compression(name):
    _, _, wt, _, m = _data(2)
    prob = create_objective(name).build(m, wt)
    assert torch.allclose(prob.solve(), wt, atol=1e-8)


def test_nocross_optimum_differs_from_teacher_and_is_the_minimiser():
    _, _, wt, w, m = _data(3)
    prob = create_objective("nocross").build(m, wt)
    w_star = prob.solve()
    assert not torch.allclose(w_star, wt, atol=1e-3)
    assert prob.loss(w_star) < prob.loss(wt)
    assert torch.allclose(prob.gradient(w_star), torch.zeros_like(w_star), atol=1e-9)


@pytest.mark.parametrize("kw", [{"mu": 1.5}, {"mu": -0.1}])
def test_mu_out_of_range_rejected(kw):
    with pytest.raises(CrossDistillError, match=rf"objective mixed: mu must lie in \[0, 1\], got {kw['mu']}"):
        create_objective("mixed", **kw)


@pytest.mark.parametrize("kw", [{"alpha": 2.0}, {"beta": -1.0}])
def test_soft_parameters_out_of_range_rejected(kw):
    (name, value), = kw.items()
    with pytest.raises(CrossDistillError, match=rf"objective soft: {name} must lie in \[0, 1\], got {value}"):
        create_objective("soft", **kw)


@pytest.mark.parametrize("name,kw", [("mixed", {"beta": 0.5}), ("nocross", {"mu": 0.9}), ("soft", {"betta": 0.5})])
def test_settings_an_objective_does_not_declare_are_refused(name, kw):
    # Before, unknown keyword arguments were silently ignored: a typo ran the default.
    with pytest.raises(CrossDistillError, match=rf"objective {name}: unknown setting \['{next(iter(kw))}'\]"):
        create_objective(name, **kw)


def test_unknown_objective_named():
    with pytest.raises(CrossDistillError, match="unknown objective"):
        create_objective("nope")


def test_damping_pulls_towards_teacher():
    _, _, wt, _, m = _data(4)
    prob = create_objective("nocross").build(m, wt)
    far = prob.solve()
    near = prob.damped(100.0).solve()
    assert (near - wt).norm() < 0.2 * (far - wt).norm()
