"""A moving average of the weights over the fine-tune's steps (setting `ema`)."""
from __future__ import annotations


import torch
from torch import nn

from crossdistill.checks import model_copy
from crossdistill.errors import CrossDistillError


class WeightAverage:
    """Exponential moving average of a model's floating-point state (parameters and BN buffers),
    with the usual warm-up min(decay, (1 + t) / (10 + t)) so early steps are not swamped by the start.
    The warm-up is the binding term until t = (10·decay − 1) / (1 − decay) (4490 steps at 0.998):
    in shorter runs the average covers roughly the last t/9 steps and `decay` only caps it."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        # Checked here too: benchmarks build one directly, outside FinetuneConfig.
        if not 0.0 < decay < 1.0:
            raise CrossDistillError(f"weight-average decay must lie in (0, 1), got {decay}")
        self.decay = float(decay)
        self.model = model_copy(model).eval()
        self.model.requires_grad_(False)
        self.updates = 0
        # state_dict() tensors share storage with the modules, so the pairs are bound once, not
        # looked up by name at every step (the fine-tune updates parameters in place).
        live = model.state_dict()
        self._pairs = [(avg, live[name]) for name, avg in self.model.state_dict().items()]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for avg, live in self._pairs:
            if avg.is_floating_point():
                avg.mul_(d).add_(live, alpha=1.0 - d)
            else:
                avg.copy_(live)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.model.state_dict())
