"""FLOPs (or parameters) of a channel-pruned model as a function of how many units each group
keeps, without slimming anything: a conv's or linear's FLOPs and weights scale with the share of
its input and of its output channels it keeps (a depthwise conv's with its channels alone); a
bias, and a norm's scale and shift, with its channels."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from crossdistill.capture import SOLVABLE, get_module
from crossdistill.compression.graph_channels import ChannelGroup
from crossdistill.flop_counter import counting_flops


def own_flops(model: nn.Module, example: torch.Tensor) -> dict[str, float]:
    """FLOPs of each named submodule's own operations (its children's not included; containers
    with none are left out) in one forward pass. Modules are told apart by identity, not by the
    counter's names, which follow the call path: a forward that slices an `nn.Sequential`
    (`self.body[:2](x)`) calls its layers through a container the model does not name."""
    names = {id(m): n for n, m in model.named_modules() if n}
    stack: list[list[float]] = []
    own: dict[str, float] = {}
    counter = None

    def pre(_mod: nn.Module, _args: object) -> None:
        stack.append([float(counter.get_total_flops()), 0.0])

    def post(mod: nn.Module, _args: object, _out: object) -> None:
        start, inner = stack.pop()
        total = float(counter.get_total_flops()) - start
        if stack:
            stack[-1][1] += total
        name = names.get(id(mod))
        if name is not None and total - inner > 0:
            own[name] = own.get(name, 0.0) + total - inner

    handles = [h for m in model.modules() if m is not model
               for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    try:
        with counting_flops() as counter:
            model(example)
    finally:
        for h in handles:
            h.remove()
    return own


@dataclass
class FlopModel:
    base: dict[str, float]                          # leaf layer -> its FLOPs in the teacher
    width_in: dict[str, int]
    width_out: dict[str, int]
    depthwise: set[str]
    reads: dict[int, list[tuple[str, float]]]       # group -> (layer, input channels per unit)
    writes: dict[int, list[tuple[str, float]]]      # group -> (layer, output channels per unit)
    widths: dict[int, int]                          # group -> units

    @classmethod
    def of(cls, model: nn.Module, example: torch.Tensor, groups: Mapping[int, ChannelGroup]) -> "FlopModel":
        leaves = own_flops(model, example[:1])
        width_in, width_out, depthwise = {}, {}, set()
        for name in leaves:
            layer = get_module(model, name)
            width_in[name] = getattr(layer, "in_channels", getattr(layer, "in_features", 0)) or 1
            width_out[name] = getattr(layer, "out_channels", getattr(layer, "out_features", 0)) or 1
            if getattr(layer, "groups", 1) > 1 and getattr(layer, "groups", 1) == width_in[name]:
                depthwise.add(name)
        reads = {gid: [(lc.name, sum(len(u) for u in lc.channels) / g.width) for lc in g.consumers]
                 for gid, g in groups.items()}
        writes = {gid: [(lc.name, sum(len(u) for u in lc.channels) / g.width) for lc in g.producers]
                  for gid, g in groups.items()}
        for gid, g in groups.items():
            if g.attention in leaves:
                # Its projections, scores and out_proj all run inside the attention (none is
                # called as a module): its own FLOPs go with the heads it keeps.
                width_out[g.attention] = g.width
                writes[gid].append((g.attention, 1.0))
        return cls(leaves, width_in, width_out, depthwise, reads, writes, {gid: g.width for gid, g in groups.items()})

    @classmethod
    def params_of(cls, model: nn.Module, groups: Mapping[int, ChannelGroup]) -> "FlopModel":
        """The same model counting parameters: each conv/linear weight, each bias and each norm's
        affine parameters is an entry that shrinks with the channels it has; parameters of no
        group's layers stay as they are."""
        base: dict[str, float] = {}
        width_in: dict[str, int] = {}
        width_out: dict[str, int] = {}
        flat: set[str] = set()  # entries that only have output channels
        counted: set[int] = set()
        for name, mod in model.named_modules():
            w = getattr(mod, "weight", None)
            if isinstance(mod, SOLVABLE):
                c_in = getattr(mod, "in_channels", getattr(mod, "in_features", 1))
                c_out = getattr(mod, "out_channels", getattr(mod, "out_features", 1))
                base[name], width_in[name], width_out[name] = float(w.numel()), c_in, c_out
                if getattr(mod, "groups", 1) > 1 and getattr(mod, "groups", 1) == c_in:
                    flat.add(name)
                counted.add(id(w))
                if mod.bias is not None:
                    key = f"{name}#bias"
                    base[key], width_in[key], width_out[key] = float(mod.bias.numel()), 1, c_out
                    flat.add(key)
                    counted.add(id(mod.bias))
        norm_names = {lc.name for g in groups.values() for lc in g.norms}
        for name in norm_names:
            mod = get_module(model, name)
            own = [p for p in mod.parameters(recurse=False) if id(p) not in counted]
            if own:
                c = own[0].shape[0]
                base[name], width_in[name], width_out[name] = float(sum(p.numel() for p in own)), 1, c
                flat.add(name)
                counted.update(id(p) for p in own)
        heads = {g.attention: g.width for g in groups.values() if g.attention}
        for name, width in heads.items():
            # Its q/k/v projections (packed or not, with their biases) lose a head's rows per head.
            own = [p for p in get_module(model, name).parameters(recurse=False) if id(p) not in counted]
            base[name], width_in[name], width_out[name] = float(sum(p.numel() for p in own)), 1, width
            flat.add(name)
            counted.update(id(p) for p in own)
        rest = float(sum(p.numel() for p in model.parameters() if id(p) not in counted))
        base["#rest"], width_in["#rest"], width_out["#rest"] = rest, 1, 1
        flat.add("#rest")
        writes = {gid: [(lc.name, sum(len(u) for u in lc.channels) / g.width) for lc in (*g.producers, *g.norms)]
                  + ([(g.attention, 1.0)] if g.attention else []) for gid, g in groups.items()}
        # A producer's bias has its output channels.
        for gid, g in groups.items():
            writes[gid] += [(f"{lc.name}#bias", sum(len(u) for u in lc.channels) / g.width)
                            for lc in g.producers if f"{lc.name}#bias" in base]
        reads = {gid: [(lc.name, sum(len(u) for u in lc.channels) / g.width) for lc in g.consumers]
                 for gid, g in groups.items()}
        return cls(base, width_in, width_out, flat, reads, writes, {gid: g.width for gid, g in groups.items()})

    @property
    def total(self) -> float:
        return sum(self.base.values())

    def _drops(self, removed: Mapping[int, float]) -> tuple[dict[str, float], dict[str, float]]:
        drop_in: dict[str, float] = {}
        drop_out: dict[str, float] = {}
        for gid, k in removed.items():
            for name, per in self.reads[gid]:
                drop_in[name] = drop_in.get(name, 0.0) + k * per
            for name, per in self.writes[gid]:
                drop_out[name] = drop_out.get(name, 0.0) + k * per
        return drop_in, drop_out

    def flops(self, removed: Mapping[int, float]) -> float:
        """FLOPs with `removed[g]` units of each group g removed (a fraction of a unit allowed)."""
        drop_in, drop_out = self._drops(removed)
        out = 0.0
        for name, base in self.base.items():
            keep_out = 1.0 - drop_out.get(name, 0.0) / self.width_out[name]
            keep_in = 1.0 if name in self.depthwise else 1.0 - drop_in.get(name, 0.0) / self.width_in[name]
            out += base * keep_in * keep_out
        return out

    def per_unit(self, removed: Mapping[int, float]) -> dict[int, float]:
        """FLOPs saved by removing one more unit of each group, the others as they are (FLOPs are
        linear in each group's count while the others stay fixed)."""
        drop_in, drop_out = self._drops(removed)

        def keep(name: str, side: str) -> float:
            if side == "in":
                return 1.0 if name in self.depthwise else 1.0 - drop_in.get(name, 0.0) / self.width_in[name]
            return 1.0 - drop_out.get(name, 0.0) / self.width_out[name]

        out = {}
        for gid in self.widths:
            saved = 0.0
            for name, per in self.reads[gid]:
                if name in self.base and name not in self.depthwise:
                    saved += self.base[name] * per / self.width_in[name] * keep(name, "out")
            for name, per in self.writes[gid]:
                if name in self.base:
                    saved += self.base[name] * per / self.width_out[name] * keep(name, "in")
            out[gid] = saved
        return out
