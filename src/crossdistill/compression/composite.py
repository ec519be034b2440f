"""Methods made of stages: e.g. `channels+quant` = channel pruning, then quantization of the
slimmed model, in one command.

The pipeline runs `method.stages()` in order (a plain method is one stage). Each stage is a
full layer-wise pass: plan, distil front to back, finalize. The teacher of stage 1 is the
pretrained model; the teacher of every later stage is the finished result of the stage before
(here the slimmed float student). It has to be: after slimming, the student's layers no longer
have the pretrained layers' shapes, so their inputs cannot be paired with the original
teacher's. Quantization then corrects its own error relative to the pruned float model, and
the pruning error was corrected against the original teacher in stage 1.

Solver per stage: a stage may name its solver (`quant_solver` for the quantization stage);
otherwise it uses `--solver` when that names one of its own solvers, and its
`default_solver` when `--solver` names a solver of another method (so `--solver paper` picks
the channel stage's solver without breaking the quantization stage).
"""
from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from crossdistill.compression.base import CompressionMethod
from crossdistill.compression.channel_pruning import ChannelPruning
from crossdistill.compression.low_rank import LowRank
from crossdistill.compression.quantization import Quantization, model_size_bytes
from crossdistill.engine import LayerRecord
from crossdistill.errors import CrossDistillError
from crossdistill.solvers import SOLVERS, LayerTask

Stage = tuple[CompressionMethod, "str | None"]


def stage_solver_name(stage: CompressionMethod, override: str | None, requested: str | None) -> str:
    """Which solver runs a stage (see the module docstring)."""
    if override:
        return override
    family = SOLVERS.get(stage.solver_family, {})
    default = getattr(stage, "default_solver", None)
    if requested is None:
        if default:
            return default
        raise CrossDistillError(f"no solver given for {stage.describe()}; choose from {sorted(family)}")
    if requested in family:
        return requested
    if default and any(requested in names for names in SOLVERS.values()):
        return default
    return requested  # unknown everywhere: create_solver names the choices


class StagedMethod(CompressionMethod):
    """A sequence of methods, each run as its own pass (see the module docstring)."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        if not stages:
            raise CrossDistillError("a staged method needs at least one stage")
        self._stages = list(stages)

    @property
    def solver_family(self) -> str:  # type: ignore[override]
        return self._stages[0][0].solver_family

    def stages(self) -> list[Stage]:
        return list(self._stages)

    def plan(self, model: nn.Module) -> list[LayerTask]:
        raise CrossDistillError(f"{self.describe()} runs in stages: call plan() on each of stages()")

    def finalize(self, model: nn.Module, records: Sequence[LayerRecord]) -> nn.Module:
        raise CrossDistillError(f"{self.describe()} runs in stages: call finalize() on each of stages()")

    def summary(self, model: nn.Module) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for stage, _ in self._stages:
            out.update(stage.summary(model))
        out["model_size"] = model_size_bytes(model)
        return out

    def describe(self) -> str:
        return "+".join(stage.describe() for stage, _ in self._stages)


class ChannelsThenQuant(StagedMethod):
    name = "channels+quant"

    def __init__(
        self, keep: float | str = 0.5, bits: int = 4, quant_scheme: str = "asymmetric", quant_solver: str | None = None,
        quant_first: bool = True, quant_last: bool = True,
    ) -> None:
        quant = Quantization(bits=bits, quant_scheme=quant_scheme, quant_first=quant_first, quant_last=quant_last)
        super().__init__([(ChannelPruning(keep=keep), None), (quant, quant_solver)])


class LowRankThenQuant(StagedMethod):
    name = "lowrank+quant"

    def __init__(
        self, rank_ratio: float | None = None, flops_ratio: float | None = None, bits: int = 4,
        quant_scheme: str = "asymmetric", quant_solver: str | None = None, lowrank_first: bool = False,
        lowrank_last: bool = False, quant_first: bool = True, quant_last: bool = True,
    ) -> None:
        low = LowRank(rank_ratio=rank_ratio, flops_ratio=flops_ratio, lowrank_first=lowrank_first,
                      lowrank_last=lowrank_last)
        quant = Quantization(bits=bits, quant_scheme=quant_scheme, quant_first=quant_first, quant_last=quant_last)
        super().__init__([(low, None), (quant, quant_solver)])
