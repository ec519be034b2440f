"""What a layer solver is: given the layer's quadratic problem and its task, return a weight."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from crossdistill.params import Plugin, param
from crossdistill.problem import QuadraticProblem


@dataclass
class LayerTask:
    """One layer to solve. `keep` is the number of input channels kept (channel pruning);
    `producer`/`bn` name the layer whose output channels feed it (for criteria such as L1).
    `params` carries method-specific settings (sparsity, bits, rank...); a grouped conv is solved
    group by group, and `group_params[g]`, when given, overrides `params` for conv group g (e.g.
    group g's share of a per-layer count of zeros)."""

    name: str
    group: int = 1
    keep: int | None = None
    producer: str | None = None
    bn: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    group_params: list[dict[str, Any]] | None = None


@dataclass
class LayerOutcome:
    weight: torch.Tensor  # (out, in·k·k), the new student weight
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class LayerSolver(Plugin, ABC):
    """A dataclass whose settings are `params.param` fields (checked on construction, shown in
    `describe()`, the CLI and sweeps)."""

    kind = "solver"
    # False for solvers that ignore the layer loss (they keep the teacher's weights on a mask):
    # reports then name the solver alone, not an objective that had no effect.
    uses_objective: ClassVar[bool] = True

    @abstractmethod
    def solve(self, problem: QuadraticProblem, task: LayerTask, student: nn.Module) -> LayerOutcome: ...


def channel_columns(channels: torch.Tensor, group: int) -> torch.Tensor:
    """Weight-matrix columns of the given input channels (unfold order is channel-major)."""
    offs = torch.arange(group, device=channels.device)
    return (channels[:, None] * group + offs[None, :]).reshape(-1)


@dataclass
class AdamSolver(LayerSolver):
    """The paper's solvers: Adam with an annealed proximal step, these two settings."""

    iters: int = param(3000, "Adam iterations per layer", low=1)
    lr: float = param(1e-3, "Adam learning rate", low=0, low_open=True)
