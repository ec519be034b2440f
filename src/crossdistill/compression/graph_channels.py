"""Channel groups of any traced model: which channels must be pruned together, and the
physical slimming that removes them (the general form of `channels.channel_pairs`).

A group is a set of coupled channels: the outputs of every conv/linear that write them (two
convs summed by a residual add write the same channels), the norms that scale them, and the
input columns of every layer that reads them, through concatenations, chunks, channel
shuffles, depthwise convs and flattens. Its width counts *units*: the smallest sets that can
go at once. A unit is one channel, except where the model fixes a structure: a grouped conv
needs the same position in each of its groups, a channel shuffle with g groups takes g
channels at a time, and a chunk must keep its parts equally long. Units may span several
Torch-Pruning groups (two branches concatenated then shuffled); they are then one group here.

The graph comes from Torch-Pruning with its index maps replaced (see graph_trace).
"""
from __future__ import annotations

import copy
from bisect import bisect_left, insort
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops as tp_ops

from crossdistill.compression.graph_trace import DUMMY, Graph, tensors, trace
from crossdistill.errors import CrossDistillError

__all__ = ["LayerChannels", "ChannelGroup", "channel_groups", "slim_groups", "mask_groups"]

NORMS = (tp_ops.TORCH_BATCHNORM, tp_ops.TORCH_LAYERNORM, tp_ops.TORCH_GROUPNORM,
         tp_ops.TORCH_INSTANCENORM, tp_ops.TORCH_PRELU)
CHECK_RTOL = 1e-3  # slimmed vs masked outputs; wrong indices differ by O(1)


@dataclass(frozen=True)
class LayerChannels:
    """One layer's share of a group: `channels[i]` are its channel indices (a producer's
    outputs, a consumer's inputs — features for a Linear after a flatten) in group channel i."""

    name: str
    channels: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class ChannelGroup:
    """A set of coupled channels; `slim_groups` keeps or drops its `width` group channels.

    Every layer list holds `LayerChannels` with one entry per group channel; a depthwise conv
    is both a producer and a consumer (its inputs and outputs go together). `exact` is False
    when a LayerNorm/GroupNorm normalises over the channels: dropping some then changes the
    others' statistics, so the slimmed model is not the masked one."""

    id: int
    width: int                               # group channels (units) that can be kept or dropped
    producers: tuple[LayerChannels, ...]     # convs/linears writing the channels (out channels)
    consumers: tuple[LayerChannels, ...]     # convs/linears reading them (in channels/features)
    norms: tuple[LayerChannels, ...]         # per-channel layers in between (BN, LN, GN, PReLU)
    depthwise: tuple[str, ...]               # depthwise convs: in both lists, channels pass through
    prunable: bool
    reason: str                              # why not, when not prunable
    exact: bool                              # dropping == zeroing the consumers' columns (no LN/GN)


@dataclass
class _TPGroup:
    items: list[tuple[Any, list[tuple[int, int]]]]  # (Dependency, [(index, root index)])
    width: int
    reasons: list[str]


@dataclass
class _Plan:
    graph: Graph
    tpgroups: list[_TPGroup]
    unit_of: dict[tuple[int, int], int]    # (tp group, root index) -> channel of its group
    members: list[list[int]]               # ChannelGroup id -> tp groups
    groups: list[ChannelGroup]


class _Union:
    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}

    def find(self, x: Any) -> Any:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def join(self, a: Any, b: Any) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # the smallest element names the set


def _is_out(dg: tp.DependencyGraph, dep: Any) -> bool:
    pruner = dg.get_pruner_of_module(dep.target.module)
    return pruner is not None and dep.handler == pruner.prune_out_channels


