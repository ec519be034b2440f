"""Round to nearest: the data-free baseline of post-training quantization.

It rounds the objective's unconstrained optimum W* onto the grid. For correction, imitation and
mixed W* is the teacher's weight, so this is plain RTN of the pretrained weights; for no-cross
and soft it is "solve, then round".
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from crossdistill.errors import CrossDistillError
from crossdistill.params import param
from crossdistill.problem import QuadraticProblem
from crossdistill.solvers.base import LayerOutcome, LayerSolver, LayerTask
from crossdistill.solvers.quant_grid import CLIPS, Grid, fit_grid, grid_info

GRID_SOURCES = ("target", "teacher")
# "auto": try each grid of CLIPS and keep, row by row, the one with the lowest layer loss.
SOLVER_CLIPS = CLIPS + ("auto",)


def quant_settings(task: LayerTask) -> tuple[int, str]:
    try:
        return int(task.params["bits"]), str(task.params["scheme"])
    except KeyError:
        raise CrossDistillError(f"layer {task.name!r}: a quantization task needs params 'bits' and 'scheme'") from None


def layer_grids(problem: QuadraticProblem, target: torch.Tensor, task: LayerTask, grid_from: str, clip: str) -> list[Grid]:
    bits, scheme = quant_settings(task)
    source = target if grid_from == "target" else problem.w_teacher
    return [fit_grid(source, bits, scheme, clip=c) for c in (CLIPS if clip == "auto" else (clip,))]


def best_rows(problem: QuadraticProblem, candidates: list[tuple[Grid, torch.Tensor]]) -> tuple[Grid, torch.Tensor, torch.Tensor]:
    """Row by row, the candidate (grid, quantized W) with the lowest layer loss. Exact because
    the loss is a sum over rows and every row has its own grid. Returns the combined grid, the
    combined weight and the index of the candidate each row took."""
    losses = torch.stack([row_losses(problem, W) for _, W in candidates])
    pick = torch.argmin(losses, 0)  # first candidate wins ties
    W = candidates[0][1].clone()
    scale = candidates[0][0].scale.clone()
    zp = candidates[0][0].zero_point.clone()
    for i, (grid, Wi) in enumerate(candidates[1:], start=1):
        rows = pick == i
        W[rows] = Wi[rows]
        scale[rows] = grid.scale[rows]
        zp[rows] = grid.zero_point[rows]
    g0 = candidates[0][0]
    return Grid(scale, zp, g0.bits, g0.scheme), W, pick


def row_losses(problem: QuadraticProblem, W: torch.Tensor) -> torch.Tensor:
    """The loss split by output row, up to a per-row constant: rows are independent because
    the grid is per row and tr(W H Wᵀ) − 2 tr(B Wᵀ) is a sum over rows."""
    W = W.to(problem.H.dtype)
    return ((W @ problem.H) * W).sum(1) - 2.0 * (problem.B * W).sum(1)


@dataclass
class RoundToNearest(LayerSolver):
    name = "rtn"
    clip: str = param("mse", "quantization grid clipping: mse, minmax, or auto (both, best per row)",
                      choices=SOLVER_CLIPS)
    grid_from: str = param("target", "quantization grid fitted to the unconstrained solution (target) or to "
                           "the teacher's weights", choices=GRID_SOURCES)

    def solve(self, problem: QuadraticProblem, task: LayerTask, student: nn.Module) -> LayerOutcome:
        target = problem.solve()
        grids = layer_grids(problem, target, task, self.grid_from, self.clip)
        grid, W, _ = best_rows(problem, [(g, g.quantize(target)) for g in grids])
        return LayerOutcome(weight=W, info=grid_info(grid))

