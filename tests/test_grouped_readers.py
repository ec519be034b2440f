"""A grouped conv that reads a pruned channel group: one block-diagonal problem over its groups,
equal to the groups solved one by one, and its teacher-side cost exact for grouped weights."""
from __future__ import annotations

import torch
from torch import nn

from crossdistill.capture import dense_weight_matrix, weight_matrix
from crossdistill.engine import teacher_side_problem
from crossdistill.layer_solve import block_diagonal
from crossdistill.problem import QuadraticProblem


def random_problem(rows: int, cols: int, seed: int) -> QuadraticProblem:
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(40, cols, generator=gen, dtype=torch.float64)
    H = X.T @ X / 40
    w = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    target = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    return QuadraticProblem(H=H, B=target @ H, c=float((target @ H * target).sum()), w_teacher=w)


def test_the_block_diagonal_solve_is_the_groups_solved_one_by_one():
    groups, rows, per_channel, channels = 3, 4, 9, 5  # a 3x3 conv, 5 input channels per group
    cols = per_channel * channels
    problems = [random_problem(rows, cols, g) for g in range(groups)]
    kept = [0, 2, 3]  # the same local channels in every group, as a unit spans one per group
    local = torch.tensor([c * per_channel + k for c in kept for k in range(per_channel)])
    together = block_diagonal(problems)
    columns = torch.cat([local + g * cols for g in range(groups)])
    W = together.solve_on(columns)
    for g, p in enumerate(problems):
        block = W[g * rows:(g + 1) * rows]
        torch.testing.assert_close(block[:, g * cols:(g + 1) * cols], p.solve_on(local), rtol=1e-9, atol=1e-9)
        off = torch.cat([block[:, : g * cols], block[:, (g + 1) * cols:]], 1)
        assert off.abs().max() < 1e-9  # no row uses another group's inputs
    per_group = sum(p.loss(W[g * rows:(g + 1) * rows, g * cols:(g + 1) * cols]) for g, p in enumerate(problems))
    assert abs(together.loss(W) - per_group) < 1e-8 * max(1.0, abs(per_group))


