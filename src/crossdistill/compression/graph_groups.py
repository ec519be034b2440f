"""Channel groups of a traced model: the public records (`LayerChannels`, `ChannelGroup`) and
their assembly from Torch-Pruning's groups once graph_ties has joined what must go together.

Each layer a group touches gets a role (producer, consumer, depthwise pass-through, norm) or a
reason why the group cannot be pruned; see graph_channels for what a group is and for the
slimming that removes its channels.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch_pruning import ops as tp_ops

from crossdistill.capture import SOLVABLE, own_weight_reason
from crossdistill.compression.attention_heads import HeadPrunedAttention, head_pruning_reason
from crossdistill.compression.graph_ops import DUMMY, Graph
from crossdistill.compression.hand_attention import AttentionForm, hand_attentions
from crossdistill.compression.graph_ties import NORMS, _is_out, _same_channel, _structure, _TPGroup, _tp_groups, _Union
from crossdistill.compression.graph_trace import trace
from crossdistill.errors import CrossDistillError


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
    when a LayerNorm normalises over the channels: dropping some then changes the others'
    statistics, so the slimmed model is not the masked one (a GroupNorm's units are its whole
    groups, which keeps it exact). A group of an attention's heads (`attention` names it) has
    units of `head_dim` channels: rows of its q/k/v projections, columns of its out_proj; `form`
    says how an attention written by hand computes (None for an nn.MultiheadAttention)."""

    id: int
    width: int                               # group channels (units) that can be kept or dropped
    producers: tuple[LayerChannels, ...]     # convs/linears writing the channels (out channels)
    consumers: tuple[LayerChannels, ...]     # convs/linears reading them (in channels/features)
    norms: tuple[LayerChannels, ...]         # per-channel layers in between (BN, LN, GN, PReLU)
    depthwise: tuple[str, ...]               # depthwise convs: in both lists, channels pass through
    prunable: bool
    reason: str                              # why not, when not prunable
    exact: bool                              # dropping == zeroing the consumers' columns (no LayerNorm)
    attention: str = ""                      # the attention whose heads the units are
    form: AttentionForm | None = None        # a hand-written attention's form (hand_attention)


HEAD_ROWS = "rows of attention heads, pruned as the heads' own group: "


