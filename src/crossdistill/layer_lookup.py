"""How every part of the library finds a layer by name: a submodule, or a weight matrix that
another module holds and applies itself, presented as a Linear (weight_views.py).

A new kind of view is one module with a finder (model, name) -> view | None and a lister
model -> [(name, view)], and one line in each of `_FINDERS` and `_LISTERS`.
"""
from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from crossdistill.attention_projections import packed_layers, packed_projection
from crossdistill.recurrent_weights import recurrent_layers, recurrent_weight
from crossdistill.weight_views import WeightView

_FINDERS: Sequence[Callable[[nn.Module, str], WeightView | None]] = (packed_projection, recurrent_weight)
_LISTERS: Sequence[Callable[[nn.Module], Sequence[tuple[str, WeightView]]]] = (packed_layers, recurrent_layers)


def find_layer(model: nn.Module, name: str) -> nn.Module | None:
    """The submodule `name`, else the weight view of that name (None if neither)."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        pass
    for find in _FINDERS:
        view = find(model, name)
        if view is not None:
            return view
    return None


def view_layers(model: nn.Module) -> list[tuple[str, WeightView]]:
    """(name, view) of every weight view of `model` (attention projections, recurrent maps)."""
    return [pair for lister in _LISTERS for pair in lister(model)]
