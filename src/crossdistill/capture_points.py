"""Where a layer's input can be captured, for layers that are not simply called as modules.

Most convs and linears are called as modules, so a forward pre-hook on the layer sees its input.
Two torch modules read a child's weight themselves instead of calling the child:

- `nn.MultiheadAttention` hands `out_proj.weight` to `F.multi_head_attention_forward`, which
  applies it inside; `out_proj` is never called, so a hook on it never fires. Its input (the
  heads' concatenated attention values) is recovered by re-running the attention with
  `out_proj` swapped for an exact identity (`attention_values`). Its q/k/v projections are bare
  parameters presented as Linear layers (attention_projections.py); their inputs are the
  attention's query, key and value arguments.
- `nn.RNN`, `nn.LSTM` and `nn.GRU` apply their gate weights inside one fused kernel; each map is
  presented as a Linear (recurrent_weights.py), whose input is rebuilt from the module's call.
- `nn.TransformerEncoderLayer` (and `nn.TransformerEncoder`) pass `linear1/linear2.weight` and
  the attention's weights to a fused kernel on their fast path. The capture disables that fast
  path (`capture_mode`) so that the children are called as modules; in normal use the fused
  kernel reads the (compressed, same-shaped) weights, which is fine for sparsity and
  quantization, but a factorised child that has no `weight` breaks it (`parent_reads_weight`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from crossdistill.attention_projections import projection_names
from crossdistill.layer_lookup import find_layer
from crossdistill.recurrent_weights import layer_names, recurrent_modules, supported_reason
from crossdistill.weight_views import WeightView

Reader = Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], torch.Tensor]

# Parent type -> children whose `weight` the parent's forward reads directly (torch 2.x sources).
WEIGHT_READERS: dict[type, tuple[str, ...]] = {
    nn.MultiheadAttention: ("out_proj",),
    nn.TransformerEncoderLayer: ("linear1", "linear2"),
}


@dataclass(frozen=True)
class CapturePoint:
    """Hook `module`'s forward pre-hook (with kwargs); `read` returns the layer's input."""

    module: nn.Module
    read: Reader


def _first_arg(_module: nn.Module, args: tuple[Any, ...], _kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0]


class _Identity(nn.Module):
    """Stands in for out_proj: `weight`/`bias` as buffers (no parameters to create under
    inference mode), an identity map that `F.linear` reproduces exactly (x·1 + 0 = x)."""

    def __init__(self, like: nn.Linear) -> None:
        super().__init__()
        n = like.in_features
        self.register_buffer("weight", torch.eye(n, dtype=like.weight.dtype, device=like.weight.device))
        self.register_buffer("bias", torch.zeros(n, dtype=like.weight.dtype, device=like.weight.device))


def attention_values(mha: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """What `mha` feeds its out_proj on this call: the attention re-run with an identity out_proj.
    `forward` is called directly so that the hooks on `mha` do not fire a second time."""
    assert isinstance(mha, nn.MultiheadAttention)
    proj = mha.out_proj
    mha.out_proj = _Identity(proj)  # type: ignore[assignment]
    try:
        return type(mha).forward(mha, *args, **kwargs)[0]
    finally:
        mha.out_proj = proj


def _parent(model: nn.Module, name: str) -> tuple[nn.Module | None, str]:
    parent_name, _, leaf = name.rpartition(".")
    if not parent_name:
        return None, leaf
    return model.get_submodule(parent_name), leaf


def capture_point(model: nn.Module, name: str) -> CapturePoint:
    """Where the input of layer `name` is seen (the layer itself, or a parent that applies it)."""
    parent, leaf = _parent(model, name)
    if isinstance(parent, nn.MultiheadAttention) and leaf == "out_proj":
        return CapturePoint(parent, attention_values)
    layer = find_layer(model, name)
    if isinstance(layer, WeightView):
        view = layer
        return CapturePoint(view.owner, lambda _m, args, kwargs: view.read_input(args, kwargs))
    return CapturePoint(model.get_submodule(name), _first_arg)


def indirect_layers(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent module, layer name) of the layers applied by a parent instead of being called, in
    the order the parent applies them (q, k, v, then out_proj; a recurrent module's maps layer by layer)."""
    attention = [(m, layer) for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)
                 for layer in projection_names(n) + [f"{n}.out_proj" if n else "out_proj"]]
    return attention + [(m, layer) for n, m in recurrent_modules(model) if supported_reason(m) is None
                        for layer, *_ in layer_names(n, m)]


def parent_reads_weight(model: nn.Module, name: str) -> str | None:
    """Why layer `name` must keep a `weight` of its own shape (None when it need not): its
    parent reads the weight directly, so replacing the module (e.g. by low-rank factors) breaks it."""
    layer = find_layer(model, name)
    if isinstance(layer, WeightView):
        return layer.why_not_replaceable()
    parent, leaf = _parent(model, name)
    for kind, children in WEIGHT_READERS.items():
        if isinstance(parent, kind) and leaf in children:
            return f"its parent {type(parent).__name__} reads {leaf}.weight directly"
    return None


@contextlib.contextmanager
def fastpath_off() -> Iterator[None]:
    """The fused attention/transformer fast path off (restored after): every linear is then
    called as a module (hooked, counted) rather than read by a fused kernel. The fast path is
    taken in eval mode without grad, or when no weight requires grad (a frozen model)."""
    mha = getattr(torch.backends, "mha", None)
    before = mha.get_fastpath_enabled() if mha is not None else None
    if mha is not None:
        mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        if mha is not None:
            mha.set_fastpath_enabled(before)


@contextlib.contextmanager
def capture_mode() -> Iterator[None]:
    """Inference mode with the fused attention/transformer fast path off (`fastpath_off`)."""
    with fastpath_off(), torch.inference_mode():
        yield
