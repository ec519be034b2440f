"""What each op of a traced pass does to channels: the op tables, the record of one traced
pass (`Graph`), and the per-op classification that picks an index map or a barrier.

Split from graph_trace, which runs the trace and installs the maps chosen here: this part
reads only shapes and autograd node names, never Torch-Pruning's own channel inference (see
graph_trace's docstring for why that is not trusted).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from math import prod
from typing import Any, Iterator

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops as tp_ops

from crossdistill.compression.graph_maps import IdxMap, Shape, _gather, _offset, _spread, _window
from crossdistill.compression.graph_rules import current_rules
from crossdistill.model_outputs import flat

# Ops that act on each channel alone (checked against shapes below), by autograd node name.
POINTWISE = frozenset(
    "Add Sub Mul Div Neg Relu Hardtanh LeakyRelu Gelu Silu Sigmoid Tanh Hardswish Hardsigmoid Elu "
    "Selu Celu Softplus Mish Clamp ClampMin ClampMax Abs Pow Exp Log Sqrt Rsqrt Maximum Minimum "
    "Clone ToCopy Alias NativeDropout Threshold".split()
)
SPATIAL = frozenset(
    "MaxPool2DWithIndices MaxPool3DWithIndices AvgPool2D AvgPool3D AdaptiveAvgPool2D AdaptiveAvgPool3D "
    "AdaptiveMaxPool2D AdaptiveMaxPool3D UpsampleNearest2D UpsampleNearestExact2D UpsampleBilinear2D "
    "UpsampleBicubic2D UpsampleNearest3D UpsampleTrilinear3D ConstantPadNd ReflectionPad2D "
    "ReplicationPad2D UpsampleNearest1D UpsampleNearestExact1D UpsampleLinear1D ReflectionPad1D "
    "ReplicationPad1D".split()
)
REDUCE = frozenset("Mean Sum Amax Amin Max Min Std Var Logsumexp".split())
RESHAPE = frozenset("View Reshape ReshapeAlias UnsafeView Squeeze Unsqueeze".split())
# Torch-Pruning's own bookkeeping nodes (concat, split, reshape, ...): no module of the model.
DUMMY = (tp_ops._ConcatOp, tp_ops._SplitOp, tp_ops._ReshapeOp, tp_ops._ElementWiseOp, tp_ops._SliceOp,
         tp_ops._UnbindOp, tp_ops._ExpandOp, tp_ops._OutputOp)


# -- what one traced pass records ----------------------------------------------------------------

@dataclass
class Graph:
    """The dependency graph of one model plus what the checks need."""

    dg: tp.DependencyGraph
    names: dict[Any, str]                   # module -> qualified name
    order: list[nn.Module]                  # hooked modules, in the order the forward runs them
    calls: Counter                          # module -> times run (shared layers run twice)
    owner: dict[Any, nn.Module]             # autograd node -> hooked module it runs inside
    output_fns: set                         # autograd nodes that make the model's outputs
    barrier: dict[Any, str] = field(default_factory=dict)  # tp Node -> why channels stop there
    shuffles: dict[Any, tuple[int, int, bool]] = field(default_factory=dict)  # -> (g, m, after)
    splits: dict[Any, tuple[int, int]] = field(default_factory=dict)  # chunk -> (size, parts)
    tied: dict[str, str] = field(default_factory=dict)  # layer -> why its weight is shared (capture.tied_weights)

    def name(self, node: Any) -> str:
        return self.names.get(node.module) or (node.grad_fn.name() if node.grad_fn is not None else "?")


def tensors(x: Any) -> Iterator[torch.Tensor]:
    """Every tensor of a module's output (tuples, lists, dicts, named tuples), in order."""
    return iter(flat(x))


# -- shapes and channel axes ---------------------------------------------------------------------

def _shape(fn: Any, k: int = 0) -> Shape | None:
    if fn is None:
        return None
    if hasattr(fn, "variable"):
        return tuple(fn.variable.shape)
    try:
        # Private but stable in the pinned torch: the shapes of a node's outputs.
        return tuple(fn._input_metadata[k].shape)
    except (AttributeError, IndexError):
        return None


