"""Weight matrices that live inside another module, presented as Linear layers the solvers can reach.

Some torch modules hold `Y = W X` maps as bare parameters and apply them themselves: an
`nn.MultiheadAttention`'s q/k/v projections (attention_projections.py), an RNN's, LSTM's or
GRU's input-to-hidden and hidden-to-hidden weights (recurrent_weights.py). A `WeightView` is a
Linear whose `weight` and `bias` are (views of) that module's own parameters, so what a solver
writes into it lands in the module; its input is read from the owner's call (`read_input`).
Views are made on demand (layer_lookup.find_layer) and are never children of the model: the
module tree, state dict and saved files stay those of the original model.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class WeightView(nn.Linear):
    """The common face of the views (see the module docstring). nn.Linear's own __init__ is not
    run by subclasses: it would create parameters of their own."""

    def __init__(self, owner: nn.Module, in_features: int, out_features: int) -> None:
        nn.Module.__init__(self)
        # Not registered as a submodule: the view must not become part of any module tree.
        object.__setattr__(self, "owner", owner)
        self.in_features = in_features
        self.out_features = out_features

    owner: nn.Module

    def storage(self) -> tuple[nn.Parameter, slice]:
        """The owner's parameter that holds this view's weight, and its rows there."""
        raise NotImplementedError

    @property
    def parts(self) -> int:
        """How many views share `storage()`'s parameter (so a file may omit it only when all are quantized)."""
        return 1

    def storage_key(self, name: str) -> str:
        """The state-dict key of `storage()`'s parameter, for the view named `name`."""
        raise NotImplementedError

    def read_input(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        """This view's input, from a call `owner(*args, **kwargs)`, features last."""
        raise NotImplementedError

    def kind(self) -> str:
        """What the view is, for the report's layer list."""
        raise NotImplementedError

    def why_not_replaceable(self) -> str:
        """Why the view cannot be swapped for another module (e.g. low-rank factors)."""
        raise NotImplementedError
