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

from dataclasses import dataclass, fields
from typing import Any, Sequence

import torch
from torch import nn

from crossdistill.compression.base import CompressionMethod
from crossdistill.compression.channel_pruning import ChannelPruning
from crossdistill.compression.low_rank import LowRank
from crossdistill.compression.quantization import Quantization, model_size_bytes
from crossdistill.engine import LayerRecord
from crossdistill.errors import CrossDistillError
from crossdistill.params import declared_params
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


@dataclass
class StagedMethod(CompressionMethod):
    """A sequence of methods, each run as its own pass (see the module docstring). Subclasses
    declare the settings of all their stages and build the stages from them."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._stages = self.build_stages()
        if not self._stages:
            raise CrossDistillError("a staged method needs at least one stage")

    def build_stages(self) -> list[Stage]:
        raise NotImplementedError

    @property
    def solver_family(self) -> str:  # type: ignore[override]
        return self._stages[0][0].solver_family

    def stages(self) -> list[Stage]:
        return list(self._stages)

    def prepare(self, example: torch.Tensor, damping: float = 0.0, capture: str = "all",
                device: torch.device | str = "cpu", *, output: str | None = None, output_kind: str = "auto") -> None:
        for stage, _ in self._stages:
            stage.prepare(example, damping, capture, device, output=output, output_kind=output_kind)

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


def stage_setting(cls: type, name: str) -> Any:
    """A stage's own declaration of a setting, so a staged method repeats no help text or range."""
    return next(f for f in fields(cls) if f.name == name)


def _settings(method: CompressionMethod, cls: type) -> dict[str, Any]:
    """The staged method's values of the settings `cls` declares."""
    return {p.name: getattr(method, p.name) for p in declared_params(cls) if hasattr(method, p.name)}


@dataclass
class ThenQuant(StagedMethod):
    """A first stage, then quantization of its result: the quantization settings declared once
    for every such method (each reusing Quantization's own declarations)."""

    bits: int = stage_setting(Quantization, "bits")
    quant_scheme: str = stage_setting(Quantization, "quant_scheme")
    quant_solver: str | None = stage_setting(Quantization, "quant_solver")
    quant_first: bool = stage_setting(Quantization, "quant_first")
    quant_last: bool = stage_setting(Quantization, "quant_last")

    def first_stage(self) -> CompressionMethod:
        raise NotImplementedError

    def build_stages(self) -> list[Stage]:
        quant = Quantization(**{k: v for k, v in _settings(self, Quantization).items() if k != "quant_solver"})
        return [(self.first_stage(), None), (quant, self.quant_solver)]


@dataclass
class ChannelsThenQuant(ThenQuant):
    name = "channels+quant"
    # Every setting of channel pruning, so that a FLOPs or parameter target and a global budget
    # work here as they do for `channels`.
    keep: float | str = stage_setting(ChannelPruning, "keep")
    refit: bool = stage_setting(ChannelPruning, "refit")
    prune_classifier: bool = stage_setting(ChannelPruning, "prune_classifier")
    prune_heads: bool = stage_setting(ChannelPruning, "prune_heads")
    flops: float | None = stage_setting(ChannelPruning, "flops")
    parameters: float | None = stage_setting(ChannelPruning, "parameters")
    budget: str = stage_setting(ChannelPruning, "budget")
    min_keep: float = stage_setting(ChannelPruning, "min_keep")
    budget_cost: str = stage_setting(ChannelPruning, "budget_cost")

    def first_stage(self) -> CompressionMethod:
        return ChannelPruning(**_settings(self, ChannelPruning))


@dataclass
class LowRankThenQuant(ThenQuant):
    name = "lowrank+quant"
    rank_ratio: float | None = stage_setting(LowRank, "rank_ratio")
    flops_ratio: float | None = stage_setting(LowRank, "flops_ratio")
    lowrank_first: bool = stage_setting(LowRank, "lowrank_first")
    lowrank_last: bool = stage_setting(LowRank, "lowrank_last")

    def first_stage(self) -> CompressionMethod:
        return LowRank(**_settings(self, LowRank))