def _axis(ndim: int, axis3d: int | None) -> int | None:
    """The channel axis by layout: N C *spatial for 4-d and up, features last below 3-d. A 3-d
    tensor's is `axis3d`: 2 for (batch, tokens, features), 1 for a Conv1d's (batch, channels,
    length), None where unknown (graph_trace.trace decides from the layers that read one, or, in a
    model with both layouts or where no layer reads one, from the layers each 3-d tensor comes from)."""
    if ndim >= 4:
        return 1
    if ndim == 3:
        return axis3d
    return ndim - 1 if ndim else None


def _dim(value: int, ndim: int) -> int:
    """A dim autograd saved, as an index in 0 … ndim−1: a negative dim (`mean(-1)`) is stored as
    its unsigned 64-bit wrap-around, which `% ndim` alone maps right only when ndim divides 2⁶⁴."""
    value = int(value)
    if value >= 1 << 63:
        value -= 1 << 64
    return value % ndim


def _base(fn: Any) -> str:
    return re.sub(r"Backward\d*$", "", fn.name())


def _is_free(graph: Graph, node: Any) -> bool:
    return isinstance(node.module, DUMMY) and node.grad_fn is not None and node.grad_fn not in graph.owner


# -- per-op classification ------------------------------------------------------------------------

@dataclass
class _OpMaps:
    reason: str | None = None
    in_fwd: dict[int, IdxMap] = field(default_factory=dict)   # input position -> node space
    in_bwd: dict[int, IdxMap] = field(default_factory=dict)
    out_fwd: dict[int, IdxMap] = field(default_factory=dict)  # node space -> output k
    out_bwd: dict[int, IdxMap] = field(default_factory=dict)


# What the common unsupported ops do to channels, for the reasons users read in the report.
_WHY = {
    "Convolution": "a convolution called as F.conv2d/F.conv1d, not through an nn.Conv2d module",
    "Permute": "moves the channel dimension, e.g. to channels-last for a LayerNorm or Linear",
    "Transpose": "moves the channel dimension",
    "Mm": "a matrix product over channels", "Bmm": "a matrix product over channels",
    "Softmax": "mixes channels", "LogSoftmax": "mixes channels",
    "Stack": "stacks tensors along a new dimension, which moves the channels' position",
    "Expand": "expands a tensor to a new shape (.expand, or a broadcast inside a matmul)",
    "AsStrided": "a strided view",
}


def _broadcast_why(padded: tuple[int, ...], out: tuple[int, ...], a: int | None) -> str:
    """Why an elementwise op with a broadcast operand (`padded`, aligned to `out`) blocks a group,
    in the words of the patterns that cause it."""
    if len(out) >= 3 and a != len(out) - 1 and padded[-1] == out[-1] > 1 and all(p == 1 for p in padded[:-1]):
        return ("a vector over the last dimension of a channels-last tensor (..., C), such as a layer scale "
                "after a permute: channels are followed in the (N, C, ...) layout only")
    if a is not None and padded[a] == 1 < out[a] and all(p in (1, o) for p, o in zip(padded, out)):
        return ("combines every channel with a value taken over all of them, such as x - x.mean(1) in a "
                "hand-written norm over channels: dropping channels changes that value")
    return "broadcasts across channels"


