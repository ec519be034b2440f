"""One Adam step on a weight matrix, shared by the paper's channel and sparsity solvers (which
need the moments in hand to mask them, so torch.optim.Adam does not fit)."""
from __future__ import annotations

import torch


def adam_step(W: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, t: int, lr: float,
              betas: tuple[float, float], eps: float) -> None:
    """In place: update the moments m, v with gradient g and move W (step t counts from 1)."""
    b1, b2 = betas
    m.mul_(b1).add_(g, alpha=1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    W -= lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
