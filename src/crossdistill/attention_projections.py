"""The q, k and v projections of `nn.MultiheadAttention` as Linear layers the solvers can reach.

An attention keeps its three input projections as bare parameters — one packed (3E, E)
`in_proj_weight` (with `in_proj_bias`), or `q_proj_weight`/`k_proj_weight`/`v_proj_weight`
when key or value have another width — that `F.multi_head_attention_forward` reads itself.
Each is still a map `Y = W X` on one of the attention's inputs (query, key, value), so each is
one quadratic problem like any Linear. `PackedProjection` presents it as one: a Linear whose
`weight` and `bias` are views of the attention's own parameters, so that what a solver writes
into it lands in the attention. Layers are named `<attention>.q_proj`, `.k_proj`, `.v_proj`.
The proxy is a `WeightView` (weight_views.py): made on demand, never a child of the model.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from crossdistill.weight_views import WeightView

PROJECTIONS = ("q_proj", "k_proj", "v_proj")
_INPUTS = ("query", "key", "value")


class PackedProjection(WeightView):
    """Projection `index` (0 q, 1 k, 2 v) of `attention`, as a Linear (see the module docstring)."""

    def __init__(self, attention: nn.MultiheadAttention, index: int) -> None:
        super().__init__(attention, (attention.embed_dim, attention.kdim, attention.vdim)[index], attention.embed_dim)
        self.index = index

    @property
    def attention(self) -> nn.MultiheadAttention:
        return self.owner  # type: ignore[return-value]

    @property
    def packed(self) -> bool:
        return self.attention.in_proj_weight is not None

    def storage(self) -> tuple[nn.Parameter, slice]:
        """The attention parameter that holds this projection's weight, and its rows there."""
        a = self.attention
        if self.packed:
            e = a.embed_dim
            return a.in_proj_weight, slice(self.index * e, (self.index + 1) * e)
        return (a.q_proj_weight, a.k_proj_weight, a.v_proj_weight)[self.index], slice(None)

    @property  # type: ignore[override]
    def weight(self) -> torch.Tensor:
        param, rows = self.storage()
        return param[rows]

    @property  # type: ignore[override]
    def bias(self) -> torch.Tensor | None:
        b = self.attention.in_proj_bias  # one packed bias in both layouts
        if b is None:
            return None
        e = self.attention.embed_dim
        return b[self.index * e : (self.index + 1) * e]

    @property
    def parts(self) -> int:
        """How many projections share `storage()`'s parameter (3 packed, 1 own weight)."""
        return 3 if self.packed else 1

    def storage_key(self, name: str) -> str:
        """The state-dict key of that parameter, for the projection named `name`."""
        parent, _ = _split(name)
        attr = "in_proj_weight" if self.packed else f"{PROJECTIONS[self.index][0]}_proj_weight"
        return f"{parent}.{attr}" if parent else attr

    def read_input(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        """This projection's input in a call `attention(query, key, value, ...)`."""
        return args[self.index] if len(args) > self.index else kwargs[_INPUTS[self.index]]

    def kind(self) -> str:
        where = "in_proj_weight rows" if self.packed else "own weight"
        return f"Linear (MultiheadAttention {PROJECTIONS[self.index][0]}, {where})"

    def why_not_replaceable(self) -> str:
        return "its weight is rows of the attention's own parameter (in_proj_weight), not a module of its own"

    def extra_repr(self) -> str:
        return f"{PROJECTIONS[self.index]} of a MultiheadAttention, in_features={self.in_features}, " \
               f"out_features={self.out_features}"


def _split(name: str) -> tuple[str, str]:
    parent, _, leaf = name.rpartition(".")
    return parent, leaf


def packed_projection(model: nn.Module, name: str) -> PackedProjection | None:
    """The projection named `name` (e.g. 'blocks.0.attn.q_proj'), or None if `name` is not one."""
    parent_name, leaf = _split(name)
    if leaf not in PROJECTIONS:
        return None
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
    except AttributeError:
        return None
    if not isinstance(parent, nn.MultiheadAttention):
        return None
    return PackedProjection(parent, PROJECTIONS.index(leaf))


def later_projections(model: nn.Module, name: str) -> list[str]:
    """The projections of the same attention after `name` ([] unless `name` is a projection)."""
    if packed_projection(model, name) is None:
        return []
    parent, leaf = _split(name)
    return projection_names(parent)[PROJECTIONS.index(leaf) + 1 :]


def projection_names(name: str) -> list[str]:
    """The three projection layer names of the attention named `name`."""
    return [f"{name}.{p}" if name else p for p in PROJECTIONS]


def packed_layers(model: nn.Module) -> list[tuple[str, PackedProjection]]:
    """(name, proxy) of every attention projection of `model`, in module order."""
    return [(n, PackedProjection(m, i)) for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)
            for i, n in enumerate(projection_names(name))]
