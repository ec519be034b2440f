"""What a compression method is: which layers to solve under which constraint, and what to do
with the solved model (e.g. physically remove pruned channels)."""
from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from crossdistill.compression.coverage import CompressionWarning, Coverage
from crossdistill.engine import LayerRecord
from crossdistill.errors import CrossDistillError, outside_stacklevel
from crossdistill.params import Plugin
from crossdistill.solvers import LayerTask


@dataclass
class CompressionMethod(Plugin, ABC):
    """A dataclass whose settings (how much to remove) are `params.param` fields."""

    kind = "compression method"
    # Which solver registry (crossdistill.solvers.SOLVERS) serves this method.
    solver_family: ClassVar[str] = ""
    # Solver used when --solver names a solver of another method (see compression/composite.py).
    default_solver: ClassVar[str] = ""
    # The conv/linear layers in the order one forward pass runs them, set by the pipeline before
    # `plan` (None when planned without running the model): what "the first conv" and "the
    # classifier" are, whatever order the model defines its modules in.
    layer_order: ClassVar[list[str] | None] = None
    # The convs that read the model's input itself (set with layer_order): "the first conv" of
    # each parallel branch of a stem; when empty, the first conv in layer_order.
    input_readers: ClassVar[list[str] | None] = None
    # The layers whose outputs make the predictions (the output the run scores; set with
    # layer_order, empty where they could not be followed): "the last layer" is the last of
    # them, not an auxiliary head the forward runs after the classifier.
    output_layers: ClassVar[list[str] | None] = None

    def prepare(self, example: torch.Tensor, damping: float = 0.0, capture: str = "all",
                device: torch.device | str = "cpu", *, output: str | None = None, output_kind: str = "auto") -> None:
        """Called with the few-shot images before `plan` (methods that trace the model keep one; a
        global channel budget measures its costs on all, with the run's damping, capture and
        device, and its 'output' cost reads the predictions the run's output/output_kind name)."""

    @abstractmethod
    def plan(self, model: nn.Module) -> list[LayerTask]: ...

    def leave_out(self, names: Sequence[str], reason: str) -> None:
        """Planned layers the run cannot solve, found by running the model: ones the forward pass
        (eval mode) never runs, e.g. a training-only auxiliary head. A method whose report lists
        every layer (compression/coverage.py) leaves them as they are and says so; others refuse."""
        coverage: Coverage | None = getattr(self, "_coverage", None)
        if coverage is None:
            raise CrossDistillError(f"layers {list(names)}: {reason}")
        for name in names:
            coverage.skip(name, reason)
        warnings.warn(f"{self.name}: left uncompressed, {reason}: " + ", ".join(names), CompressionWarning, stacklevel=outside_stacklevel())

    def finalize(self, model: nn.Module, records: Sequence[LayerRecord]) -> nn.Module:
        return model

    def summary(self, model: nn.Module) -> dict[str, Any]:
        """Extra top-level report entries measured on the final student (e.g. sparsity)."""
        return {}

    def stages(self) -> list[tuple["CompressionMethod", str | None]]:
        """The passes the pipeline runs, each (method, solver name or None); a composite method
        such as channels+quant returns several (compression/composite.py)."""
        return [(self, None)]