def _role(graph: Graph, dep: Any, reasons: list[str]) -> str | None:
    """'out', 'in', 'dw' or 'norm' for a layer item; notes why a layer blocks pruning."""
    mod, dg = dep.target.module, graph.dg
    name = graph.names.get(mod, "?")
    if isinstance(mod, nn.Parameter):
        reasons.append(f"touches a bare nn.Parameter: {name}")
        return None
    if isinstance(mod, DUMMY):
        return None
    if graph.calls[mod] > 1:
        reasons.append(f"layer {name} runs more than once (shared weights)")
    if isinstance(mod, tp_ops.TORCH_MHA):
        reasons.append(f"attention projection (MultiheadAttention packed in_proj): {name}")
    elif isinstance(mod, (tp_ops.TORCH_LSTM, tp_ops.TORCH_EMBED)):
        reasons.append(f"unsupported layer: {type(mod).__name__} {name}")
    elif isinstance(mod, tp_ops.TORCH_CONV):
        if tp_ops.module2type(mod) == tp_ops.OPTYPE.DEPTHWISE_CONV:
            if mod.in_channels != mod.out_channels:
                reasons.append(f"depthwise conv {name} has a channel multiplier")
            return "dw"
        if mod.transposed and mod.groups > 1:
            reasons.append(f"grouped transposed conv {name}")
        return "out" if _is_out(dg, dep) else "in"
    elif isinstance(mod, tp_ops.TORCH_LINEAR):
        return "out" if _is_out(dg, dep) else "in"
    elif isinstance(mod, NORMS):
        if isinstance(mod, tp_ops.TORCH_LAYERNORM) and len(mod.normalized_shape) > 1:
            reasons.append(f"LayerNorm {name} normalises over several dimensions")
        if isinstance(mod, tp_ops.TORCH_INSTANCENORM) and mod.track_running_stats:
            reasons.append(f"InstanceNorm {name} tracks running statistics")
        return "norm"
    else:
        reasons.append(f"unsupported layer: {type(mod).__name__} {name}")
    return None


def _tp_groups(graph: Graph) -> list[_TPGroup]:
    """One Torch-Pruning group per producer not yet covered, producers in forward order."""
    dg, covered, out = graph.dg, set(), []
    for mod in graph.order:
        if not isinstance(mod, (tp_ops.TORCH_CONV, tp_ops.TORCH_LINEAR)) or mod not in dg.module2node or mod in covered:
            continue
        pruner = dg.get_pruner_of_module(mod)
        width = pruner.get_out_channels(mod)
        group = dg.get_pruning_group(mod, pruner.prune_out_channels, list(range(width)))
        items, reasons = [], []
        for it in group:
            node = it.dep.target
            items.append((it.dep, list(zip(it.idxs, it.root_idxs))))
            if _is_out(dg, it.dep):
                covered.add(node.module)  # every producer of these channels: no second group
            if node in graph.barrier:
                reasons.append(graph.barrier[node])
            elif node.grad_fn in graph.output_fns and (_is_out(dg, it.dep) or isinstance(node.module, NORMS)):
                reasons.append("reaches the model output")
        out.append(_TPGroup(items, width, reasons))
    return out


