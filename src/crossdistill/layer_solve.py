"""One layer's solve from its moments: objective → quadratic problem → damping → solver.

A grouped conv (groups = G, depthwise when G = in channels) is G independent problems: the
output rows of group g read only group g's input channels, so the layer loss is a sum over
groups of tr(W_g H_g W_gᵀ) − 2 tr(B_g W_gᵀ) + c_g, with W_g the group's rows of the
(out, in/G·k²) weight matrix and H_g built from the group's own unfolded input columns
(`MomentAccumulator.finish_groups`). Each group is handed to the solver as a layer of its own
(its rows, its moments, its damping relative to its own mean diag H_g, its own task params), and
the rows are stitched back in group order, so every solver works on grouped convs unchanged.

A grouped conv that reads a pruned channel group (channel pruning of any graph) is the
exception: the kept channels are one choice across all its groups, and its columns are named
as those of a dense conv (channel c at columns c·k²…). It is solved as one problem on the
block-diagonal H and B of its groups (`block_diagonal`): rows of group g get zero cost and zero
gain from other groups' columns, so the solution keeps them at zero and equals the per-group
solves, while the channel choice sees every group at once.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch
from torch import nn

from crossdistill.moments import Moments
from crossdistill.objectives import Objective
from crossdistill.problem import QuadraticProblem
from crossdistill.solvers import LayerSolver, LayerTask

# How the groups' solver infos combine into the layer's record. Lists are per output row
# (quantization scales and zero points) and are concatenated in row order; the keys below are
# counts/losses that add up over groups, or fractions of groups that all have the same size;
# any other value that every group agrees on is kept once, one that differs is kept as a list
# with one entry per group.
SUMMED_INFO = ("rtn_rows", "loss_sweep")
AVERAGED_INFO = ("sparsity_solved",)


@dataclass
class SolvedLayer:
    weight: torch.Tensor  # (out, in/groups·k·k)
    info: dict[str, Any]
    loss_teacher_weight: float  # the layer's loss with the teacher's weight
    loss_after: float  # the loss of the solved weight (undamped)
    solve_seconds: float  # the solver alone


def solve_layer(
    groups: Sequence[Moments] | Sequence[QuadraticProblem],
    w_teacher: torch.Tensor,
    task: LayerTask,
    objective: Objective,
    solver: LayerSolver,
    student: nn.Module,
    damping: float,
) -> SolvedLayer:
    """Solve a layer whose moments, or problems already built from its inputs
    (problem_moments.py), are given per conv group (one entry for an ungrouped layer)."""
    w_t = w_teacher.to(torch.float64)

    def build(source: Moments | QuadraticProblem, w: torch.Tensor) -> QuadraticProblem:
        return source if isinstance(source, QuadraticProblem) else objective.build(source, w)

    if len(groups) > 1 and task.params.get("graph") is not None:
        return _solve_block_diagonal([build(m, w_g) for m, w_g in zip(groups, w_t.chunk(len(groups), 0))],
                                     task, solver, student, damping)
    if len(groups) == 1:
        exact = build(groups[0], w_t)
        start = time.perf_counter()
        outcome = solver.solve(exact.damped(damping), task, student)
        seconds = time.perf_counter() - start
        return SolvedLayer(outcome.weight, outcome.info, exact.loss(w_t), exact.loss(outcome.weight), seconds)
    rows = w_t.shape[0] // len(groups)
    weights, infos = [], []
    loss_t = loss_after = seconds = 0.0
    for g, moments in enumerate(groups):
        w_g = w_t[g * rows : (g + 1) * rows]
        exact = build(moments, w_g)
        start = time.perf_counter()
        outcome = solver.solve(exact.damped(damping), group_task(task, g), student)
        seconds += time.perf_counter() - start
        weights.append(outcome.weight)
        infos.append(outcome.info)
        loss_t += exact.loss(w_g)
        loss_after += exact.loss(outcome.weight)
    info = {**merge_group_infos(infos), "groups": len(groups)}
    return SolvedLayer(torch.cat(weights, 0), info, loss_t, loss_after, seconds)


def block_diagonal(problems: Sequence[QuadraticProblem]) -> QuadraticProblem:
    """One problem over all groups' columns: H, B and the teacher's weight block-diagonal."""
    H = torch.block_diag(*[p.H for p in problems])
    B = torch.block_diag(*[p.B for p in problems])
    w = torch.block_diag(*[p.w_teacher for p in problems])
    return QuadraticProblem(H=H, B=B, c=sum(p.c for p in problems), w_teacher=w)


def _solve_block_diagonal(problems: Sequence[QuadraticProblem], task: LayerTask, solver: LayerSolver,
                          student: nn.Module, damping: float) -> SolvedLayer:
    exact = block_diagonal(problems)
    # Each group damped against its own mean diag H, as the per-group solves are.
    damped = block_diagonal([p.damped(damping) for p in problems])
    start = time.perf_counter()
    outcome = solver.solve(damped, task, student)
    seconds = time.perf_counter() - start
    rows, cols = problems[0].B.shape
    blocks = [outcome.weight[g * rows:(g + 1) * rows, g * cols:(g + 1) * cols] for g in range(len(problems))]
    return SolvedLayer(torch.cat(blocks, 0), {**outcome.info, "groups": len(problems)},
                       exact.loss(exact.w_teacher), exact.loss(outcome.weight), seconds)


def group_task(task: LayerTask, g: int) -> LayerTask:
    """The task of conv group g: the layer's params with the group's own overrides."""
    params = dict(task.params)
    if task.group_params is not None:
        params.update(task.group_params[g])
    return replace(task, params=params, group_params=None)


def merge_group_infos(infos: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The layer's info from its groups' (see SUMMED_INFO for the rules)."""
    merged: dict[str, Any] = {}
    for key in infos[0]:
        values = [info.get(key) for info in infos]
        if key in SUMMED_INFO:
            merged[key] = sum(values)
        elif key in AVERAGED_INFO:
            merged[key] = sum(values) / len(values)
        elif all(isinstance(v, list) for v in values):
            merged[key] = [x for v in values for x in v]
        elif all(v == values[0] for v in values):
            merged[key] = values[0]
        else:
            merged[key] = values
    return merged