@dataclass
class _Plan:
    graph: Graph
    tpgroups: list[_TPGroup]
    unit_of: dict[tuple[int, int], int]    # (tp group, root index) -> channel of its group
    members: list[list[int]]               # ChannelGroup id -> tp groups
    groups: list[ChannelGroup]


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
    if isinstance(mod, SOLVABLE) and own_weight_reason(mod) is not None:
        # Neither solved nor slimmed: its weight is not the tensor that runs.
        reasons.append(f"layer {name}: {own_weight_reason(mod)}")
    if name in graph.tied:
        reasons.append(f"layer {name}: {graph.tied[name]}")
    if isinstance(mod, tp_ops.TORCH_MHA):
        # Its embed_dim: the width of its query input and its output (its heads are a group of their own).
        reasons.append(f"read and written by attention {name} (MultiheadAttention's embed_dim)")
    elif isinstance(mod, (tp_ops.TORCH_LSTM, tp_ops.TORCH_EMBED)):
        reasons.append(f"unsupported layer: {type(mod).__name__} {name}")
    elif isinstance(mod, tp_ops.TORCH_CONV):
        if tp_ops.module2type(mod) == tp_ops.OPTYPE.DEPTHWISE_CONV:
            # Torch-Pruning takes every conv with groups == out_channels for depthwise (channel i
            # in, channel i out); one whose groups see several inputs each is not.
            if mod.in_channels > mod.out_channels:
                reasons.append(f"grouped conv {name} reduces {mod.in_channels} channels to {mod.out_channels} "
                               f"({mod.groups} groups of {mod.in_channels // mod.groups} inputs each)")
            elif mod.in_channels != mod.out_channels:
                reasons.append(f"depthwise conv {name} has a channel multiplier")
            return "dw"
        if mod.transposed and mod.groups > 1:
            reasons.append(f"grouped transposed conv {name}")
        role = "out" if _is_out(dg, dep) else "in"
        if role == "in" and not isinstance(mod, SOLVABLE):
            # Its input channels would change without a re-solve.
            reasons.append(f"read by {type(mod).__name__} {name}: only convs and Linear readers can be re-solved")
        elif role == "in" and getattr(mod, "padding_mode", "zeros") != "zeros":
            # A reader is re-solved on the kept channels, and the solvers unfold with zeros only.
            reasons.append(f"read by conv {name} with padding_mode={mod.padding_mode!r}")
        return role
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
    _same_channel(tpgs, uf)
    unit_of = {(g, r): uf.find((g, r)) for g, tpg in enumerate(tpgs) for r in range(tpg.width)}
    comp = _Union()  # tp groups sharing a unit are one ChannelGroup
    for (g, _), u in unit_of.items():
        comp.join(g, u[0])
    members: dict[int, list[int]] = {}
    for g in range(len(tpgs)):
        members.setdefault(comp.find(g), []).append(g)
    plan = _Plan(graph, tpgs, {}, [], [])
    hand = hand_attentions(model, example_inputs)
    # The rows of these projections are an attention's heads (a group of their own, below).
    heads_of = {f"{name}.{p}": name for name, (form, _) in hand.items() if form for p in form.projections}
    heads_of.update({f"{name}.{p}": name for name, m in model.named_modules() if isinstance(m, HeadPrunedAttention)
                     for p in ("q_proj", "k_proj", "v_proj")})
    for gid, gs in enumerate(sorted(members.values())):
        units = sorted({unit_of[(g, r)] for g in gs for r in range(tpgs[g].width)})
        index = {u: i for i, u in enumerate(units)}
        plan.unit_of.update({e: index[u] for e, u in unit_of.items() if e[0] in gs})
        plan.members.append(gs)
        group = _group(graph, gid, gs, tpgs, plan.unit_of, len(units), bad, set(ignored))
        unread = [f"the heads of {n} stay whole: {why}" for n, (form, why) in hand.items() if form is None
                  and group.producers and all(p.name.startswith(n + ".") for p in group.producers)]
        if unread and not group.prunable:
            group = replace(group, reason="; ".join([group.reason, *unread]))
        owners = {heads_of.get(p.name) for p in group.producers}
        if group.producers and not group.consumers and len(owners) == 1 and None not in owners:
            # Kept under its id (the ids of a saved student's groups must not move), never pruned.
            group = replace(group, prunable=False, reason=HEAD_ROWS + owners.pop())
        plan.groups.append(group)
    for group in head_groups(model, graph.calls, len(plan.groups), set(ignored), graph.tied):
        plan.members.append([])  # no Torch-Pruning group: attention_heads slims it
        plan.groups.append(group)
    # Appended after the kinds of head group older versions knew, so that their ids stay.
    for group in hand_head_groups(model, hand, len(plan.groups), set(ignored), graph.tied, graph.calls):
        plan.members.append([])  # replaced whole by hand_attention
        plan.groups.append(group)
    for group in head_groups(model, graph.calls, len(plan.groups), set(ignored), graph.tied, pruned=True):
        plan.members.append([])
        plan.groups.append(group)
    return plan


def _producers(tpg: _TPGroup, graph: Graph) -> list[str]:
    return [graph.names.get(dep.target.module, "?") for dep, _ in tpg.items
            if not isinstance(dep.target.module, (*DUMMY, nn.Parameter)) and _is_out(graph.dg, dep)]


def _readers(tpg: _TPGroup, graph: Graph) -> list[str]:
    return [graph.names.get(dep.target.module, "?") for dep, _ in tpg.items
            if not isinstance(dep.target.module, (*DUMMY, nn.Parameter)) and not _is_out(graph.dg, dep)]


