"""The paper's solver: Adam on the layer loss with an annealed group hard-threshold.

As in the official implementation (facts from its scripts: 3000 iterations, Adam lr 1e-3 for
ResNet-56, 5e-4 for VGG-16): during the first third of the iterations the number of input
channels left is lowered linearly from all to `keep`, by zeroing the input-channel groups with
the smallest L2 norm; the zeroed groups stay masked (gradients and Adam moments too), and after
the first third the learning rate drops tenfold. The loss is the same quadratic the closed form
solves, evaluated through its moments: its gradient 2(W H − B) equals the full-batch gradient
over every few-shot patch, so no pass over the data is needed per iteration.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from crossdistill.problem import QuadraticProblem
from crossdistill.solvers.adam import AdamOptions, annealed_masked_adam
from crossdistill.solvers.base import AdamSolver, LayerOutcome, LayerTask, channel_columns


def adam_prox_channels(
    problem: QuadraticProblem,
    group: int,
    keep: int,
    opts: AdamOptions = AdamOptions(),
    *,
    fixed_kept: torch.Tensor | None = None,
    w_init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (W, kept channels). With `fixed_kept` the mask is fixed from the start and the
    run is plain masked Adam (the setting in which it must agree with the closed form)."""
    out, d = problem.B.shape
    n = d // group
    alive = torch.ones(n, dtype=torch.bool, device=problem.H.device)
    if fixed_kept is not None:
        alive[:] = False
        alive[fixed_kept] = True
    anneal = opts.iters // 3 if fixed_kept is None else -1

    def prune(t: int, W: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        # Group lasso's proximal step, annealed: the channel count falls linearly to `keep`.
        left = int((n - keep) * (anneal - t) / anneal) + keep
        if left >= int(alive.sum()):
            return None
        norms = W.reshape(out, n, group).pow(2).sum((0, 2))
        norms[~alive] = -1.0
        survivors = torch.topk(norms, left).indices
        alive[:] = False
        alive[survivors] = True
        return alive.repeat_interleave(group)[None, :]

    W, _ = annealed_masked_adam(problem, alive.repeat_interleave(group)[None, :], prune, anneal=anneal,
                                opts=opts, w_init=w_init)
    return W, torch.nonzero(alive).flatten()


@dataclass
class PaperChannels(AdamSolver):
    name = "paper"

    def solve(self, problem: QuadraticProblem, task: LayerTask, student: nn.Module) -> LayerOutcome:
        plan, keep = task.params.get("graph"), task.keep
        if plan is not None:
            gid = plan.sole_group(task, problem.B.shape[1])
            keep = plan.keep[gid]
        assert keep is not None
        W, kept = adam_prox_channels(problem, task.group, keep, AdamOptions(self.iters, self.lr))
        # Exactness check: columns outside the kept set must be zero.
        assert torch.all(W[:, _dropped_columns(kept, task.group, W.shape[1])] == 0)
        if plan is not None:
            plan.kept[gid] = kept.tolist()
        return LayerOutcome(weight=W, info={"kept": kept.tolist()})


def _dropped_columns(kept: torch.Tensor, group: int, d: int) -> torch.Tensor:
    mask = torch.ones(d, dtype=torch.bool, device=kept.device)
    mask[channel_columns(kept, group)] = False
    return torch.nonzero(mask).flatten()
