"""Global channel budgets: how many units each group keeps so that the model meets a FLOPs
target, chosen across layers instead of one keep ratio for every group.

Each group's cost curve comes from the closed form itself: the greedy OBS removal path of the
group under its readers' teacher-side problems (solvers/unit_selection.removal_path), i.e. the
rise of the readers' loss as units go. By default ('norm') each reader's output channels are
weighted by the gain γ/√(var+ε) of the BatchNorm that follows it, so the loss is measured as
the next layers see it (a reader without such a norm is taken as it is); 'absolute' uses the
raw loss, 'relative' that loss over the reader's output energy; 'output' the loss of the
model's outputs along the same removal path (compression/budget_output.py). Units are then taken, group by
group, where the curve rises least per FLOP saved, until the target is met. The sequential
cross-distillation solve then runs with these counts; which units go is still decided there,
on the student's inputs.
"""
from __future__ import annotations

import math
from typing import Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from crossdistill.capture import TRANSPOSED, all_layer_inputs, get_module, group_size, layer_inputs
from crossdistill.compression.budget_output import OutputCost
from crossdistill.compression.flops import FlopModel
from crossdistill.distributed import shard, sum_number, together
from crossdistill.device import module_device, on_device
from crossdistill.compression.graph_plan import GraphChannelPlan
from crossdistill.engine import batches_of, teacher_side_problem, teacher_side_problems
from crossdistill.errors import CrossDistillError
from crossdistill.moments import CHUNK_IMAGES
from crossdistill.problem import QuadraticProblem
from crossdistill.solvers.unit_selection import Reader, removal_path


def least_kept(width: int, min_keep: float) -> int:
    return max(1, min(width, math.ceil(min_keep * width)))


