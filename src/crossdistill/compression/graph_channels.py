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

The work is split by job: graph_ties collects Torch-Pruning's groups and joins the channels a
structure ties; graph_groups assembles `ChannelGroup`s (`channel_groups`); this module removes
or masks a group's channels (`slim_groups`, `mask_groups`). Every name stays importable here.
"""
from __future__ import annotations

from bisect import bisect_left, insort
from typing import Any, Mapping, Sequence

import torch
import torch_pruning as tp
from torch import nn

from crossdistill.checks import model_copy
from crossdistill.compression.attention_heads import slim_heads
from crossdistill.compression.hand_attention import slim_hand_heads
from crossdistill.compression.graph_groups import (  # noqa: F401 - re-exported: this module's old names
    ChannelGroup, LayerChannels, _group, _Plan, _plan, _role, channel_groups, head_groups,
)
from crossdistill.compression.graph_ops import DUMMY, Graph, tensors  # noqa: F401 - Graph: re-exported
from crossdistill.compression.graph_ties import (  # noqa: F401 - re-exported: this module's old names
    NORMS, _balance, _is_out, _structure, _TPGroup, _tp_groups, _Union,
)
from crossdistill.compression.graph_trace import trace  # noqa: F401 - re-exported
from crossdistill.errors import CrossDistillError

__all__ = ["LayerChannels", "ChannelGroup", "channel_groups", "slim_groups", "mask_groups"]

CHECK_RTOL = 1e-3  # slimmed vs masked outputs; wrong indices differ by O(1)


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
    masked = model_copy(model)
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
    # Torch-Pruning keeps a GroupNorm's group count and shrinks its groups; here whole groups go
    # (graph_ties), so the count follows the channels at the group size it had.
    group_size = {m: m.num_channels // m.num_groups for m in model.modules() if isinstance(m, nn.GroupNorm)}
    removed: dict[tuple, list[int]] = {}  # (module, handler) -> original indices already gone
    heads = {plan.groups[gid].attention: (plan.groups[gid].form, sorted(set(range(plan.groups[gid].width)) - units))
             for gid, units in drops.items() if plan.groups[gid].attention}
    for gid, units in drops.items():
        if plan.groups[gid].attention:
            continue  # replaced below, once the traced graph's modules are cut
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
    for norm, size in group_size.items():
        norm.num_groups = norm.num_channels // size
    for attention, (form, kept_heads) in heads.items():
        if form is None:
            slim_heads(model, attention, kept_heads)
        else:
            slim_hand_heads(model, attention, form, kept_heads)
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