def hand_head_groups(model: nn.Module, hand: Mapping[str, tuple[AttentionForm | None, str]], first_id: int,
                     ignored: set[str], tied: Mapping[str, str] | None = None,
                     calls: Mapping[nn.Module, int] | None = None) -> list[ChannelGroup]:
    """One group per recognised hand-written attention (`hand_attention.hand_attentions`): its
    heads as units, written by its q/k/v (or packed qkv) projections and read by its output
    projection. Modules shaped like one but not recognised have no group: their projections'
    Torch-Pruning groups stay, with the reshape that stops them as the reason."""
    groups = []
    for name, (form, _) in hand.items():
        if form is None:
            continue
        reasons = [] if form.heads >= 2 else ["a single head"]
        reader = form.reader or f"{name}.{form.proj}"
        layers = [*(f"{name}.{p}" for p in form.projections), reader]
        reasons += [f"layer {n}: {(tied or {})[n]}" for n in layers if n in (tied or {})]
        # A projection module held by two attentions runs once for each: its rows are two sets of heads.
        reasons += [f"layer {n} runs more than once (shared by another attention?)" for n in layers
                    if (calls or {}).get(model.get_submodule(n), 1) > 1]
        reasons += [f"touches ignored layer {n}" for n in (name, *layers) if n in ignored]
        per_head = [form.unit_rows(h) for h in range(form.heads)]
        d = form.head_dim
        groups.append(ChannelGroup(
            id=first_id + len(groups), width=form.heads,
            producers=tuple(LayerChannels(f"{name}.{p}", tuple(rows[i] for rows in per_head))
                            for i, p in enumerate(form.projections)),
            consumers=(LayerChannels(reader, tuple(tuple(range(h * d, (h + 1) * d)) for h in range(form.heads))),),
            norms=(), depthwise=(), prunable=not reasons, reason="; ".join(reasons), exact=True,
            attention=name, form=form))
    return groups


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
            exact &= not isinstance(mod, tp_ops.TORCH_LAYERNORM)  # a GroupNorm's units are its whole groups
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


def head_groups(model: nn.Module, calls: Mapping[nn.Module, int], first_id: int,
                ignored: set[str], tied: Mapping[str, str] | None = None, *, pruned: bool = False) -> list[ChannelGroup]:
    """One group per `nn.MultiheadAttention` of `model` (ids from `first_id`; with `pruned`, per
    `HeadPrunedAttention`, a student pruned again): its heads as units of `head_dim` channels,
    written by its q/k/v projections and read by its out_proj. `calls`: how many times the
    traced forward ran each module; `tied`: layers whose weight is shared."""
    tied = tied or {}
    holders: dict[int, list[str]] = {}
    for owner, m in model.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            holders.setdefault(id(p), []).append(f"{owner}.{pname}" if owner else pname)
    groups = []
    for name, mod in model.named_modules():
        if not isinstance(mod, HeadPrunedAttention if pruned else nn.MultiheadAttention):
            continue
        h, d = mod.num_heads, mod.head_dim
        reasons = [r for r in (head_pruning_reason(mod),) if r]
        # A HeadPrunedAttention's projections are modules the trace saw run.
        runs = calls.get(mod.out_proj if pruned else mod, 0)
        if pruned and any(type(getattr(mod, p)) is not nn.Linear for p in ("q_proj", "k_proj", "v_proj", "out_proj")):
            reasons.append(f"the projections of {name} are no longer plain Linear layers (low rank?)")
        if runs == 0:
            reasons.append(f"attention {name} did not run in the traced forward")
        elif runs > 1:
            reasons.append(f"attention {name} runs more than once (shared weights)")
        layers = [f"{name}.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
        reasons += [f"layer {n}: {tied[n]}" for n in layers if n in tied]
        # Its packed projections are parameters of its own, which tied_weights does not see.
        reasons += [f"its {pname} is shared with {', '.join(h for h in holders[id(p)] if h != f'{name}.{pname}')}"
                    for pname, p in mod.named_parameters(recurse=False) if len(holders[id(p)]) > 1]
        reasons += [f"touches ignored layer {n}" for n in layers if n in ignored]
        if name in ignored:
            reasons.append(f"touches ignored layer {name}")
        units = tuple(tuple(range(i * d, (i + 1) * d)) for i in range(h))
        groups.append(ChannelGroup(
            id=first_id + len(groups), width=h,
            producers=tuple(LayerChannels(n, units) for n in layers[:3]),
            consumers=(LayerChannels(layers[3], units),), norms=(), depthwise=(),
            prunable=not reasons, reason="; ".join(reasons), exact=True, attention=name))
    return groups


def channel_groups(model: nn.Module, example_inputs: torch.Tensor, *, ignored: Sequence[str] = ()) -> list[ChannelGroup]:
    """Every set of coupled channels of `model` traced on `example_inputs`, producers in
    forward order. Groups that must stay whole say why in `reason`; layers named in `ignored`
    keep all their channels."""
    return _plan(model, example_inputs, ignored).groups
