"""Channel pruning of any traced model: which groups of coupled channels lose how many units,
which layer decides each group, and what every reader of a group may still read.

Layers are solved front to back. A group's kept units are chosen when its first re-solvable
reader is solved, with the cost of dropping a unit summed over all its readers (the later ones
under their teacher-side problem, whose inputs do not depend on the student); every later
reader is then re-solved on what is left. A group with one reader whose units are its input
channels is chosen exactly as by the hand-declared channel pairs (`selection.SELECTORS`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from crossdistill.capture import (SOLVABLE, forward_calls, forward_order, get_module, group_size, in_channel_rows,
                                  weight_matrix)
from crossdistill.checks import model_copy
from crossdistill.compression.graph_channels import ChannelGroup, channel_groups, slim_groups
from crossdistill.compression.graph_groups import HEAD_ROWS
from crossdistill.compression.coverage import CompressionWarning
from crossdistill.errors import CrossDistillError, outside_stacklevel
from crossdistill.problem import QuadraticProblem
from crossdistill.solvers.base import LayerTask
from crossdistill.solvers.unit_selection import Reader, select_units_norm, select_units_obs

# Criteria that work on any group; the others (thinet, lasso) need one reader fed channel by channel.
GENERAL_SELECTIONS = ("obs", "weight-norm", "l1", "tp-magnitude")


def solvable(module: nn.Module) -> bool:
    """Readers that the engine re-solves: convs and linears, grouped convs included (solved as
    one block-diagonal problem: layer_solve.py); a depthwise reader mixes nothing and is slimmed
    with its group, its kept filters unchanged."""
    groups = getattr(module, "groups", 1)
    return isinstance(module, SOLVABLE) and (groups == 1 or groups != getattr(module, "in_channels", groups))


@dataclass
class GraphChannelPlan:
    """The groups to prune, how many units each keeps, and the decisions as they are made."""

    example: torch.Tensor
    groups: dict[int, ChannelGroup]
    keep: dict[int, int]
    first_reader: dict[int, str]
    readers: dict[int, list[str]]          # re-solvable readers of each group, forward order
    reads: dict[str, list[int]]            # layer -> the groups it reads
    left_whole: list[dict[str, Any]]       # groups not pruned, with the reason
    kept: dict[int, list[int]] = field(default_factory=dict)

    def unit_columns(self, gid: int, layer: str, cols_per_channel: int) -> list[list[int]]:
        """Weight-matrix columns of `layer` fed by each unit of group `gid`."""
        lc = next(c for c in self.groups[gid].consumers if c.name == layer)
        return [[ch * cols_per_channel + k for ch in unit for k in range(cols_per_channel)] for unit in lc.channels]

    def dropped_columns(self, layer: str, cols_per_channel: int, skip: int | None = None) -> set[int]:
        out: set[int] = set()
        for gid in self.reads.get(layer, []):
            if gid == skip or gid not in self.kept:
                continue
            keep = set(self.kept[gid])
            for u, cols in enumerate(self.unit_columns(gid, layer, cols_per_channel)):
                if u not in keep:
                    out.update(cols)
        return out

    def coupled(self, layer: str, model: nn.Module) -> dict[str, list[int]]:
        """Other readers of the groups this layer decides, with their columns of those groups:
        their teacher-side problems on these columns join the cost."""
        out: dict[str, list[int]] = {}
        for gid, first in self.first_reader.items():
            if first != layer:
                continue
            for r in self.readers[gid]:
                if r != layer:
                    cols = self.unit_columns(gid, r, group_size(get_module(model, r)))
                    out.setdefault(r, []).extend(c for unit in cols for c in unit)
        return {r: sorted(set(cols)) for r, cols in out.items()}

    def decide(self, task: LayerTask, problem: QuadraticProblem, student: nn.Module, select: Callable,
               selection: str, coupled: Mapping[str, QuadraticProblem]) -> tuple[torch.Tensor, dict[str, Any]]:
        """The columns `task`'s layer keeps, choosing the kept units of the groups it decides."""
        gs = task.group
        d = problem.B.shape[1]
        for gid in self.reads.get(task.name, []):
            if gid not in self.kept and self.first_reader[gid] == task.name:
                self.kept[gid] = self._choose(gid, task, problem, student, select, selection, coupled)
        dropped = self.dropped_columns(task.name, gs)
        live = torch.as_tensor([c for c in range(d) if c not in dropped], dtype=torch.long, device=problem.B.device)
        kept_channels = sorted({int(c) // gs for c in live.tolist()})
        return live, {"kept": kept_channels}

    def _choose(self, gid: int, task: LayerTask, problem: QuadraticProblem, student: nn.Module,
                select: Callable, selection: str, coupled: Mapping[str, QuadraticProblem]) -> list[int]:
        g, k, gs = self.groups[gid], self.keep[gid], task.group
        if selection == "tp-magnitude":
            return group_magnitude(g, student, k)
        units = self.unit_columns(gid, task.name, gs)
        dropped = self.dropped_columns(task.name, gs, skip=gid)
        d = problem.B.shape[1]
        plain = [u for unit in units for u in unit] == list(range(d)) and all(len(u) == gs for u in units)
        if len(self.readers[gid]) == 1 and not dropped and plain:
            # One reader fed channel by channel: exactly the hand-declared pairs' selection.
            producer = g.producers[0].name if len(g.producers) == 1 else None
            bn = g.norms[0].name if len(g.norms) == 1 else None
            legacy = LayerTask(name=task.name, group=gs, keep=k, producer=producer, bn=bn)
            return [int(c) for c in select(problem, legacy, student)]
        if selection not in GENERAL_SELECTIONS:
            raise CrossDistillError(
                f"selection {selection!r} needs a group read by one layer, channel by channel; group {gid} "
                f"(read by {', '.join(self.readers[gid])}) is not: use one of {list(GENERAL_SELECTIONS)}")
        if selection == "l1":
            return _select_l1(g, student, k)
        readers = [_reader(problem, units, dropped)]
        for name in self.readers[gid]:
            if name == task.name:
                continue
            # Its problem is on its columns of the groups this layer decides (engine.teacher_side_problem).
            cols = self.coupled(task.name, student)[name]
            pos = {c: i for i, c in enumerate(cols)}
            units_there = self.unit_columns(gid, name, group_size(get_module(student, name)))
            readers.append(Reader(coupled[name], [[pos[c] for c in unit] for unit in units_there]))
        pick = select_units_obs if selection == "obs" else select_units_norm
        return [int(u) for u in pick(readers, k)]

    def sole_group(self, task: LayerTask, d: int) -> int:
        """For solvers that choose channels their own way (the paper's Adam): the one group this
        layer reads, channel by channel, alone; anything more general is refused by name."""
        gids = self.reads.get(task.name, [])
        if len(gids) == 1:
            gid = gids[0]
            units = self.unit_columns(gid, task.name, task.group)
            if (len(self.readers[gid]) == 1 and all(len(u) == task.group for u in units)
                    and [c for u in units for c in u] == list(range(d))):
                return gid
        raise CrossDistillError(f"layer {task.name}: this solver prunes one layer's own input channels; the "
                                f"channel groups it reads ({gids}) are shared, mixed, or come in units of several "
                                "channels (a grouped conv's or a GroupNorm's): use the closed form")

    def summary(self) -> dict[str, Any]:
        pruned = [{"group": gid, "width": self.groups[gid].width, "kept": len(self.kept.get(gid, [])),
                   **_unit_size(self.groups[gid]),
                   **({"heads_of": self.groups[gid].attention} if self.groups[gid].attention else {}),
                   "readers": self.readers[gid], "producers": [p.name for p in self.groups[gid].producers],
                   **({} if self.readers[gid] else {"note": "no dense reader to re-solve: producers' L1 chose"})}
                  for gid in sorted(self.groups)]
        return {"channel_groups": {"pruned": pruned, "left_whole": self.left_whole}}


def _unit_size(g: ChannelGroup) -> dict[str, int]:
    """`width` and `kept` count units; a unit that is several channels of one layer (one per
    group of a grouped conv) says how many, so that the counts read as channels too."""
    layer = (g.producers or g.consumers)[0] if (g.producers or g.consumers) else None
    size = len(layer.channels[0]) if layer is not None and layer.channels else 1
    return {"channels_per_unit": size} if size > 1 else {}


def _reader(problem: QuadraticProblem, units: list[list[int]], dropped: set[int]) -> Reader:
    """The problem on the columns still read (dropped ones removed), units in its positions."""
    d = problem.B.shape[1]
    live = [c for c in range(d) if c not in dropped]
    pos = {c: i for i, c in enumerate(live)}
    idx = torch.as_tensor(live, dtype=torch.long, device=problem.H.device)
    sub = QuadraticProblem(H=problem.H[idx][:, idx], B=problem.B[:, idx], c=problem.c,
                           w_teacher=problem.w_teacher[:, idx])
    return Reader(sub, [[pos[c] for c in unit] for unit in units])


def _select_l1(g: ChannelGroup, student: nn.Module, keep: int) -> list[int]:
    """Li et al. 2017 on a group: the units whose producers' filters have the largest L1 norm."""
    scores = torch.zeros(g.width, dtype=torch.float64, device="cpu")  # a few numbers per unit
    for p in g.producers:
        per_out = weight_matrix(get_module(student, p.name)).to("cpu", torch.float64).abs().sum(1)
        for u, chans in enumerate(p.channels):
            scores[u] += per_out[list(chans)].sum()
    return torch.sort(torch.topk(scores, keep).indices).values.tolist()


def group_magnitude(g: ChannelGroup, model: nn.Module, keep: int) -> list[int]:
    """Torch-Pruning's default criterion (MagnitudeImportance, p=2, group_reduction='mean'),
    written out on our groups: per layer, each channel's squared L2 norm over its parameters
    (producers' filter rows, norms' scales, readers' input columns), averaged over the layers;
    the units with the largest sums are kept. Data-free: the baseline the closed form is
    compared with at the same FLOPs."""
    per_layer: list[torch.Tensor] = []
    for role, layers in (("out", g.producers), ("norm", g.norms), ("in", g.consumers)):
        for lc in layers:
            mod = get_module(model, lc.name)
            w = getattr(mod, "weight", None)
            if w is None:
                continue
            if role == "out" or role == "norm":
                per_ch = weight_matrix(mod).to(torch.float64).pow(2).sum(1)
            elif w.dim() > 1 and (getattr(mod, "groups", 1) == 1):
                per_ch = in_channel_rows(mod).to(torch.float64).pow(2).sum(1)
            else:
                continue  # a depthwise reader is already counted as a producer
            per_layer.append(torch.stack([per_ch[list(unit)].sum() for unit in lc.channels]))
    scores = torch.stack(per_layer).mean(0)
    return torch.sort(torch.topk(scores, keep).indices).values.tolist()


def _traced(model: nn.Module, example: torch.Tensor) -> tuple[list[str], list[ChannelGroup]]:
    """The layers in forward order and the channel groups, or one message naming what stopped
    the trace (before any capture or solve has started)."""
    try:
        return forward_order(model, example), channel_groups(model, example)
    except CrossDistillError:
        raise
    except Exception as exc:
        raise CrossDistillError(
            f"cannot trace {type(model).__name__} for channel pruning on an input of shape "
            f"{tuple(example.shape)}: {type(exc).__name__}: {exc} (sparsity, quant and lowrank "
            "do not need the trace)") from exc


def _unverified(model: nn.Module, example: torch.Tensor, groups: Mapping[int, ChannelGroup]) -> dict[int, str]:
    """Groups whose slimmed model does not compute what the masked one computes, with what went
    wrong: the net under the index maps. A map the trace gets wrong (GhostNet's two paths to
    one channel did, before graph_ties kept every path) made the run crash at its very end, or
    remove the wrong channels; found here, before any solve, the group is left whole instead.
    All groups are tried at once, each keeping a random half of its units (a regular pattern
    such as every other unit can keep tied units together by chance and hide the fault); only
    when that fails, one by one."""
    gen = torch.Generator().manual_seed(0)
    draws = {gid: sorted(torch.randperm(g.width, generator=gen, device="cpu")[: max(1, g.width // 2)].tolist())
             for gid, g in groups.items()}

    def failure(ids: list[int]) -> str | None:
        kept = {gid: draws[gid] for gid in ids}
        try:
            with torch.no_grad():
                slim_groups(model_copy(model), example, kept)
        except Exception as exc:  # noqa: BLE001 - any failure means the maps are not to be trusted
            text = str(exc).splitlines()[0] if str(exc) else ""
            return f"{type(exc).__name__}: {text[:160]}"
        return None

    if not groups or failure(list(groups)) is None:
        return {}
    return {gid: why for gid in groups if (why := failure([gid])) is not None}


_SLIMMED_KINDS = (*SOLVABLE, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm,
                  nn.LayerNorm, nn.PReLU)


def _loose_buffers(model: nn.Module, width: int) -> list[str]:
    """Buffers with an axis of `width` held by a module that slimming does not cut (`x * self.scale`
    with a registered (1, C, 1, 1) scale): the trace follows parameters, not buffers, so such a
    tensor keeps its width when the channels it multiplies lose theirs."""
    return [f"buffer {name} {tuple(t.shape)}" for name, t in model.named_buffers()
            if width in t.shape and not isinstance(model.get_submodule(name.rpartition(".")[0]), _SLIMMED_KINDS)]


def _never_run(model: nn.Module, example: torch.Tensor, order: list[str]) -> dict[str, tuple[int, int]]:
    """Convs and linears that the forward ran neither in the trace (eval mode) nor in training
    mode, with the widths each reads and writes: a branch on the data (`if x.mean() > t`) that these images
    did not take. The trace cannot see what they read, so a group they may read or write is left whole
    (`_maybe_read_by`). Training-only layers (an auxiliary head) ran in training mode: the
    pipeline checks those on the finished student instead."""
    seen = set(order)
    missing = {n: m for n, m in model.named_modules() if isinstance(m, SOLVABLE) and n not in seen}
    if not missing:
        return {}
    trial = model_copy(model).train()
    batch = example if example.shape[0] > 1 else torch.cat([example, example])  # BatchNorm1d wants two
    try:
        with torch.no_grad():
            ran = forward_calls(trial, batch)
    except Exception:  # noqa: BLE001 - a model that runs in eval mode only: nothing more to learn here
        ran = {}
    never = {n: (int(getattr(m, "in_channels", getattr(m, "in_features", -1))),
                 int(getattr(m, "out_channels", getattr(m, "out_features", -1))))
             for n, m in missing.items() if n not in ran}
    if never:
        warnings.warn(f"layers the forward did not run on the traced input, in eval or training mode: {', '.join(never)} "
                      "(a branch on the data?); channel groups of their widths are left whole, but check the "
                      "student on inputs that take them: channel pruning follows the layers that ran",
                      CompressionWarning, stacklevel=outside_stacklevel())
    return never


def _maybe_read_by(g: ChannelGroup, model: nn.Module, never: Mapping[str, tuple[int, int]]) -> str:
    """Why `g` stays whole when a layer that never ran may read it (it reads as many channels as
    one of the group's producers writes) or write into it (it writes as many as one of its
    readers reads): the other arm of a branch reads and writes what the taken arm does; ''
    otherwise."""
    def width(name: str, attrs: tuple[str, str]) -> int:
        m = get_module(model, name)
        return int(getattr(m, attrs[0], getattr(m, attrs[1], -1)))

    written = {width(p.name, ("out_channels", "out_features")) for p in g.producers}
    read = {width(c.name, ("in_channels", "in_features")) for c in g.consumers}
    suspects = [n for n, (w_in, w_out) in never.items() if w_in in written or w_out in read]
    if not suspects:
        return ""
    return (f"{', '.join(suspects)} never ran on these images and may read or write these channels (the other arm "
            "of a branch on the data?): left whole so that inputs taking it still run")


def plan_graph_channels(model: nn.Module, example: torch.Tensor, keep: Callable[[ChannelGroup], int | None], *,
                        prune_classifier: bool = False, memo: dict[Any, Any] | None = None,
                        prune_heads: bool = True) -> GraphChannelPlan:
    """Groups of `model` and how many units each keeps (`keep(group)`; None leaves it whole;
    an attention's heads too unless `prune_heads` is off).
    `memo`: a dict shared by the plans of one model in one state (a FLOPs target or a global
    budget plans it two or three times), which keeps the trace and the slimming checks, the
    slow part, from being made again."""
    memo = {} if memo is None else memo
    if "trace" not in memo:
        memo["trace"] = _traced(model, example)
    order, traced = memo["trace"]
    position = {n: i for i, n in enumerate(order)}
    classifier = order[-1] if order else None
    if "never" not in memo:
        memo["never"] = _never_run(model, example, order)
    never = memo["never"]
    groups: dict[int, ChannelGroup] = {}
    counts: dict[int, int] = {}
    left: list[dict[str, Any]] = []
    for g in traced:
        if not g.prunable and g.reason.startswith(HEAD_ROWS):
            continue  # the same channels as an attention's head group, listed under that one
        readers = sorted((c.name for c in g.consumers if solvable(get_module(model, c.name))
                          and c.name not in g.depthwise), key=lambda n: position.get(n, 1 << 30))
        reason = g.reason if not g.prunable else ""
        if not reason and not g.exact:
            reason = "a LayerNorm normalises over these channels: dropping some changes the others"
        uneven = [c.name for c in g.consumers if c.name in readers and len({len(u) for u in c.channels}) > 1]
        if not reason and uneven:
            # The unit-selection solvers weigh units of equal column counts; such units come from
            # a concatenation whose parts straddle the groups of a grouped conv.
            reason = (f"its units reach {', '.join(uneven)} as unequal channel sets (a concatenation "
                      "that straddles the groups of a grouped conv)")
        if not reason and g.attention and not prune_heads:
            reason = "attention heads (prune_heads is off)"
        if not reason and classifier in {c.name for c in g.consumers} and not prune_classifier:
            reason = f"feeds the classifier {classifier} (prune_classifier is off)"
        if not reason and not g.attention:  # a head's channels never leave its attention
            reason = _maybe_read_by(g, model, never)
        if not reason:
            # Found by an earlier plan of this model (a global budget's keep has no count for it).
            reason = memo.setdefault("unslimmable", {}).get(g.id, "")
        count = None if reason else keep(g)
        if not reason and count is None:
            reason = "the keep preset leaves it whole"
        if reason:
            left.append({"group": g.id, "width": g.width, "producers": [p.name for p in g.producers],
                         "readers": [c.name for c in g.consumers], "reason": reason})
            continue
        groups[g.id], counts[g.id] = g, int(count)  # type: ignore[arg-type]
    key = ("unverified", frozenset(groups))
    if key not in memo:
        memo[key] = _unverified(model, example, groups)
        # A later plan of this model leaves these out beforehand (unslimmable): the rest passed.
        memo[("unverified", frozenset(groups) - set(memo[key]))] = {}
    for gid, why in memo[key].items():
        g = groups.pop(gid)
        counts.pop(gid)
        held = _loose_buffers(model, g.width)
        frozen_bn = any(".running_mean " in b for b in held)  # "buffer n1.running_mean (32,)"
        cause = (f"the forward uses {', '.join(held)} itself, which slimming does not cut"
                 + ("; a frozen BatchNorm of buffers (a FrozenBatchNorm2d: torchvision.ops, detectron2): replace it with an "
                    "nn.BatchNorm2d holding the same statistics in eval mode, or fold it into the conv before it"
                    if frozen_bn else "") if held
                 else f"the forward uses more of attention {g.attention} than its output: its attention weights, "
                      "or a parameter another layer shares" if g.attention
                 else "the forward fixes a size of these channels that a slimmed tensor does not have (torch.split("
                      "x, 16, 1) or torch.split(x, [16, 16, 16], 1), a view to a given channel count; torch.chunk(x, "
                      "3, 1) and sizes read from x.shape follow it), or a channel map the trace got wrong")
        memo["unslimmable"][g.id] = f"slimming it does not reproduce the masked model ({why}): {cause}"
        left.append({"group": g.id, "width": g.width, "producers": [p.name for p in g.producers],
                     "readers": [c.name for c in g.consumers], "reason": memo["unslimmable"][g.id]})
    left.sort(key=lambda e: e["group"])
    traced_producers = {p.name for g in traced for p in g.producers}
    modules = dict(model.named_modules())
    for name in order:
        if name in traced_producers or isinstance(modules.get(name.rpartition(".")[0]), nn.MultiheadAttention):
            continue  # an attention's projections belong to its own (whole) group
        if isinstance(modules.get(name.rpartition(".")[0]), nn.RNNBase):
            continue  # a recurrent module's maps: its channels are not pruned (graph_groups)
        layer = get_module(model, name)
        # Run, yet in no traced group: the trace follows autograd back from the output, so a layer
        # whose output has no history there (detached, or under torch.no_grad()) is not reached.
        left.append({"group": None, "width": getattr(layer, "out_channels", getattr(layer, "out_features", 0)),
                     "producers": [name], "readers": [],
                     "reason": "not traced: its output does not reach the model's output through autograd "
                               "(torch.no_grad() or .detach() in the forward, or a result the forward does not "
                               "use), so the channels it feeds cannot be followed"})
    readers = {gid: sorted((c.name for c in g.consumers if solvable(get_module(model, c.name))
                            and c.name not in g.depthwise), key=lambda n: position[n]) for gid, g in groups.items()}
    reads: dict[str, list[int]] = {}
    for gid, names in readers.items():
        for n in names:
            reads.setdefault(n, []).append(gid)
    first = {gid: names[0] for gid, names in readers.items() if names}
    plan = GraphChannelPlan(example=example, groups=groups, keep=counts, first_reader=first, readers=readers,
                            reads=reads, left_whole=left)
    for gid, names in readers.items():
        if not names:
            # Read only by depthwise layers, which keep their filters: the producers' L1 norms
            # choose, and nothing is re-solved for this group.
            plan.kept[gid] = _select_l1(groups[gid], model, counts[gid])
    return plan


def plan_tasks(plan: GraphChannelPlan, model: nn.Module) -> list[LayerTask]:
    """One task per re-solvable reader of a pruned group."""
    return [LayerTask(name=n, group=group_size(get_module(model, n)),
                      params={"graph": plan, "coupled": plan.coupled(n, model)}) for n in plan.reads]


def keep_counts(ratio: float | str, model: nn.Module, named: Mapping[str, int] | None = None) -> Callable[[ChannelGroup], int | None]:
    """Units kept per group: a ratio of its width (as `channels.keep_count`), or, for the paper
    preset, the count given for its reader."""
    from crossdistill.compression.channels import keep_count

    def count(g: ChannelGroup) -> int | None:
        if named is not None:
            hits = [named[c.name] for c in g.consumers if c.name in named]
            return hits[0] if hits else None
        return keep_count(g.width, float(ratio))

    return count

