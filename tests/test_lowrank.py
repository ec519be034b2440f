"""Low-rank factorisation: exactness at full rank, optimality of the truncation in the metric
H, rank budgets, the swapped modules and their persistence attribute."""
import copy

import pytest
import torch
from torch import nn

from crossdistill.compression.low_rank import (
    LOWRANK_ATTR,
    LowRank,
    LowRankLayer,
    factorise,
    lowrank_metadata,
    rank_for,
    restore_lowrank,
)
from crossdistill.config import CompressConfig
from crossdistill.engine import distill_layers
from crossdistill.errors import CrossDistillError
from crossdistill.evaluation import count_flops
from crossdistill.moments import Moments
from crossdistill.objectives import create_objective
from crossdistill.solvers import LayerTask, create_solver
from crossdistill.solvers.lowrank_svd import metric_truncation, truncate
from tiny import make_tiny


def images(n=24, seed=0):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def random_problem(seed, d=20, out=8, n=400, objective="nocross"):
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    mix = torch.eye(d, dtype=f64) + 0.6 * torch.randn(d, d, generator=g, dtype=f64)
    xt = torch.randn(n, d, generator=g, dtype=f64) @ mix
    xs = xt + 0.3 * torch.randn(n, d, generator=g, dtype=f64)
    wt = torch.randn(out, d, generator=g, dtype=f64)
    m = Moments(tt=xt.T @ xt / n, ss=xs.T @ xs / n, ts=xt.T @ xs / n, count=n)
    return create_objective(objective).build(m, wt)


@pytest.mark.parametrize(
    "layer",
    [
        nn.Conv2d(5, 7, 3, stride=2, padding=1, bias=True),
        nn.Conv2d(4, 6, (3, 1), padding=(1, 0), dilation=1, bias=False),
        nn.Linear(9, 5),
    ],
)
def test_full_rank_factorisation_reproduces_the_layer(layer):
    torch.manual_seed(0)
    full = min(layer.weight.shape[0], layer.weight[0].numel())
    fact = factorise(layer, full)
    x = torch.randn(3, 5, 9, 9) if isinstance(layer, nn.Conv2d) and layer.in_channels == 5 else (
        torch.randn(3, 4, 6, 6) if isinstance(layer, nn.Conv2d) else torch.randn(3, 9))
    with torch.no_grad():
        assert torch.allclose(fact(x), layer(x), atol=1e-5)
    assert fact.rank == full


def test_metric_truncation_at_full_rank_is_the_target():
    p = random_problem(0).damped(1e-3)
    target = p.solve()
    assert torch.allclose(metric_truncation(target, p.H, min(target.shape)), target, atol=1e-8)


@pytest.mark.parametrize("objective", ["nocross", "mixed", "correction"])
def test_truncation_in_metric_h_beats_plain_svd_on_the_h_loss(objective):
    for seed in range(5):
        p = random_problem(seed, objective=objective)
        target = p.solve()
        for r in (1, 3, 6):
            ours = metric_truncation(target, p.H, r)
            plain = truncate(p.w_teacher, r)
            assert torch.linalg.matrix_rank(ours) == r
            assert p.loss(ours) <= p.loss(plain) + 1e-9
            # And it is the optimum: no random rank-r perturbation of its factors does better.
            U, s, Vt = torch.linalg.svd(ours)
            for _ in range(5):
                A = U[:, :r] * s[:r] + 1e-3 * torch.randn(U.shape[0], r, dtype=ours.dtype)
                assert p.loss(A @ Vt[:r]) >= p.loss(ours) - 1e-9


def test_solvers_through_the_registry():
    p = random_problem(1, objective="mixed").damped(1e-3)
    task = LayerTask(name="l", params={"rank": 3})
    a = create_solver("lowrank", "svd").solve(p, task, None)
    b = create_solver("lowrank", "svd-plain").solve(p, task, None)
    assert a.info == b.info == {"rank": 3, "full_rank": 8}
    assert p.loss(a.weight) < p.loss(b.weight)
    with pytest.raises(CrossDistillError, match="rank"):
        create_solver("lowrank", "svd").solve(p, LayerTask(name="l", params={"rank": 9}), None)


def test_rank_budgets():
    assert rank_for(64, 576, rank_ratio=0.5, flops_ratio=None) == 32
    # FLOPs: r·(d + out) <= ratio · out·d
    r = rank_for(64, 576, rank_ratio=None, flops_ratio=0.5)
    assert r * (576 + 64) <= 0.5 * 64 * 576 < (r + 1) * (576 + 64)
    with pytest.raises(CrossDistillError, match="either"):
        LowRank(rank_ratio=0.5, flops_ratio=0.5)
    with pytest.raises(CrossDistillError, match="rank_ratio"):
        LowRank(rank_ratio=1.5)
    with pytest.raises(CrossDistillError, match="flops_ratio"):
        LowRank(flops_ratio=1.0)
    with pytest.raises(CrossDistillError, match="flops_ratio"):
        CompressConfig(flops_ratio=0.0).validate()
    # Layers that the rank would not make cheaper are left out; none left is an error.
    with pytest.raises(CrossDistillError, match="no layer gets cheaper"):
        LowRank(rank_ratio=1.0).plan(make_tiny())
    # Nothing that any rank could factorise: the error says why, not "lower the rank".
    encoder = nn.Sequential(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), nn.Linear(16, 4))
    with pytest.raises(CrossDistillError, match=r"whatever the rank: 0.self_attn.q_proj .*reads linear1.weight "
                       r"directly.*; and 1 more") as err:
        LowRank(rank_ratio=0.1).plan(encoder)
    assert "lower the rank" not in str(err.value)


def _lowrank_tiny(solver="svd", **kw):
    teacher = make_tiny()
    student = copy.deepcopy(teacher)
    method = LowRank(**kw)
    tasks = method.plan(student)
    recs = distill_layers(teacher, student, images(), tasks, create_objective("mixed"),
                          create_solver("lowrank", solver), damping=1e-3)
    dense = copy.deepcopy(student)
    return teacher, dense, method.finalize(student, recs), recs


def test_finalize_swaps_in_factors_with_identical_outputs_and_fewer_flops():
    teacher, dense, student, recs = _lowrank_tiny(flops_ratio=0.6)
    assert [r.name for r in recs] == ["conv2", "conv3"]  # first conv and classifier stay dense
    assert isinstance(student.conv2, LowRankLayer) and isinstance(student.conv1, nn.Conv2d)
    assert student.conv3[0].stride == (2, 2) and student.conv3[1].kernel_size == (1, 1)
    x = images(5, seed=4)
    with torch.no_grad():
        assert torch.allclose(student(x), dense(x), atol=1e-5)
    assert count_flops(student, (3, 8, 8)) < count_flops(teacher, (3, 8, 8))
    assert getattr(student, LOWRANK_ATTR) == {n: {"rank": r.info["rank"], "kind": "conv"} for n, r in
                                               zip(("conv2", "conv3"), recs)}
    # The factor module keeps the replaced layer's shape attributes (model.spec() reads them).
    assert student.conv2.in_channels == 6 and student.conv2.out_channels == 8


def test_restore_structure_then_load_state_dict():
    _, _, student, _ = _lowrank_tiny(rank_ratio=0.5, lowrank_last=True)
    meta = lowrank_metadata(student)
    assert meta["fc"] == {"rank": 2, "kind": "linear"}
    fresh = restore_lowrank(make_tiny(seed=3), meta)
    fresh.load_state_dict(student.state_dict())
    x = images(3, seed=8)
    with torch.no_grad():
        assert torch.equal(fresh(x.clone()), student(x))
