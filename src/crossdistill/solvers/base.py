"""What a layer solver is: given the layer's quadratic problem and its task, return a weight."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from crossdistill.problem import QuadraticProblem


@dataclass
class LayerTask:
    """One layer to solve. `keep` is the number of input channels kept (channel pruning);
    `producer`/`bn` name the layer whose output channels feed it (for criteria such as L1).
    `params` carries method-specific settings (sparsity, bits, rank...)."""

    name: str
    group: int = 1
    keep: int | None = None
    producer: str | None = None
    bn: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class LayerOutcome:
    weight: torch.Tensor  # (out, in·k·k), the new student weight
    info: dict[str, Any] = field(default_factory=dict)


class LayerSolver(ABC):
    name: str = ""

    @abstractmethod
    def solve(self, problem: QuadraticProblem, task: LayerTask, student: nn.Module) -> LayerOutcome: ...

    def describe(self) -> str:
        return self.name


def channel_columns(channels: torch.Tensor, group: int) -> torch.Tensor:
    """Weight-matrix columns of the given input channels (unfold order is channel-major)."""
    offs = torch.arange(group)
    return (channels[:, None] * group + offs[None, :]).reshape(-1)
