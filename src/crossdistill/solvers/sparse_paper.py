"""The paper's unstructured solver and the prune-only baseline.

`paper`: Adam on the layer loss with an annealed magnitude hard threshold. Facts taken from the
official implementation (weight-pruning learner): the weights start at the teacher's; after
every Adam step during the first third of the iterations the layer is cut back to its largest
magnitudes, the kept fraction shrinking linearly from all to 1 − sparsity over the whole
layer; gradients and both Adam moments are masked so that pruned weights stay at zero. As in
solvers/channel_paper.py the learning rate drops tenfold after the first third, and the loss is
the same quadratic the closed form solves, evaluated through its moments (its gradient
2(W H − B) is the full-batch gradient over every few-shot patch).

`magnitude`: keep the teacher's largest weights, nothing reconstructed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from crossdistill.problem import QuadraticProblem
from crossdistill.solvers.adam import AdamOptions, annealed_masked_adam
from crossdistill.solvers.base import AdamSolver, LayerOutcome, LayerSolver, LayerTask
from crossdistill.solvers.sparse_masks import measured_sparsity, sparsity_mask, task_sparsity


def adam_prox_sparse(
    problem: QuadraticProblem,
    sparsity: float,
    pattern: str = "layer",
    opts: AdamOptions = AdamOptions(),
    *,
    fixed_mask: torch.Tensor | None = None,
    w_init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (W, keep mask). With `fixed_mask` the mask is fixed from the start and the run
    is plain masked Adam at constant lr (where it must agree with the exact per-row solve)."""
    keep = torch.ones_like(problem.w_teacher, dtype=torch.bool) if fixed_mask is None else fixed_mask.clone().bool()
    anneal = max(1, opts.iters // 3) if fixed_mask is None else -1

    def prune(t: int, W: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Magnitude pruning, annealed: the ratio of zeros grows linearly to `sparsity`.
        scores = W.abs()
        # Already-pruned weights must stay pruned, even where Adam left them at exactly 0
        # and a live weight ties with them.
        scores[mask == 0] = -1.0
        return sparsity_mask(scores, sparsity * t / anneal, pattern)

    W, mask = annealed_masked_adam(problem, keep, prune, anneal=anneal, opts=opts, w_init=w_init)
    return W, mask.bool()


@dataclass
class PaperSparse(AdamSolver):
    name = "paper"

    def solve(self, problem: QuadraticProblem, task: LayerTask, student: nn.Module) -> LayerOutcome:
        sparsity, pattern = task_sparsity(task.params)
        W, _ = adam_prox_sparse(problem, sparsity, pattern, AdamOptions(self.iters, self.lr))
        return LayerOutcome(weight=W, info={"sparsity_solved": measured_sparsity(W)})



@dataclass
class MagnitudeSparse(LayerSolver):
    """Prune only: the teacher's largest-magnitude weights, unchanged."""

    name = "magnitude"
    uses_objective = False

    def solve(self, problem: QuadraticProblem, task: LayerTask, student: nn.Module) -> LayerOutcome:
        sparsity, pattern = task_sparsity(task.params)
        keep = sparsity_mask(problem.w_teacher.abs(), sparsity, pattern)
        W = torch.where(keep, problem.w_teacher, torch.zeros_like(problem.w_teacher))
        return LayerOutcome(weight=W, info={"sparsity_solved": measured_sparsity(W)})
