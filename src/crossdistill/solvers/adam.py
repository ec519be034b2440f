"""One Adam step on a weight matrix, shared by the paper's channel and sparsity solvers (which
need the moments in hand to mask them, so torch.optim.Adam does not fit)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from crossdistill.problem import QuadraticProblem


def adam_step(W: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, t: int, lr: float,
              betas: tuple[float, float], eps: float) -> None:
    """In place: update the moments m, v with gradient g and move W (step t counts from 1)."""
    b1, b2 = betas
    m.mul_(b1).add_(g, alpha=1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    W -= lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)


@dataclass(frozen=True)
class AdamOptions:
    """Settings of the paper's annealed proximal Adam (the defaults of the official code)."""

    iters: int = 3000
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


# prune(t, W, mask) -> the new mask, or None to keep the current one.
PruneStep = Callable[[int, torch.Tensor, torch.Tensor], "torch.Tensor | None"]


def annealed_masked_adam(problem: QuadraticProblem, mask: torch.Tensor, prune: PruneStep, *, anneal: int,
                         opts: AdamOptions, w_init: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam on the layer loss with the weights outside `mask` held at zero, in float32 as the
    official code. For the first `anneal` steps `prune` may shrink the mask (the proximal step);
    after them the learning rate drops tenfold. anneal < 0: a fixed mask at constant lr (the
    setting in which it must agree with the exact solve on that mask). Returns (W, mask)."""
    dtype = torch.float32
    H = problem.H.to(dtype)
    B = problem.B.to(dtype)
    # Mean squared error per output element, as the official loss: it sets the size of Adam's eps.
    scale = 1.0 / B.shape[0]
    W = (problem.w_teacher if w_init is None else w_init).to(dtype).clone()
    mask = mask.to(dtype)
    W *= mask
    m = torch.zeros_like(W)
    v = torch.zeros_like(W)
    for t in range(1, opts.iters + 1):
        step_lr = opts.lr if (anneal < 0 or t <= anneal) else opts.lr * 0.1
        g = 2.0 * scale * (W @ H - B) * mask
        adam_step(W, g, m, v, t, step_lr, opts.betas, opts.eps)
        W *= mask
        if t <= anneal:
            new = prune(t, W, mask)
            if new is not None:
                mask = new.to(dtype)
                W *= mask
                m *= mask
                v *= mask
    return (W * mask).to(problem.B.dtype), mask