def test_a_grouped_readers_teacher_side_problem_keeps_its_rows_in_their_groups():
    """The cost of a grouped weight is the grouped conv's mean squared output change, and the
    best weight once a channel of each group is dropped stays grouped: other groups' columns
    cannot make up for it (they could if H's entries across groups were kept)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 6, 3, padding=1, groups=2, bias=False).double()
    x = torch.randn(5, 8, 6, 6, dtype=torch.float64)
    problem = teacher_side_problem(conv, [x], 0.0, list(range(8 * 9)))
    W_t = dense_weight_matrix(conv)
    assert W_t.shape == (6, 72) and not W_t[:3, 36:].any() and not W_t[3:, :36].any()
    torch.testing.assert_close(W_t[:3, :36], weight_matrix(conv)[:3])
    other = nn.Conv2d(8, 6, 3, padding=1, groups=2, bias=False).double()
    other.weight.data.copy_(conv.weight.detach() + 0.1 * torch.randn_like(conv.weight))
    with torch.no_grad():
        error = float(((other(x) - conv(x)) ** 2).sum()) / (5 * 36)  # per output position, rows summed
    # The Gram is accumulated from float32 products (as every layer's moments are).
    assert abs(problem.loss(dense_weight_matrix(other)) - error) < 1e-5 * error
    dropped = {c * 9 + k for c in (1, 5) for k in range(9)}  # channel 1 of each group
    live = torch.tensor([c for c in range(72) if c not in dropped])
    W = problem.solve_on(live)
    assert W[:3, 36:].abs().max() < 1e-9 and W[3:, :36].abs().max() < 1e-9
    assert W[:, sorted(dropped)].abs().max() == 0


class Straddling(nn.Module):
    """8 + 6 channels concatenated into a groups=2 conv of 14: the groups split at 7, inside the
    first part, so Torch-Pruning's units of the stem's group span one or two channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 1)
        self.g, self.g2 = nn.Conv2d(14, 12, 3, padding=1, groups=2), nn.Conv2d(12, 12, 1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = torch.cat([h, torch.relu(self.b(h))], 1)
        return self.fc(torch.relu(self.g2(torch.relu(self.g(h)))).mean((2, 3)))


def test_a_group_whose_units_straddle_conv_groups_is_left_whole_with_why():
    # The selection weighs units of equal column counts; such a group stopped the whole run.
    import numpy as np

    from crossdistill.config import CompressConfig
    from crossdistill.pipeline import FewShot, compress

    torch.manual_seed(0)
    few = FewShot(torch.randn(12, 3, 8, 8), torch.arange(12) % 3, np.arange(12))
    result = compress(Straddling().eval(), few, CompressConfig(model="user-straddling", n_samples=12, keep=0.5),
                      show_progress=False)
    groups = result.summary["channel_groups"]
    left = {tuple(g["producers"]): g["reason"] for g in groups["left_whole"]}
    assert "unequal channel sets" in left[("stem", "b")]
    assert [g["producers"] for g in groups["pruned"]] == [["g"]]  # the rest of the model still pruned
    assert result.student.g2.in_channels == 6


class GhostResidual(nn.Module):
    """A GhostNet block, x + cat([a, dw(a)]): a's channel i meets x's channel i through the cat
    and x's channel 8+i through the depthwise conv, two paths Torch-Pruning's one index map per
    layer cannot hold. Then a plain conv pair that can be pruned."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8))
        self.c1, self.c2 = nn.Conv2d(16, 12, 3, padding=1), nn.Conv2d(12, 12, 3, padding=1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        a = self.a(x)
        x = x + torch.cat([a, self.dw(a)], 1)
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3)))


def test_a_group_tied_along_two_paths_is_pruned_in_tied_units():
    # Torch-Pruning kept one root per layer index, so a's channel i belonged to x's unit 8+i only:
    # the slimmed model crashed (a BatchNorm of the wrong width) after every layer was solved.
    import numpy as np

    from crossdistill.compression.graph_channels import channel_groups
    from crossdistill.config import CompressConfig
    from crossdistill.pipeline import FewShot, compress

    torch.manual_seed(0)
    teacher = GhostResidual().eval()
    stem = next(g for g in channel_groups(teacher, torch.randn(2, 3, 8, 8)) if g.producers[0].name == "stem.0")
    units = {lc.name: lc.channels for lc in stem.producers}
    assert stem.width == 8 and units["stem.0"][3] == (3, 11) and units["a.0"][3] == (3,) and units["dw.0"][3] == (3,)
    few = FewShot(torch.randn(12, 3, 8, 8), torch.arange(12) % 3, np.arange(12))
    results = {solver: compress(teacher, few, CompressConfig(model="user-ghost", n_samples=12, keep=0.5,
                                                             solver=solver), show_progress=False)
               for solver in ("closed-form", "prune-only")}
    student = results["closed-form"].student
    assert [g["producers"] for g in results["closed-form"].summary["channel_groups"]["pruned"]] == [
        ["stem.0", "a.0", "dw.0"], ["c1"]]
    assert student.stem[0].out_channels == 8 and student.a[0].out_channels == 4 and student.dw[0].out_channels == 4
    assert student.a[0].in_channels == 8 and student.c1.in_channels == 8
    x = torch.randn(20, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        t = teacher(x)
        err = {k: float((r.student(x) - t).norm() / t.norm()) for k, r in results.items()}
    assert err["closed-form"] < err["prune-only"]


def test_a_group_whose_slimming_breaks_is_left_whole_before_any_solve(monkeypatch):
    # The last line of defence: a wrong index map (here the shuffle faked as the identity) is
    # found before any solve, the group left whole with why, instead of a crash at the very end.
    import numpy as np

    from crossdistill.compression import graph_trace
    from crossdistill.config import CompressConfig
    from crossdistill.pipeline import FewShot, compress
    from test_graph_channels import build

    monkeypatch.setattr(graph_trace, "_table", lambda t: lambda i: (i,))
    teacher, example = build("shufflenet")
    few = FewShot(torch.randn(12, *example.shape[1:]), torch.arange(12) % 3, np.arange(12))
    result = compress(teacher, few, CompressConfig(model="user-shuffle", n_samples=12, keep=0.5), show_progress=False)
    reasons = [g["reason"] for g in result.summary["channel_groups"]["left_whole"]]
    assert any(r.startswith("slimming it does not reproduce the masked model (") for r in reasons)
    assert result.summary["channel_groups"]["pruned"]
    with torch.no_grad():
        assert torch.isfinite(result.student(few.images)).all()
