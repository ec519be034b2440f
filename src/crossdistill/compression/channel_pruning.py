"""Channel pruning as a compression method: find the groups of coupled channels in the model's
graph (compression/graph_channels.py), let the first reader of each group choose its kept
units, re-solve every reader, then slim physically."""
from __future__ import annotations

from dataclasses import dataclass
import time
import warnings
from typing import Any, Callable, Sequence

import torch
from torch import nn

from crossdistill.compression.base import CompressionMethod
from crossdistill.compression.channels import paper_counts, refit_tasks
from crossdistill.compression.budget import allocate, removal_costs
from crossdistill.compression.coverage import CompressionWarning
from crossdistill.compression.flops import FlopModel
from crossdistill.distributed import on_main
from crossdistill.compression.graph_channels import ChannelGroup, slim_groups
from crossdistill.compression.graph_rules import LEGACY_RULES, current_rules, trace_rules
from crossdistill.compression.graph_plan import GraphChannelPlan, keep_counts, plan_graph_channels, plan_tasks
from crossdistill.engine import LayerRecord
from crossdistill.errors import CrossDistillError, outside_stacklevel
from crossdistill.params import param
from crossdistill.solvers import LayerTask


@dataclass
class ChannelPruning(CompressionMethod):
    name = "channels"
    solver_family = "channels"
    # What a composite's channel stage runs when --solver names another stage's solver (channels+quant --solver rtn).
    default_solver = "closed-form"

    keep: float | str = param(0.5, "ratio of each channel group kept (the input channels of the layers that "
                              "read it), or 'paper' (the paper code's ResNet-56 preset)",
                              low=0, low_open=True, high=1, words=("paper",))
    refit: bool = param(False, "also re-solve every ungrouped conv after the first that is not pruned (Linear "
                        "and grouped layers keep the teacher's weights)", show=False)
    prune_classifier: bool = param(False, "also prune the channels that the classifier reads", show=False)
    prune_heads: bool = param(True, "also prune attention heads, a head at a time (an nn.MultiheadAttention's q/k/v "
                              "rows and out_proj columns, or those of an attention written by hand), keeping the "
                              "same share as of channels",
                              show=False)
    flops: float | None = param(None, "instead of keep: the share of the teacher's FLOPs to keep (uniform budget: "
                                "one keep ratio for every group, found by bisection)", low=0, low_open=True, high=1)
    parameters: float | None = param(None, "instead of keep: the share of the teacher's parameters to keep (as "
                                 "flops; a global budget then weighs removal costs per parameter saved)",
                                 low=0, low_open=True, high=1)

    budget: str = param("uniform", "how the channels to remove are shared among the groups: uniform (the same "
                        "keep ratio everywhere) or global (the uniform plan's FLOPs, or the flops/parameters share "
                        "itself where the uniform plan falls more than 0.05 short of it, spent where the closed "
                        "form's removal cost per FLOP is lowest)", choices=("uniform", "global"))
    # min_keep 0.25 and cost 'norm' were chosen on a validation split (configs/channel_budget_val.yaml,
    # docs/results/channel_budget.md): 'norm' gained 3-10 points over uniform at K=1 where
    # 'absolute' lost points on ResNet-20 and 'relative' lost them on ResNet-56.
    min_keep: float = param(0.25, "global budget: the least share of a group's units that it keeps",
                            low=0, low_open=True, high=1)
    budget_cost: str = param("norm", "global budget: a group's removal cost as its readers' loss with each output "
                             "channel weighted by the gain of the BatchNorm after it (norm), the raw loss "
                             "(absolute), the loss over the reader's output energy (relative), or the "
                             "distillation loss of the model's outputs with the readers re-solved, fitted on "
                             "half the images and scored on the other half (output: a few forwards per group)",
                             choices=("norm", "absolute", "relative", "output"), show=False)

    def inactive(self) -> set[str]:
        return {"min_keep", "budget_cost"} if self.budget == "uniform" else set()

    def check(self) -> None:
        if self.flops is not None and self.parameters is not None:
            raise CrossDistillError("give either flops or parameters, not both")
        if (self.flops is not None or self.parameters is not None) and self.keep == "paper":
            raise CrossDistillError("give either flops/parameters or keep 'paper', not both")
        target = "flops" if self.flops is not None else "parameters" if self.parameters is not None else None
        if target and self.keep != 0.5:
            # The target decides the keep ratio; a keep of one's own would be dropped without a
            # word (0.5, the default, cannot be told from an unset keep).
            raise CrossDistillError(f"give either keep ({self.keep:g}) or {target} ({getattr(self, target):g}): "
                                    f"{target} sets the keep ratio itself")

    @property
    def _target(self) -> tuple[str, float] | None:
        if self.flops is not None:
            return "flops", self.flops
        if self.parameters is not None:
            return "params", self.parameters
        return None

    def __post_init__(self) -> None:
        super().__post_init__()
        self._images: torch.Tensor | None = None
        self._damping = 0.0
        self._capture = "all"
        self._device: torch.device | str = "cpu"
        self._output: tuple[str | None, str] = (None, "auto")
        self._plan: GraphChannelPlan | None = None
        self._budget: dict[str, Any] = {}

    @property
    def _example(self) -> torch.Tensor | None:
        return None if self._images is None else self._images[:1]

    def prepare(self, example: torch.Tensor, damping: float = 0.0, capture: str = "all",
                device: torch.device | str = "cpu", *, output: str | None = None, output_kind: str = "auto") -> None:
        self._images = example
        self._damping = damping
        self._capture = capture
        self._device = device
        self._output = (output, output_kind)

    def plan(self, model: nn.Module) -> list[LayerTask]:
        if self._example is None:
            raise CrossDistillError("channel pruning traces the model: call prepare(example_images) before plan()")
        named = paper_counts(model) if self.keep == "paper" else None
        target = self._target
        memo: dict[Any, Any] = {}  # one trace for every plan below: the model does not change meanwhile
        keep = self.keep if target is None else ratio_for_flops(model, self._example, target[1],
                                                                self.prune_classifier, measure=target[0],
                                                                prune_heads=self.prune_heads,
                                                                warn=self.budget == "uniform", memo=memo)
        counts = keep_counts(keep, model, named)
        if self.budget == "global":
            counts = self._global_counts(model, counts, memo)
        self._plan = plan_graph_channels(model, self._example, counts, prune_classifier=self.prune_classifier,
                                         prune_heads=self.prune_heads, memo=memo)
        if not self._plan.groups:
            raise nothing_to_prune(model, self._plan)
        tasks = plan_tasks(self._plan, model)
        if self.refit:
            tasks += refit_tasks(model, tasks)
        return tasks

    def finalize(self, model: nn.Module, records: Sequence[LayerRecord]) -> nn.Module:
        assert self._plan is not None and self._example is not None
        kept = dict(self._plan.kept)
        user_model = getattr(model, "crossdistill_name", None) is None
        rules = _oldest_rules(model, self._example, self._plan, kept) if user_model else current_rules()
        model = slim_groups(model, self._example, kept)
        if user_model:
            # The registry rebuilds a registered model from its spec; a user's factory builds the
            # full model, which loading slims again with this record (persistence/codecs/slim.py).
            size = list(self._example.shape[1:])
            record = getattr(model, "crossdistill_slim", None)
            if record:
                # A student pruned again: its group ids are those of the slimmed model, so loading
                # replays this stage after the earlier ones, not instead of them.
                model.crossdistill_slim = {**record, "then": [*record.get("then", []),
                                                              {"input_size": size, "kept": kept, "trace": rules}]}
            else:
                model.crossdistill_slim = {"input_size": size, "kept": kept, "trace": rules,
                                           **({} if self._example.is_floating_point() else {"input_dtype": "int64"})}
        return model

    def _global_counts(self, model: nn.Module, uniform: Callable[[ChannelGroup], int | None],
                       memo: dict[Any, Any]) -> Callable[[ChannelGroup], int | None]:
        """Units kept per group under a global budget at the FLOPs of the uniform plan (compression/budget.py),
        or at the asked share where the uniform plan falls short of it by more than UNDERSHOOT."""
        assert self._images is not None and self._example is not None
        start = time.perf_counter()
        full = plan_graph_channels(model, self._example, lambda g: g.width, prune_classifier=self.prune_classifier,
                                   prune_heads=self.prune_heads, memo=memo)
        fm_measure = "params" if self.parameters is not None else "flops"
        fm = _cost_model(model, self._example, full.groups, fm_measure, memo)
        removed_uniform = {}
        for gid, g in full.groups.items():
            count = uniform(g)
            removed_uniform[gid] = 0 if count is None else g.width - count
        # The uniform plan's FLOPs, also under `flops` (which uniform meets from below): the two plans
        # compare at equal FLOPs. Coarse units (a 3-head attention tied to its MLP by one ratio)
        # can leave the uniform plan far under the asked share, which a global plan need not be.
        uniform_cost = fm.flops(removed_uniform)
        asked = None if self._target is None else self._target[1] * fm.total
        target = asked if asked is not None and asked - uniform_cost > UNDERSHOOT * fm.total else uniform_cost
        costs = removal_costs(model, full, self._images, self._damping, min_keep=self.min_keep,
                              cost=self.budget_cost, stream=self._capture != "all", lazy=self._capture == "disk",
                              device=self._device, output=self._output[0], output_kind=self._output[1])
        # Groups without a dense reader have no cost curve: they keep the uniform count.
        fixed = {gid: removed_uniform[gid] for gid in full.groups if gid not in costs}
        # Decided once (rank 0 of several processes, crossdistill.distributed) for every process.
        removed = on_main(lambda: allocate(costs, fm, target, fixed, measure=fm_measure))
        measure = fm_measure
        self._budget = {"budget": "global", "measure": measure, f"teacher_{measure}": fm.total,
                        f"target_{measure}": target, "target_from": "uniform" if target == uniform_cost else "asked",
                        f"planned_{measure}": fm.flops(removed),
                        f"uniform_{measure}": fm.flops(removed_uniform),
                        "seconds": time.perf_counter() - start,
                        "uniform_kept": {gid: full.groups[gid].width - r for gid, r in removed_uniform.items()}}
        kept = {gid: full.groups[gid].width - r for gid, r in removed.items()}
        return lambda g: kept.get(g.id)

    def summary(self, model: nn.Module) -> dict[str, Any]:
        out = self._plan.summary() if self._plan is not None else {}
        if self._budget:
            out["channel_budget"] = self._budget
        return out

    def describe(self) -> str:
        label = super().describe()
        if self.budget == "uniform":  # the default, as every label before global budgets
            label = label.replace(",budget=uniform", "")
        elif self.budget_cost != "norm":  # hidden at its default only: two costs are two plans
            label = label[:-1] + f",budget_cost={self.budget_cost})"
        if self._target is not None:
            # The keep ratio is found from flops/params, so the given keep would only mislead.
            label = label.replace(f"keep={self.keep:g},", "").replace(f"keep={self.keep:g})", ")")
        return label