def _classify(graph: Graph, node: Any, axis3d: int | None) -> _OpMaps:
    fn = node.grad_fn
    name, base = fn.name(), _base(fn)
    out = _shape(fn)
    ins = [(p, _shape(f, k)) for p, (f, k) in enumerate(fn.next_functions) if f is not None]
    if node.type == tp_ops.OPTYPE.OUTPUT:
        return _OpMaps("reaches the model output")
    if out is None or any(s is None for _, s in ins):
        return _OpMaps(f"feeds an op of unknown shape: {name}")
    a = _axis(len(out), axis3d)
    why = _WHY.get(base)
    if why is None and axis3d is None and 3 in {len(out), *(len(s) for _, s in ins)}:
        why = ("a 3-d tensor whose channel axis is not guessed: the layers it comes from are of both layouts, (N, C, L) "
               "and (N, L, C), or none is reached without crossing a transpose")
    unsupported = _OpMaps(f"feeds an unsupported op: {name}" + (f" ({why})" if why else ""))

    followed = current_rules() >= 2  # graph_rules: records traced before these rules stop here
    if followed and base in ("Softmax", "LogSoftmax") and len(ins) == 1 and ins[0][1] == out and a is not None:
        # Over another dim than the channels (a spatial softmax), each channel's values stay its own.
        return _OpMaps() if _dim(fn._saved_dim, len(out)) != a else unsupported
    if followed and base in ("PixelShuffle", "PixelUnshuffle") and len(ins) == 1 and len(out) == 4 == len(ins[0][1]):
        # PixelShuffle(r): channels c·r² … c·r²+r²−1 become channel c's r×r sub-pixels (Unshuffle: back).
        # On N×C×H×W only: on more dims the op works on dim -3, not the channels.
        r2 = int(fn._saved_upscale_factor if base == "PixelShuffle" else fn._saved_downscale_factor) ** 2
        if base == "PixelShuffle":
            return _OpMaps(in_fwd={0: _gather(r2)}, in_bwd={0: _spread(r2)})
        return _OpMaps(in_fwd={0: _spread(r2)}, in_bwd={0: _gather(r2)})
    if base in POINTWISE:
        for _, s in ins:
            if s == out or not s:
                continue
            padded = (1,) * (len(out) - len(s)) + s  # broadcasting aligns trailing dims
            if a is None or len(s) > len(out) or padded[a] != out[a]:
                return _OpMaps(f"feeds an unsupported op: {name} ({_broadcast_why(padded, out, a)})")
        return _OpMaps()
    if base in SPATIAL:
        # Pooling, resizing, padding: (N, C, *spatial) in and out, C unchanged.
        if a != 1 or any(len(s) != len(out) or s[1] != out[1] for _, s in ins):
            why = "pads the channel dimension" if "Pad" in base else "changes the channel count"
            return _OpMaps(f"feeds an unsupported op: {name} ({why})")
        return _OpMaps()
    if base in REDUCE:
        dims = getattr(fn, "_saved_dim", None)
        s = ins[0][1] if ins else None
        if dims is None or s is None or _axis(len(s), axis3d) is None:
            return unsupported
        ain = _axis(len(s), axis3d)
        dims = [_dim(d, len(s)) for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
        keep = bool(getattr(fn, "_saved_keepdim", False))
        aout = ain if keep else ain - sum(d < ain for d in dims)
        if ain in dims:
            return _OpMaps(f"feeds an unsupported op: {name} (reduces over the channel dimension: a sum, mean or "
                           "norm across channels, as a hand-written norm over channels (LayerNorm2d) takes)")
        if _axis(len(out), axis3d) != aout or out[aout] != s[ain]:
            return _OpMaps(f"feeds an unsupported op: {name} (moves the channel dimension)")
        return _OpMaps()
    if base in RESHAPE or base == "Select":
        s = ins[0][1]
        if base != "Select" and [d for d in s if d != 1] == [d for d in out if d != 1]:
            # Only unit dimensions added or removed (an SE gate's g[:, :, None, None], a flatten
            # of N x C x 1 x 1): every element keeps its order, whatever the layout of the 3-d
            # tensor in between (the slim-vs-masked check would catch a map gone wrong).
            return _OpMaps()
        ain, aout = _axis(len(s), axis3d), _axis(len(out), axis3d)
        if ain is None or aout is None:
            return unsupported
        lead_in, lead_out = prod(s[:ain]), prod(out[:aout])
        if base == "Select":  # drops one dim; fine unless it is the channel one
            dim = _dim(fn._saved_dim, len(s))
            ok = dim != ain and out[aout] == s[ain] and aout == ain - (dim < ain)
            return _OpMaps() if ok else unsupported
        if lead_in == lead_out and s[ain] == out[aout]:
            return _OpMaps()  # row-major layout keeps every element in its channel
        trail = prod(s[ain + 1:])
        if lead_in == lead_out and out[aout] == s[ain] * trail and trail > 1:
            # A flatten: channel c becomes features c*trail ... (c+1)*trail-1.
            return _OpMaps(in_fwd={0: _spread(trail)}, in_bwd={0: _gather(trail)})
        if len(s) >= 4 and len(out) == 3 and tuple(s[:2]) == tuple(out[:2]) and aout != 1:
            # x.flatten(2) keeps the channels at dim 1, but a 3-d tensor's channel axis is one per model.
            return _OpMaps(f"feeds an unsupported op: {name} (flattens the dims after the channels, {s} -> {out}: "
                           "in this model the channels of a 3-d tensor are taken as its last axis, as a "
                           "transformer's features, so they cannot be followed into it)")
        return _OpMaps(f"feeds an unsupported op: {name} (reshapes the channel dimension {s} -> {out})")
    if base == "Slice":
        s = ins[0][1]
        if a is None or len(s) != len(out) or s[a] != out[a]:
            return _OpMaps(f"feeds an unsupported op: {name} (slices the channel dimension)")
        return _OpMaps()
    if base == "Cat":
        if a is None:
            return unsupported
        dim = _dim(fn._saved_dim, len(out))
        if len(ins) != len(fn.next_functions):
            return _OpMaps(f"feeds an unsupported op: {name} (concatenates a tensor outside the graph)")
        if dim != a:
            return _OpMaps() if all(s[a] == out[a] for _, s in ins) else unsupported
        maps, off = _OpMaps(), 0
        for p, s in ins:
            maps.in_fwd[p], maps.in_bwd[p] = _offset(off), _window(off, off + s[a])
            off += s[a]
        return maps if off == out[a] else unsupported
    if base in ("Split", "SplitWithSizes", "UnsafeSplit"):
        s = ins[0][1]
        if a is None or _axis(len(s), axis3d) != a:
            return unsupported
        dim = _dim(fn._saved_dim, len(s))
        if dim != a:
            return _OpMaps()
        sizes = [_shape(fn, k)[a] for k in range(len(fn._input_metadata))]
        if len(set(sizes)) != 1:
            # torch.split(x, [a, b]) usually has its sizes written in the code: they would not
            # follow a pruned input. Equal parts (chunk) are recomputed from the input.
            return _OpMaps(f"feeds an unsupported op: {name} (splits channels into unequal parts {sizes})")
        graph.splits[node] = (sizes[0], len(sizes))
        maps = _OpMaps()
        for k, c in enumerate(sizes):
            maps.out_fwd[k], maps.out_bwd[k] = _window(k * c, (k + 1) * c), _offset(k * c)
        return maps
    return unsupported


def _shuffle(graph: Graph, node: Any) -> tuple[Any, ...] | None:
    """Recognise view(n, g, c/g, ...) -> transpose(1, 2) -> [contiguous] -> view(n, c, ...) at
    its transpose `node`; return (first view, transpose, *rest) or None."""
    fn = node.grad_fn
    base = _base(fn)
    if base == "Transpose":
        ndim = len(_shape(fn) or ())
        swapped = {_dim(fn._saved_dim0, ndim), _dim(fn._saved_dim1, ndim)} if ndim else set()
    elif base == "Permute":
        dims = tuple(_dim(d, len(fn._saved_dims)) for d in fn._saved_dims)
        swapped = {1, 2} if dims[:3] == (0, 2, 1) and dims[3:] == tuple(range(3, len(dims))) else set()
    else:
        return None
    if swapped != {1, 2} or len(node.inputs) != 1 or len(node.outputs) != 1:
        return None
    first = node.inputs[0]
    if not _is_free(graph, first) or _base(first.grad_fn) not in RESHAPE or len(first.outputs) != 1:
        return None
    s, u = _shape(first.grad_fn.next_functions[0][0], first.grad_fn.next_functions[0][1]), _shape(first.grad_fn)
    if s is None or u is None or len(s) < 4 or len(u) != len(s) + 1:
        return None
    if u[0] != s[0] or u[1] * u[2] != s[1] or u[3:] != s[2:]:
        return None
    chain, nxt = [first, node], node.outputs[0]
    while _is_free(graph, nxt) and _base(nxt.grad_fn) == "Clone" and len(nxt.outputs) == 1:
        chain.append(nxt)
        nxt = nxt.outputs[0]
    if _is_free(graph, nxt) and _base(nxt.grad_fn) in RESHAPE and _shape(nxt.grad_fn) == s:
        return (*chain, nxt)
    return None
