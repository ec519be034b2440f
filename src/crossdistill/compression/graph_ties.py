"""Torch-Pruning's groups of one traced model, and the structures that tie their channels.

A Torch-Pruning group (`_TPGroup`) is what one producer's out channels drag along. Some
channels cannot go alone: a grouped conv, a GroupNorm or a channel shuffle needs whole sets,
and a chunk needs equal parts. `_structure` joins the channels such a structure ties into one
unit (a union-find over (tp group, root index) elements); graph_groups then turns the units
into `ChannelGroup`s. Kept apart from that assembly so the tie rules can be read on their own.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch_pruning as tp
from torch import nn
from torch_pruning import _helpers
from torch_pruning import ops as tp_ops

from crossdistill.compression.graph_ops import DUMMY, Graph

# Per-channel layers between a producer and its consumers: they lose the same channels.
NORMS = (tp_ops.TORCH_BATCHNORM, tp_ops.TORCH_LAYERNORM, tp_ops.TORCH_GROUPNORM,
         tp_ops.TORCH_INSTANCENORM, tp_ops.TORCH_PRELU)


@dataclass
class _TPGroup:
    items: list[tuple[Any, list[tuple[int, int]]]]  # (Dependency, [(index, root index)])
    width: int
    reasons: list[str]


class _Union:
    """Union-find over hashable elements; `find` names a set by its smallest element."""

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


@contextlib.contextmanager
def _every_path() -> Iterator[None]:
    """Torch-Pruning merges a layer's indices reached along several paths keeping the first root
    of each (`Group.add_and_merge`, torch-pruning 1.6.1). In a GhostNet block, x + cat([a, dw(a)]),
    a's channel i is reached from x's channel i (through the cat) and from x's channel 8+i
    (through the depthwise conv): keeping one root cut the tie, and the slimmed model broke.
    Here every (index, root) pair is kept; `_same_channel` then joins the roots one index has."""
    original = tp.dependency.Group.add_and_merge

    def add_and_merge(self: Any, dep: Any, idxs: list) -> None:
        for i, (old, old_idxs) in enumerate(self._group):
            if old.target == dep.target and old.handler == dep.handler:
                seen, merged = set(), []
                for index in old_idxs + idxs:
                    if (index.idx, index.root_idx) not in seen:
                        seen.add((index.idx, index.root_idx))
                        merged.append(index)
                self._group[i] = _helpers.GroupItem(dep=old, idxs=merged)
                return
        self.add_dep(dep, idxs)

    tp.dependency.Group.add_and_merge = add_and_merge
    try:
        yield
    finally:
        tp.dependency.Group.add_and_merge = original


def _same_channel(tpgs: list[_TPGroup], uf: _Union) -> None:
    """Join the roots of one group that reach one channel of one layer (see `_every_path`): one
    unit. Layers only: at Torch-Pruning's own nodes (cat, pad, reshape, ...) an index may count
    in the input's space on one path and in the output's on another."""
    for g, tpg in enumerate(tpgs):
        first: dict[tuple, int] = {}
        for dep, pairs in tpg.items:
            if isinstance(dep.target.module, (*DUMMY, nn.Parameter)):
                continue
            for idx, root in pairs:
                seen = first.setdefault((id(dep.target), dep.handler, idx), root)
                if seen != root:
                    uf.join((g, seen), (g, root))


def _tp_groups(graph: Graph) -> list[_TPGroup]:
    """One Torch-Pruning group per producer not yet covered, producers in forward order."""
    dg, covered, out = graph.dg, set(), []
    for mod in graph.order:
        if not isinstance(mod, (tp_ops.TORCH_CONV, tp_ops.TORCH_LINEAR)) or mod not in dg.module2node or mod in covered:
            continue
        pruner = dg.get_pruner_of_module(mod)
        width = pruner.get_out_channels(mod)
        with _every_path():
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
                # A GroupNorm's unit is one of its groups, whole: its statistics are those of its
                # own channels, so dropping a whole group leaves every other group's output as it
                # was (dropping a channel from each group would change them all).
                per = mod.num_channels // mod.num_groups
                spec = (("gn", id(mod)), per, per, f"GroupNorm {name} (groups of {per} channels)", True)
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
