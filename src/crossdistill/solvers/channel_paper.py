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

import torch
from torch import nn

from crossdistill.problem import QuadraticProblem
from crossdistill.solvers.adam import adam_step
from crossdistill.solvers.base import LayerOutcome, LayerSolver, LayerTask, channel_columns


def adam_prox_channels(
    problem: QuadraticProblem,
    group: int,
    keep: int,
    *,
    iters: int = 3000,
    lr: float = 1e-3,
    fixed_kept: torch.Tensor | None = None,
    w_init: torch.Tensor | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (W, kept channels). With `fixed_kept` the mask is fixed from the start and the
    run is plain masked Adam (the setting in which it must agree with the closed form)."""
    dtype = torch.float32
    H = problem.H.to(dtype)
    B = problem.B.to(dtype)
    out, d = B.shape
    n = d // group
    # Mean squared error per output element, as the official loss; Adam barely cares, but eps does.
    scale = 1.0 / out
    W = (problem.w_teacher if w_init is None else w_init).to(dtype).clone()
    alive = torch.ones(n, dtype=torch.bool)
    if fixed_kept is not None:
        alive[:] = False
        alive[fixed_kept] = True
    col_mask = alive.repeat_interleave(group).to(dtype)[None, :]
    W *= col_mask
    m = torch.zeros_like(W)
    v = torch.zeros_like(W)
    anneal = iters // 3 if fixed_kept is None else -1
    for t in range(1, iters + 1):
        step_lr = lr if (fixed_kept is not None or t <= anneal) else lr * 0.1
        g = 2.0 * scale * (W @ H - B) * col_mask
        adam_step(W, g, m, v, t, step_lr, betas, eps)
        if t <= anneal:
            left = int((n - keep) * (anneal - t) / anneal) + keep
            if left < int(alive.sum()):
                norms = W.reshape(out, n, group).pow(2).sum((0, 2))
                norms[~alive] = -1.0
                survivors = torch.topk(norms, left).indices
                alive[:] = False
                alive[survivors] = True
                col_mask = alive.repeat_interleave(group).to(dtype)[None, :]
                W *= col_mask
                m *= col_mask
                v *= col_mask
    kept = torch.nonzero(alive).flatten()
    return W.to(problem.B.dtype) * col_mask.to(problem.B.dtype), kept


class PaperChannels(LayerSolver):
    name = "paper"

    def __init__(self, iters: int = 3000, lr: float = 1e-3) -> None:
        self.iters = iters
        self.lr = lr

    def solve(self, problem: QuadraticProblem, task: LayerTask, student: nn.Module) -> LayerOutcome:
        assert task.keep is not None
        W, kept = adam_prox_channels(problem, task.group, task.keep, iters=self.iters, lr=self.lr)
        # Exactness check: columns outside the kept set must be zero.
        assert torch.all(W[:, _dropped_columns(kept, task.group, W.shape[1])] == 0)
        return LayerOutcome(weight=W, info={"kept": kept.tolist()})

    def describe(self) -> str:
        return f"paper(adam,iters={self.iters},lr={self.lr:g})"


def _dropped_columns(kept: torch.Tensor, group: int, d: int) -> torch.Tensor:
    mask = torch.ones(d, dtype=torch.bool)
    mask[channel_columns(kept, group)] = False
    return torch.nonzero(mask).flatten()