def _structure(graph: Graph, tpgs: list[_TPGroup], uf: _Union) -> dict[int, list[str]]:
    """Join the (tp group, root) elements a fixed structure ties together; return the reasons
    why some tp groups cannot be pruned at all."""
    buckets: dict[tuple, dict[int, set]] = {}   # key -> block -> elements
    sizes: dict[tuple, tuple[int, str]] = {}    # key -> (blocks needed, what)
    splits: dict[Any, dict[int, tuple]] = {}    # split node -> channel -> (element, part)
    for g, tpg in enumerate(tpgs):
        for dep, pairs in tpg.items:
            node, mod = dep.target, dep.target.module
            name = graph.name(node)
            spec = None  # (key, channels per block, blocks, what, ties read after a native shuffle)
            grouped = isinstance(mod, tp_ops.TORCH_CONV) and mod.groups > 1
            if grouped and tp_ops.module2type(mod) != tp_ops.OPTYPE.DEPTHWISE_CONV:
                out = _is_out(graph.dg, dep)
                per = (mod.out_channels if out else mod.in_channels) // mod.groups
                what = f"grouped conv {name} (groups={mod.groups})"
                spec = (("gout" if out else "gin", id(mod)), per, mod.groups, what, False)
            elif isinstance(mod, tp_ops.TORCH_GROUPNORM):
                spec = (("gn", id(mod)), mod.num_channels // mod.num_groups, mod.num_groups, f"GroupNorm {name}", False)
            elif node in graph.shuffles:
                # A shuffle keeps its group count: pre-shuffle channels j, m+j, 2m+j, ... (the
                # g channels that land side by side at j*g ... j*g+g-1) go together.
                gs, m, after = graph.shuffles[node]
                spec = (("shuffle", id(node)), m, gs, f"channel shuffle ({gs} groups)", after)
            if spec:
                key, per, blocks, what, after = spec
                for idx, root in pairs:
                    place, block = (idx // blocks, idx % blocks) if after else (idx % per, idx // per)
                    buckets.setdefault((*key, place), {}).setdefault(block, set()).add((g, root))
                    sizes[(*key, place)] = (blocks, what)
            if node in graph.splits:
                size, _ = graph.splits[node]
                for idx, root in pairs:
                    splits.setdefault(node, {})[idx] = ((g, root), idx // size)
    bad: dict[int, list[str]] = {}
    for key, by_block in buckets.items():
        blocks, what = sizes[key]
        elems = [e for es in by_block.values() for e in es]
        for e in elems[1:]:
            uf.join(elems[0], e)
        if sorted(by_block) != list(range(blocks)):
            # A position whose other blocks belong to no group, or to an unprunable input.
            for g in {e[0] for e in elems}:
                bad.setdefault(g, []).append(f"{what}: only whole sets of {blocks} channels, one per group, can go")
    for node, chans in splits.items():
        size, parts = graph.splits[node]
        vecs: dict[Any, list[int]] = {}
        for elem, part in chans.values():
            vecs.setdefault(uf.find(elem), [0] * parts)[part] += 1
        merged = _balance(vecs)
        if merged is None:
            for g in {e[0] for e, _ in chans.values()}:
                bad.setdefault(g, []).append(f"chunk into {parts}: its parts would not stay equal")
            continue
        for combo in merged:
            for u in combo[1:]:
                uf.join(combo[0], u)
    return bad


def _balance(vecs: dict[Any, list[int]]) -> list[list[Any]] | None:
    """Merge units so each has as many channels in every part of a chunk, or None.

    Greedy: grow a set from the first unbalanced unit, each time adding the unit that leaves
    the parts closest to equal; if that fails, all unbalanced units together are one unit."""
    pool = sorted(u for u, v in vecs.items() if len(set(v)) > 1)
    everything = list(pool)

    def spread(acc: list[int], u: Any) -> int:
        total = [a + b for a, b in zip(acc, vecs[u])]
        return max(total) - min(total)

    merged = []
    while pool:
        combo = [pool.pop(0)]
        acc = list(vecs[combo[0]])
        while len(set(acc)) > 1:
            if not pool:
                total = [sum(vecs[u][k] for u in everything) for k in range(len(acc))]
                return [everything] if len(set(total)) == 1 else None
            best = min(pool, key=lambda u: spread(acc, u))
            pool.remove(best)
            combo.append(best)
            acc = [a + b for a, b in zip(acc, vecs[best])]
        merged.append(combo)
    return merged


def _plan(model: nn.Module, example_inputs: torch.Tensor, ignored: Sequence[str] = ()) -> _Plan:
    known = dict(model.named_modules())
    for name in ignored:
        if name not in known:
            raise CrossDistillError(f"ignored layer {name!r} is not in the model")
    graph = trace(model, example_inputs)
    tpgs = _tp_groups(graph)
    uf = _Union()
    for g, tpg in enumerate(tpgs):
        for r in range(tpg.width):
            uf.find((g, r))
    bad = _structure(graph, tpgs, uf)
    unit_of = {(g, r): uf.find((g, r)) for g, tpg in enumerate(tpgs) for r in range(tpg.width)}
    comp = _Union()  # tp groups sharing a unit are one ChannelGroup
    for (g, _), u in unit_of.items():
        comp.join(g, u[0])
    members: dict[int, list[int]] = {}
    for g in range(len(tpgs)):
        members.setdefault(comp.find(g), []).append(g)
    plan = _Plan(graph, tpgs, {}, [], [])
    for gid, gs in enumerate(sorted(members.values())):
        units = sorted({unit_of[(g, r)] for g in gs for r in range(tpgs[g].width)})
        index = {u: i for i, u in enumerate(units)}
        plan.unit_of.update({e: index[u] for e, u in unit_of.items() if e[0] in gs})
        plan.members.append(gs)
        plan.groups.append(_group(graph, gid, gs, tpgs, plan.unit_of, len(units), bad, set(ignored)))
    return plan


def _group(graph: Graph, gid: int, gs: list[int], tpgs: list[_TPGroup], unit_of: dict, width: int,
           bad: dict[int, list[str]], ignored: set[str]) -> ChannelGroup:
    reasons: list[str] = []
    layers: dict[tuple[str, str], dict[int, set[int]]] = {}
    rank = {m: i for i, m in enumerate(graph.order)}
    exact = True
    for g in gs:
        reasons += tpgs[g].reasons + bad.get(g, [])
        for dep, pairs in tpgs[g].items:
            role = _role(graph, dep, reasons)
            if role is None:
                continue
            mod = dep.target.module
            exact &= not isinstance(mod, (tp_ops.TORCH_LAYERNORM, tp_ops.TORCH_GROUPNORM))
            per_unit = layers.setdefault((role, graph.names[mod]), {})
            for idx, root in pairs:
                per_unit.setdefault(unit_of[(g, root)], set()).add(idx)

    def share(roles: tuple[str, ...]) -> tuple[LayerChannels, ...]:
        found = [(n, d) for (r, n), d in layers.items() if r in roles]
        found.sort(key=lambda nd: rank.get(graph.dg.model.get_submodule(nd[0]), len(rank)))
        return tuple(LayerChannels(n, tuple(tuple(sorted(d.get(u, ()))) for u in range(width))) for n, d in found)

    producers, consumers, norms = share(("out", "dw")), share(("in", "dw")), share(("norm",))
    touched = {lc.name for lc in producers + consumers + norms}
    reasons += [f"touches ignored layer {n}" for n in sorted(touched & ignored)]
    if width < 2 and not reasons:
        reasons.append("a single unit: nothing can be dropped")
    reasons = list(dict.fromkeys(reasons))
    return ChannelGroup(
        id=gid, width=width, producers=producers, consumers=consumers, norms=norms,
        depthwise=tuple(lc.name for lc in producers if ("dw", lc.name) in layers),
        prunable=not reasons, reason="; ".join(reasons), exact=exact,
    )


def channel_groups(model: nn.Module, example_inputs: torch.Tensor, *, ignored: Sequence[str] = ()) -> list[ChannelGroup]:
    """Every set of coupled channels of `model` traced on `example_inputs`, producers in
    forward order. Groups that must stay whole say why in `reason`; layers named in `ignored`
    keep all their channels."""
    return _plan(model, example_inputs, ignored).groups


def _dropped(groups: Sequence[ChannelGroup], kept: Mapping[int, Sequence[int]]) -> dict[int, set[int]]:
    by_id = {g.id: g for g in groups}
    out: dict[int, set[int]] = {}
    for gid, keep in kept.items():
        group = by_id.get(gid)
        if group is None:
            raise CrossDistillError(f"no channel group {gid}: the model has groups 0..{len(groups) - 1}")
        if not group.prunable:
            raise CrossDistillError(f"channel group {gid} cannot be pruned: {group.reason}")
        try:
            keep_set = {int(k) for k in keep}
        except (TypeError, ValueError) as exc:
            raise CrossDistillError(f"channel group {gid}: kept channels must be integers") from exc
        if not keep_set:
            raise CrossDistillError(f"channel group {gid}: keep at least one channel")
        outside = sorted(k for k in keep_set if not 0 <= k < group.width)
        if outside:
            raise CrossDistillError(f"channel group {gid}: kept channels {outside} outside 0..{group.width - 1}")
        if len(keep_set) < group.width:
            out[gid] = set(range(group.width)) - keep_set
    return out


def _zero_inputs(mod: nn.Module, idxs: list[int]) -> None:
    w = mod.weight
    if isinstance(mod, nn.Linear):
        w[:, idxs] = 0
    elif mod.transposed:
        w[idxs] = 0  # a transposed conv's weight is (in, out/groups, ...)
    else:
        # (out, in/groups, ...): input channel i feeds only the filters of its conv group.
        per_in, per_out = mod.in_channels // mod.groups, mod.out_channels // mod.groups
        for i in idxs:
            b, p = divmod(i, per_in)
            w[b * per_out:(b + 1) * per_out, p] = 0


def mask_groups(model: nn.Module, groups: Sequence[ChannelGroup], kept: Mapping[int, Sequence[int]]) -> nn.Module:
    """A copy of `model` in which every consumer's inputs from the dropped channels are zeroed:
    those channels have no effect, so the slimmed model must compute the same function."""
    drops = _dropped(groups, kept)
    masked = copy.deepcopy(model)
    by_id = {g.id: g for g in groups}
    with torch.no_grad():
        for gid, units in drops.items():
            group = by_id[gid]
            for lc in group.consumers:
                if lc.name in group.depthwise:
                    continue  # passes channels through; the layers after it are masked
                idxs = sorted({i for u in units for i in lc.channels[u]})
                _zero_inputs(masked.get_submodule(lc.name), idxs)
    return masked


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return [t.detach() for t in tensors(model(x))]
    finally:
        for m, mode in modes:
            m.training = mode


def slim_groups(model: nn.Module, example_inputs: torch.Tensor, kept: Mapping[int, Sequence[int]],
                *, check: bool = True) -> nn.Module:
    """Remove, in place, the channels not kept in each listed group (`kept`: group id -> kept
    group channels, ids as `channel_groups` numbers them on the same model and input): the
    producers' filters, the norms' entries and the consumers' input columns.

    With `check`, the slimmed outputs are compared with those of `mask_groups` on
    `example_inputs` (skipped when a group is not `exact`); a mismatch raises, leaving `model`
    slimmed, so slim a copy when that matters."""
    plan = _plan(model, example_inputs)
    drops = _dropped(plan.groups, kept)
    if not drops:
        return model
    ref = None
    if check and all(plan.groups[gid].exact for gid in drops):
        ref = _outputs(mask_groups(model, plan.groups, kept), example_inputs)
    removed: dict[tuple, list[int]] = {}  # (module, handler) -> original indices already gone
    for gid, units in drops.items():
        # One removal per layer dimension and group, even when the group spans several
        # Torch-Pruning groups: a grouped conv's input must lose the same places in every
        # conv group at once (its pruning function reads them off the first conv group).
        todo: dict[tuple, tuple[Any, set[int]]] = {}
        for g in plan.members[gid]:
            for dep, pairs in plan.tpgroups[g].items:
                mod = dep.target.module
                if isinstance(mod, (*DUMMY, nn.Parameter)):
                    continue  # Torch-Pruning's bookkeeping nodes: nothing in the model to cut
                idxs = {i for i, r in pairs if plan.unit_of[(g, r)] in units}
                if idxs:
                    todo.setdefault((id(mod), dep.handler), (dep, set()))[1].update(idxs)
        batch = tp.Group()
        batch._DG = plan.graph.dg
        for key, (dep, idxs) in todo.items():
            gone = removed.setdefault(key, [])
            # Earlier groups may have shrunk this dimension already: shift to current places.
            batch.add_dep(dep, [i - bisect_left(gone, i) for i in sorted(idxs)])
            for i in idxs:
                insort(gone, i)
        batch.prune(record_history=False)
    if ref is not None:
        got = _outputs(model, example_inputs)
        for a, b in zip(got, ref):
            err = (a - b).abs().max().item() / max(b.abs().max().item(), 1e-12) if a.shape == b.shape else float("inf")
            if err > CHECK_RTOL:
                raise CrossDistillError(
                    f"slimmed model differs from the masked reference (relative error {err:.2e}) "
                    f"for groups {sorted(drops)}: a channel index map is wrong"
                )
    return model
