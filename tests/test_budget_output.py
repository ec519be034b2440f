"""The global budget's 'output' cost (compression/budget_output.py): the outputs' distillation
loss with a group's units removed and its readers re-solved on one half of the images, scored on
the other half."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from crossdistill.compression.budget_output import OutputCost, _write_columns, resolved_columns
from crossdistill.compression.channel_pruning import ChannelPruning
from crossdistill.config import CompressConfig
from crossdistill.errors import CrossDistillError
from crossdistill.pipeline import compress
from crossdistill.problem import QuadraticProblem
from test_graph_channels import build
from test_graph_pruning import fewshot_for


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.head = nn.Linear(6 * 6 * 6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv2(torch.relu(self.conv1(x)))).flatten(1))


def _net_and_images(n: int = 10) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return _Net().eval().double(), torch.randn(n, 3, 6, 6, dtype=torch.float64)


def _by_hand(model: nn.Module, images: torch.Tensor, removed: list[int], fit: slice, score: slice) -> float:
    """conv2 re-solved by least squares on the `fit` images without the removed input channels,
    then KL(teacher ‖ model) on the `score` images: written without the library's problems."""
    x = torch.relu(model.conv1(images[fit]))
    X = F.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 8 * 9)
    Y = X @ model.conv2.weight.reshape(6, -1).T  # the teacher's pre-bias output
    keep = [c for c in range(8 * 9) if c // 9 not in removed]
    W = torch.zeros(6, 8 * 9, dtype=torch.float64)
    W[:, keep] = torch.linalg.lstsq(X[:, keep], Y).solution.T
    student = copy.deepcopy(model)
    with torch.no_grad():
        student.conv2.weight.copy_(W.reshape(6, 8, 3, 3))
        log_t = torch.log_softmax(model(images[score]), 1)
        log_s = torch.log_softmax(student(images[score]), 1)
    return float((log_t.exp() * (log_t - log_s)).sum(1).mean())


def test_each_measured_point_is_the_kl_of_the_readers_fitted_on_one_half_and_scored_on_the_other():
    model, images = _net_and_images()
    cost = OutputCost(model, [images], damping=0.0)
    cols = {"conv2": list(range(8 * 9))}
    units = {"conv2": [list(range(c * 9, c * 9 + 9)) for c in range(8)]}
    order = [5, 2, 7, 0, 1, 3, 4, 6]
    curve = cost.curve(cols, units, order, 4)  # measured at k = 1, 2, 3, 4
    assert curve.shape == (5,) and curve[0] == 0
    halves = [(slice(0, None, 2), slice(1, None, 2)), (slice(1, None, 2), slice(0, None, 2))]
    measured = [sum(_by_hand(model, images, order[:k], fit, score) for fit, score in halves) / 2 for k in range(1, 5)]
    assert measured[3] < measured[2]  # a removal that helps on the other half: the curve does not fall
    for k in range(1, 5):
        assert float(curve[k]) == pytest.approx(max(measured[:k]), rel=1e-6, abs=1e-12)


def test_between_the_measured_points_the_curve_is_linear():
    model, images = _net_and_images()
    cost = OutputCost(model, [images], damping=0.0)
    cols = {"conv2": list(range(8 * 9))}
    units = {"conv2": [list(range(c * 9, c * 9 + 9)) for c in range(8)]}
    curve = cost.curve(cols, units, list(range(8)), 7)  # measured at 2, 4, 5, 7 (rounded quarters)
    assert float(curve[3]) == pytest.approx((float(curve[2]) + float(curve[4])) / 2)
    assert float(curve[6]) == pytest.approx((float(curve[5]) + float(curve[7])) / 2)
    assert float(curve[1]) == pytest.approx(float(curve[2]) / 2)


def test_the_model_is_left_as_it_was_even_when_its_forward_fails():
    model, images = _net_and_images()
    before = copy.deepcopy(model.state_dict())
    cost = OutputCost(model, [images], damping=0.0)
    cols = {"conv2": list(range(8 * 9))}
    units = {"conv2": [list(range(c * 9, c * 9 + 9)) for c in range(8)]}
    cost.curve(cols, units, list(range(8)), 3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    calls = []

    def fail(module, args, out):
        calls.append(1)
        raise RuntimeError("boom")

    handle = model.head.register_forward_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            cost._loss({"conv2": torch.zeros(6, 72, dtype=torch.float64)}, cols, cost.reference[0], cost.halves[0][1])
    finally:
        handle.remove()
    assert calls and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_resolved_columns_is_the_minimiser_on_the_kept_columns():
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    H = X.T @ X / 40
    w = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    problem = QuadraticProblem(H=H, B=w @ H, c=float((w @ H * w).sum()), w_teacher=w)
    W = resolved_columns(problem, [1, 4])
    assert torch.equal(W[:, [1, 4]], torch.zeros(3, 2, dtype=torch.float64))
    grad = problem.gradient(W)
    assert grad[:, [0, 2, 3, 5]].abs().max() < 1e-10  # stationary on the kept columns


def test_a_grouped_readers_columns_are_written_where_dense_weight_matrix_reads_them():
    from crossdistill.capture import dense_weight_matrix

    conv = nn.Conv2d(4, 6, 3, groups=2)
    before = conv.weight.detach().clone()
    dense = dense_weight_matrix(conv).double()
    _write_columns(conv, list(range(36)), dense)  # itself: nothing changes
    assert torch.allclose(conv.weight, before)
    cols = list(range(18, 27))  # input channel 2 (the second group's first)
    _write_columns(conv, cols, torch.zeros(6, 9, dtype=torch.float64))
    assert torch.equal(conv.weight[3:, 0], torch.zeros(3, 3, 3))
    assert torch.equal(conv.weight[:3], before[:3]) and torch.equal(conv.weight[3:, 1], before[3:, 1])


def test_fewer_than_four_images_are_refused():
    model, images = _net_and_images(3)
    with pytest.raises(CrossDistillError, match="at least 4 few-shot images"):
        OutputCost(model, [images], damping=0.0)


@pytest.mark.parametrize("key", ["resnet", "shufflenet"])
def test_a_run_with_the_output_cost_meets_the_uniform_plans_flops_and_names_its_cost(key):
    teacher, example = build(key)
    few = fewshot_for(example)
    cfg = CompressConfig(model=f"user-{key}", n_samples=len(few.labels), damping=0.01, keep=0.5, budget="global",
                         budget_cost="output")
    before = copy.deepcopy(teacher.state_dict())
    result = compress(teacher, few, cfg, show_progress=False)
    budget = result.summary["channel_budget"]
    assert budget["planned_flops"] <= budget["target_flops"] == pytest.approx(budget["uniform_flops"])
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert "budget_cost=output" in ChannelPruning(budget="global", budget_cost="output").describe()


class _Squeezing(nn.Module):
    """A head that squeezes its output: one sample gives no batch axis."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3))
        return self.head(y).squeeze()


@pytest.mark.parametrize("sizes", [(64, 3), (5, 1), (1, 1, 1, 1)])
def test_halves_are_taken_over_all_images_so_no_half_batch_is_a_lone_or_empty_sample(sizes):
    """Halving each batch gave a 3-image batch a half of one image (a squeezing model loses its
    batch axis) and a 1-image batch an empty half."""
    torch.manual_seed(0)
    model = _Squeezing().eval()
    batches = [torch.randn(n, 3, 6, 6) for n in sizes]
    cost = OutputCost(model, batches, damping=0.01)
    assert sum(b.shape[0] for _, score in cost.halves for b in score) == sum(sizes)
    assert all(b.shape[0] >= 2 for fit, score in cost.halves for b in [*fit, *score])
    cols = {"conv2": list(range(8 * 9))}
    units = {"conv2": [list(range(c * 9, c * 9 + 9)) for c in range(8)]}
    curve = cost.curve(cols, units, list(range(8)), 4)
    assert curve.shape == (5,) and bool(torch.isfinite(curve).all())


def test_a_reader_that_saw_no_rows_gives_a_zero_problem_not_a_crash():
    from crossdistill.engine import TeacherSideGram

    layer = nn.Conv2d(4, 3, 1)
    problem = TeacherSideGram(layer, [0, 2]).problem(0.0)
    assert problem.H.shape == (2, 2) and float(problem.H.abs().sum()) == 0.0