def weight_only(layer: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The conv's output with weight `w` and no bias, in its own geometry."""
    if isinstance(layer, TRANSPOSED):
        conv_t = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[x.dim() - 3]
        return conv_t(x, w, None, layer.stride, layer.padding, layer.output_padding, layer.groups, layer.dilation)
    return layer._conv_forward(x, w, None)


def output_energy(layer: nn.Module, inputs: Iterable[torch.Tensor]) -> float:
    """Mean squared norm of the layer's weight-only output per position (the scale of its loss)."""
    total, count = 0.0, 0
    w = layer.weight.detach().float()
    for x in inputs:
        x = x.float()
        if isinstance(layer, nn.Linear):
            y = x.reshape(-1, x.shape[-1]) @ w.T
            rows = y.shape[0]
        else:
            y = weight_only(layer, x, w)
            rows = y.numel() // y.shape[1]
        total += float(y.double().pow(2).sum())
        count += rows
    return sum_number(total) / max(sum_number(count), 1)


def _scaled(p: QuadraticProblem, factor: float) -> QuadraticProblem:
    return QuadraticProblem(H=p.H * factor, B=p.B * factor, c=p.c * factor, w_teacher=p.w_teacher)


def _rows_scaled(p: QuadraticProblem, rows: torch.Tensor) -> QuadraticProblem:
    """Each output row's loss weighted by rows²: the OBS costs are those of W with scaled rows."""
    r = rows.to(p.B.dtype)[:, None]
    return QuadraticProblem(H=p.H, B=p.B * r, c=p.c, w_teacher=p.w_teacher * r)


def norm_scales(model: nn.Module, example: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per layer of `names` whose output goes straight into a BatchNorm: that norm's per-channel
    gain γ/√(var+ε), i.e. how the next layers see an error in this layer's output."""
    # The tensors themselves are kept until the forward ends: an id is only unique while alive.
    outputs: dict[int, tuple[str, torch.Tensor]] = {}
    scales: dict[str, torch.Tensor] = {}
    handles = []
    for n in names:
        handles.append(get_module(model, n).register_forward_hook(
            lambda m, a, y, n=n: outputs.__setitem__(id(y), (n, y))))
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
            def pre(mod, args, mod_=m):
                n, y = outputs.get(id(args[0]), (None, None))
                if n is not None and y is args[0] and n not in scales:
                    g = mod_.weight.detach() if mod_.weight is not None else torch.ones_like(mod_.running_var)
                    scales[n] = (g / torch.sqrt(mod_.running_var + mod_.eps)).double()
            handles.append(m.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    return scales


class _Inputs:
    """The teacher's inputs to its layers: those captured up front, or (streaming) a layer's
    own when asked for, remembered only until another group is costed."""

    def __init__(self, model: nn.Module, batches: list[torch.Tensor], upfront: list[str], *,
                 lazy: bool = False) -> None:
        self.model, self.batches = model, batches
        with together():
            self.held = all_layer_inputs(model, upfront, batches) if upfront else {}
        self.streaming = not upfront
        self.lazy = lazy

    def prefetch(self, names: Sequence[str]) -> None:
        if self.streaming and not self.lazy:
            with together():
                self.held = all_layer_inputs(self.model, list(names), self.batches)

    def __getitem__(self, name: str) -> Iterable[torch.Tensor]:
        if self.lazy:  # capture='disk': a forward per batch each time it is read, nothing held
            return _Reread(self.model, name, self.batches)
        if name not in self.held:
            self.prefetch([name])
        return self.held[name]


class _Reread:
    """A layer's teacher inputs as an iterable that runs the forward again on each reading."""

    def __init__(self, model: nn.Module, name: str, batches: list[torch.Tensor]) -> None:
        self.model, self.name, self.batches = model, name, batches

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(layer_inputs(self.model, self.name, self.batches))


def removal_costs(model: nn.Module, plan: GraphChannelPlan, images: torch.Tensor, damping: float, *,
                  min_keep: float, cost: str = "norm", stream: bool = False, lazy: bool = False,
                  batch_size: int = 64, device: torch.device | str | None = None, output: str | None = None,
                  output_kind: str = "auto") -> dict[int, torch.Tensor]:
    """Per group with a dense reader: C[k], the summed loss of its readers after its k cheapest
    units are removed (greedy OBS on the teacher's inputs), k = 0 … width − least kept; with
    cost 'output', the loss of the model's outputs along the same path (budget_output.py; `output`,
    `output_kind`: which output holds the predictions and their kind, as the run's settings).
    `device`: where the forwards and the OBS paths run (the model goes there for the call)."""
    where = torch.device(device) if device is not None else module_device(model)
    with on_device(where, model):
        return _removal_costs(model, plan, images.to(where), damping, min_keep, cost, stream, lazy, batch_size,
                              output, output_kind)


def _removal_costs(model: nn.Module, plan: GraphChannelPlan, images: torch.Tensor, damping: float, min_keep: float,
                   cost: str, stream: bool, lazy: bool, batch_size: int, output: str | None = None,
                   output_kind: str = "auto") -> dict[int, torch.Tensor]:
    names = sorted({r for gid, rs in plan.readers.items() if gid not in plan.kept for r in rs})
    batches = batches_of(shard(images, align=CHUNK_IMAGES), batch_size)
    # stream: each group's readers captured when the group is costed, then dropped (one
    # teacher pass per group instead of every reader's inputs held at once).
    # lazy (capture='disk'): read batch by batch each time, never held.
    inputs = _Inputs(model, batches, [] if stream or lazy else names, lazy=lazy)
    energy = {n: output_energy(get_module(model, n), inputs[n]) if cost == "relative" else 1.0 for n in names}
    # 'output' walks the removal path of 'norm' and measures the outputs along it.
    gains = norm_scales(model, images[:1], names) if cost in ("norm", "output") else {}
    outputs = OutputCost(model, batches, damping, output, output_kind) if cost == "output" else None
    costs: dict[int, torch.Tensor] = {}
    for gid, readers in plan.readers.items():
        if gid in plan.kept:
            continue  # no dense reader: its producers' L1 norms choose (graph_plan.py)
        rs = []
        units = {name: plan.unit_columns(gid, name, group_size(get_module(model, name))) for name in readers}
        cols = {name: sorted({c for u in us for c in u}) for name, us in units.items()}
        if inputs.lazy:  # capture='disk': the readers' Grams from one forward per batch, nothing held
            problems = teacher_side_problems(model, cols, batches, damping)
        else:
            inputs.prefetch(readers)
            problems = {name: teacher_side_problem(get_module(model, name), inputs[name], damping, cols[name])
                        for name in readers}
        for name in readers:
            pos = {c: i for i, c in enumerate(cols[name])}
            p = _scaled(problems[name], 1.0 / max(energy[name], 1e-30))
            if name in gains:
                p = _rows_scaled(p, gains[name])
            rs.append(Reader(p, [[pos[c] for c in u] for u in units[name]]))
        width = plan.groups[gid].width
        n_remove = width - least_kept(width, min_keep)
        order, steps = removal_path(rs, n_remove)
        if outputs is not None:
            costs[gid] = outputs.curve(cols, units, order, n_remove)
        else:
            costs[gid] = torch.cumsum(torch.tensor([0.0] + steps, dtype=torch.float64, device="cpu"), 0)
    return costs


def allocate(costs: Mapping[int, torch.Tensor], flops: FlopModel, target: float,
             fixed_removed: Mapping[int, int] | None = None, measure: str = "flops") -> dict[int, int]:
    """Units removed per group: repeatedly the step (one or more units of one group) whose cost
    rises least per FLOP saved, until the FLOPs are at most `target`. Looking several units ahead
    lets a group whose next unit is dear but whose following ones are cheap still be chosen;
    the last step removes no more units than the target needs. Groups in `fixed_removed` keep
    their count. `measure`: what `flops` counts ('flops', or 'params' for a parameter target),
    for the refusal's words."""
    removed: dict[int, int] = {gid: 0 for gid in costs}
    removed.update(fixed_removed or {})
    now = flops.flops(removed)
    while now > target:
        per_unit = flops.per_unit(removed)
        best: tuple[float, int, int] | None = None
        for gid, curve in costs.items():
            r = removed[gid]
            room = curve.shape[0] - 1 - r
            saved = per_unit[gid]
            if room <= 0 or saved <= 0:
                continue
            reach = min(room, max(1, math.ceil((now - target) / saved)))
            rise = (curve[r + 1 : r + reach + 1] - curve[r]).clamp_min(0)
            slopes = rise / (torch.arange(1, reach + 1, dtype=torch.float64, device="cpu") * saved)
            j = int(torch.argmin(slopes))
            if best is None or float(slopes[j]) < best[0]:
                best = (float(slopes[j]), gid, j + 1)
        if best is None:
            # The target is the uniform plan's cost (or the asked share), not the floor of one
            # unit a group that the uniform plan's refusal names: min_keep stops the groups here.
            what = "parameters" if measure == "params" else "FLOPs"
            raise CrossDistillError(f"the global budget cannot lose enough channels to reach {target / flops.total:.3f} "
                                    f"of the {what} (it got to {now / flops.total:.3f} with every group at its min_keep "
                                    "floor or emptied); lower min_keep or raise the target")
        _, gid, j = best
        removed[gid] += j
        now = flops.flops(removed)
    return removed