def _oldest_rules(model: nn.Module, example: torch.Tensor, plan: GraphChannelPlan, kept: Any) -> int:
    """The oldest rules (graph_rules) that trace the kept groups as the plan did: the record names
    them, so that the file keeps the lowest format version that holds it (a model whose groups
    the newer rules do not change stays readable by readers of before)."""
    from crossdistill.compression.graph_channels import channel_groups

    now = current_rules()
    if now == LEGACY_RULES:
        return now
    if any(plan.groups[gid].attention for gid in kept if gid in plan.groups):
        # Head groups came after format 2's readers, which refused them as "no channel group N";
        # the current rules' record puts the file at format 3, which they refuse by its version.
        return now
    try:
        with trace_rules(LEGACY_RULES):
            before = {g.id: g for g in channel_groups(model, example)}
    except Exception:  # noqa: BLE001 - a trace that fails under the old rules: the new ones it is
        return now
    same = all(gid in before and before[gid] == plan.groups.get(gid) for gid in kept)
    return LEGACY_RULES if same else now


def _cost_model(model: nn.Module, example: torch.Tensor, groups: Any, measure: str,
                memo: dict[Any, Any] | None = None) -> FlopModel:
    key = ("cost", measure, frozenset(groups))
    if memo is not None and key in memo:
        return memo[key]
    fm = FlopModel.params_of(model, groups) if measure == "params" else FlopModel.of(model, example, groups)
    if memo is not None:
        memo[key] = fm
    return fm


def nothing_to_prune(model: nn.Module, plan: Any) -> CrossDistillError:
    """The error for a model none of whose groups can be pruned, with its reasons, each once."""
    by_reason: dict[str, list[str]] = {}
    for g in plan.left_whole:
        # No readers: the trace stopped at the op the reason names, not that nothing reads them.
        readers = f" -> {', '.join(g['readers'])}" if g["readers"] else ""
        by_reason.setdefault(g["reason"], []).append((", ".join(g["producers"]) or "input") + readers)
    reasons = "; ".join(f"{', '.join(names[:4])}{', ...' if len(names) > 4 else ''}: {why}"
                        for why, names in list(by_reason.items())[:4])
    more = f"; and {len(by_reason) - 4} other reasons (report.json)" if len(by_reason) > 4 else ""
    return CrossDistillError(f"{type(model).__name__} has no channel group that can be pruned ({reasons}{more})")


# A uniform keep ratio below this, forced by a FLOPs or parameter target, is worth a warning.
STEEP_KEEP = 0.25
# A plan this far under its FLOPs or parameter target (a share of the teacher's) is worth one too.
UNDERSHOOT = 0.05


def ratio_for_flops(model: nn.Module, example: torch.Tensor, share: float, prune_classifier: bool,
                    steps: int = 20, measure: str = "flops", warn: bool = False,
                    memo: dict[Any, Any] | None = None, prune_heads: bool = True) -> float:
    """The largest uniform keep ratio whose slimmed model has at most `share` of the FLOPs (or,
    with measure 'params', of the parameters), counted without slimming (compression/flops.py);
    bisection on the ratio. `warn`: say so when that ratio is steep (below STEEP_KEEP)."""
    from crossdistill.compression.channels import keep_count

    plan = plan_graph_channels(model, example, lambda g: g.width, prune_classifier=prune_classifier, memo=memo,
                               prune_heads=prune_heads)
    if not plan.groups:
        raise nothing_to_prune(model, plan)  # why, rather than "keeping one unit leaves 1.000"
    fm = _cost_model(model, example, plan.groups, measure, memo)

    def cost_at(ratio: float) -> float:
        return fm.flops({gid: g.width - keep_count(g.width, ratio) for gid, g in plan.groups.items()})

    if cost_at(1e-9) > share * fm.total:
        what = "parameters" if measure == "params" else "FLOPs"
        whole = f", {len(plan.left_whole)} left whole (their reasons: report.json's channel_groups)" \
            if plan.left_whole else ""
        raise CrossDistillError(f"channel pruning cannot reach {share:g} of the {what}: keeping one unit of every "
                                f"group leaves {cost_at(1e-9) / fm.total:.3f} ({len(plan.groups)} group"
                                f"{'s' * (len(plan.groups) != 1)} can be pruned{whole}); give a milder target, or use "
                                "method sparsity, quant or lowrank, which reach every conv and Linear")
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost_at(mid) <= share * fm.total else (lo, mid)
    reached = cost_at(lo) / fm.total
    if warn and share - reached > UNDERSHOOT:
        # Coarse units (few groups, few units each) leave no plan near the target from below (a
        # global budget, which does not warn, plans at the share itself then).
        what = "parameters" if measure == "params" else "FLOPs"
        narrowest = min(g.width for g in plan.groups.values())
        warnings.warn(f"the nearest plan at or under {share:g} of the {what} reaches {reached:.3f}: the "
                      f"{len(plan.groups)} prunable group{'s' if len(plan.groups) > 1 else ''} have coarse units "
                      f"(the narrowest has {narrowest}): the next uniform keep ratio up exceeds the target",
                      CompressionWarning, stacklevel=outside_stacklevel())
    if warn and lo < STEEP_KEEP:
        # Most of the model cannot be pruned (a transformer's attention and residual stream), so
        # the few groups that can carry the whole target.
        what = "parameters" if measure == "params" else "FLOPs"
        warnings.warn(f"reaching {share:g} of the {what} keeps only {lo:.1%} of every prunable channel group's "
                      f"units ({len(plan.groups)} group{'s' if len(plan.groups) > 1 else ''}; the rest of the model is left whole): a milder target "
                      "may serve better", CompressionWarning, stacklevel=outside_stacklevel())
    return max(lo, 1e-9)
