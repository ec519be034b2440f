"""Torch-Pruning's dependency graph, with channel index maps that are checked op by op.

Torch-Pruning (`tp.DependencyGraph`) traces a model through autograd and links every layer to
the layers whose channels it shares. Its index maps, though, come from channel counts it
infers by walking the graph and from a name match on each autograd node, and an op it does
not know counts as element-wise. Seen with torch-pruning 1.6.1: the channel padding of option-A
ResNet shortcuts couples the 16 stem channels to the first 16 of the 32- and 64-wide streams
(and a flatten of stride 4 into the classifier), so pruning one channel leaves a model that
crashes; a channel shuffle (view/transpose/view) makes its graph build fail with a division by
zero; chunk outputs are numbered in the order its traversal meets them, so x2 can get x1's
indices. A wrong map is silent when shapes still agree: the wrong channels are removed.

So this module keeps Torch-Pruning's tracing, coupling rules, traversal and pruning functions,
and replaces every index map by one computed from the real tensor shapes of the traced pass.
Ops whose effect on channels is not known for sure are barriers: a group stops there and is
marked unprunable, with the op's name as the reason.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from math import prod
from typing import Any, Callable, Iterator

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops as tp_ops

from crossdistill.errors import CrossDistillError

Shape = tuple[int, ...]
IdxMap = Callable[[int], tuple[int, ...]]  # one channel index -> the indices it becomes

# Modules Torch-Pruning hooks; ops run inside them belong to them (e.g. the views of a Linear
# on a 3-d input, or everything MultiheadAttention computes).
HOOKED = (tp_ops.TORCH_CONV, tp_ops.TORCH_BATCHNORM, tp_ops.TORCH_LAYERNORM, tp_ops.TORCH_GROUPNORM,
          tp_ops.TORCH_INSTANCENORM, tp_ops.TORCH_PRELU, tp_ops.TORCH_LINEAR, tp_ops.TORCH_EMBED,
          tp_ops.TORCH_MHA, tp_ops.TORCH_LSTM)

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
    "ReplicationPad2D".split()
)
REDUCE = frozenset("Mean Sum Amax Amin Std Var Logsumexp".split())
RESHAPE = frozenset("View Reshape ReshapeAlias UnsafeView Squeeze Unsqueeze".split())
DUMMY = (tp_ops._ConcatOp, tp_ops._SplitOp, tp_ops._ReshapeOp, tp_ops._ElementWiseOp, tp_ops._SliceOp,
         tp_ops._UnbindOp, tp_ops._ExpandOp, tp_ops._OutputOp)


# -- index maps ----------------------------------------------------------------------------------

def _offset(k: int) -> IdxMap:
    return lambda i: (i + k,)


def _window(lo: int, hi: int) -> IdxMap:
    return lambda i: (i - lo,) if lo <= i < hi else ()


def _spread(s: int) -> IdxMap:  # channel -> its s features after a flatten
    return lambda i: tuple(range(i * s, (i + 1) * s))


def _gather(s: int) -> IdxMap:
    return lambda i: (i // s,)


def _table(t: dict[int, int]) -> IdxMap:
    return lambda i: (t[i],) if i in t else ()


def _either(paths: list[list[IdxMap]]) -> IdxMap:
    def run(i: int) -> tuple[int, ...]:
        out = []
        for path in paths:
            cur = [i]
            for fn in path:
                cur = [j for c in cur for j in fn(c)]
            out += cur
        return tuple(out)
    return run


def _stop(_: int) -> tuple[int, ...]:
    return ()


class DepMap:
    """Installed as a Dependency's index map: maps Torch-Pruning's (idx, root_idx) pairs."""

    def __init__(self, fns: list[IdxMap]) -> None:
        self.fns = fns

    def __call__(self, idxs: list) -> list:
        out = list(idxs)
        for fn in self.fns:
            out = [i._replace(idx=j) for i in out for j in fn(i.idx)]
        seen: set = set()  # many-to-one maps (a flatten, backwards) repeat pairs
        return [i for i in out if not ((i.idx, i.root_idx) in seen or seen.add((i.idx, i.root_idx)))]


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

    def name(self, node: Any) -> str:
        return self.names.get(node.module) or (node.grad_fn.name() if node.grad_fn is not None else "?")


def tensors(x: Any) -> Iterator[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from tensors(v)
    elif isinstance(x, dict):
        for v in x.values():
            yield from tensors(v)


class _DependencyGraph(tp.DependencyGraph):
    """Torch-Pruning's graph without its own index maps.

    After linking the nodes, build_dependency infers channel counts and sets index maps for
    concat/split/reshape/slice nodes (and does so again on every group query). That inference
    crashes on a channel shuffle (a division by zero in its reshape rule) and is wrong across
    unknown ops, and `_install_maps` replaces all maps anyway: so the structural nodes are
    re-typed as element-wise right here, which those passes skip.
    """

    def _build_dependency(self, module2node: dict) -> None:
        super()._build_dependency(module2node)
        for node in module2node.values():
            if isinstance(node.module, DUMMY) and node.type != tp_ops.OPTYPE.OUTPUT:
                node.type = tp_ops.OPTYPE.ELEMENTWISE


def _seq_now() -> int:
    # Autograd numbers its nodes in creation order; a node made after this call is newer.
    return torch.zeros((), requires_grad=True).clone().grad_fn._sequence_nr()


def trace(model: nn.Module, example: torch.Tensor) -> Graph:
    """Build Torch-Pruning's graph of `model` on `example` and install checked index maps."""
    names: dict[Any, str] = {m: n for n, m in model.named_modules()}
    names.update({p: n for n, p in model.named_parameters()})
    order: list[nn.Module] = []
    calls: Counter = Counter()
    owner: dict[Any, nn.Module] = {}
    outputs: set = set()
    starts: dict[nn.Module, list[int]] = {}

    def pre(mod: nn.Module, _args: Any) -> None:
        starts.setdefault(mod, []).append(_seq_now())

    def post(mod: nn.Module, _args: Any, out: Any) -> None:
        start = starts[mod].pop()
        calls[mod] += 1
        if calls[mod] == 1:
            order.append(mod)
        # Every node made during this call, reachable from its output, is inside the module.
        todo = [t.grad_fn for t in tensors(out) if t.grad_fn is not None]
        seen: set = set()
        while todo:
            fn = todo.pop()
            if fn in seen or hasattr(fn, "variable") or fn._sequence_nr() <= start:
                continue
            seen.add(fn)
            owner.setdefault(fn, mod)
            todo.extend(f for f, _ in fn.next_functions if f is not None)

    def forward(m: nn.Module, x: torch.Tensor) -> Any:
        hooks = [h for mod in m.modules() if isinstance(mod, HOOKED)
                 for h in (mod.register_forward_pre_hook(pre), mod.register_forward_hook(post))]
        try:
            out = m(x)
        finally:
            for h in hooks:
                h.remove()
        outputs.update(t.grad_fn for t in tensors(out) if t.grad_fn is not None)
        return out

    modes = [(m, m.training) for m in model.modules()]
    try:
        # Torch-Pruning traces through autograd; it also switches the model to eval mode.
        with torch.inference_mode(False), torch.enable_grad():
            dg = _DependencyGraph().build_dependency(model, example, forward_fn=forward, verbose=False)
    except Exception as exc:  # noqa: BLE001 - any tracing failure is the model's, not ours
        raise CrossDistillError(f"cannot trace {type(model).__name__} for channel groups: {exc}") from exc
    finally:
        for m, mode in modes:  # per module: some may be frozen in eval on purpose
            m.training = mode
    graph = Graph(dg, names, order, calls, owner, outputs)
    _install_maps(graph, strict3d=any(isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)) for m in model.modules()))
    return graph


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


def _axis(ndim: int, strict3d: bool) -> int | None:
    """The channel axis by layout: N C *spatial for 4-d and up, features last below. A 3-d
    tensor is (batch, tokens, features) unless the model has 1-d convs: then it is ambiguous."""
    if ndim >= 4:
        return 1
    if ndim == 3:
        return None if strict3d else 2
    return ndim - 1 if ndim else None


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


def _classify(graph: Graph, node: Any, strict3d: bool) -> _OpMaps:
    fn = node.grad_fn
    name, base = fn.name(), _base(fn)
    out = _shape(fn)
    ins = [(p, _shape(f, k)) for p, (f, k) in enumerate(fn.next_functions) if f is not None]
    if node.type == tp_ops.OPTYPE.OUTPUT:
        return _OpMaps("reaches the model output")
    if out is None or any(s is None for _, s in ins):
        return _OpMaps(f"feeds an op of unknown shape: {name}")
    a = _axis(len(out), strict3d)
    unsupported = _OpMaps(f"feeds an unsupported op: {name}")

    if base in POINTWISE:
        for _, s in ins:
            if s == out or not s:
                continue
            padded = (1,) * (len(out) - len(s)) + s  # broadcasting aligns trailing dims
            if a is None or len(s) > len(out) or padded[a] != out[a]:
                return _OpMaps(f"feeds an unsupported op: {name} (broadcasts across channels)")
        return _OpMaps()
    if base in SPATIAL:
        # Pooling, resizing, padding: (N, C, *spatial) in and out, C unchanged.
        if len(out) < 4 or any(len(s) != len(out) or s[1] != out[1] for _, s in ins):
            why = "pads the channel dimension" if "Pad" in base else "changes the channel count"
            return _OpMaps(f"feeds an unsupported op: {name} ({why})")
        return _OpMaps()
    if base in REDUCE:
        dims = getattr(fn, "_saved_dim", None)
        s = ins[0][1] if ins else None
        if dims is None or s is None or _axis(len(s), strict3d) is None:
            return unsupported
        ain = _axis(len(s), strict3d)
        dims = [d % len(s) for d in (dims if isinstance(dims, (tuple, list)) else [dims])]
        keep = bool(getattr(fn, "_saved_keepdim", False))
        aout = ain if keep else ain - sum(d < ain for d in dims)
        if ain in dims or _axis(len(out), strict3d) != aout or out[aout] != s[ain]:
            return _OpMaps(f"feeds an unsupported op: {name} (reduces or moves the channel dimension)")
        return _OpMaps()
    if base in RESHAPE or base == "Select":
        s = ins[0][1]
        ain, aout = _axis(len(s), strict3d), _axis(len(out), strict3d)
        if ain is None or aout is None:
            return unsupported
        lead_in, lead_out = prod(s[:ain]), prod(out[:aout])
        if base == "Select":  # drops one dim; fine unless it is the channel one
            dim = fn._saved_dim % len(s)
            ok = dim != ain and out[aout] == s[ain] and aout == ain - (dim < ain)
            return _OpMaps() if ok else unsupported
        if lead_in == lead_out and s[ain] == out[aout]:
            return _OpMaps()  # row-major layout keeps every element in its channel
        trail = prod(s[ain + 1:])
        if lead_in == lead_out and out[aout] == s[ain] * trail and trail > 1:
            # A flatten: channel c becomes features c*trail ... (c+1)*trail-1.
            return _OpMaps(in_fwd={0: _spread(trail)}, in_bwd={0: _gather(trail)})
        return _OpMaps(f"feeds an unsupported op: {name} (reshapes the channel dimension {s} -> {out})")
    if base == "Slice":
        s = ins[0][1]
        if a is None or len(s) != len(out) or s[a] != out[a]:
            return _OpMaps(f"feeds an unsupported op: {name} (slices the channel dimension)")
        return _OpMaps()
    if base == "Cat":
        if a is None:
            return unsupported
        dim = fn._saved_dim % len(out)
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
        if a is None or _axis(len(s), strict3d) != a:
            return unsupported
        dim = fn._saved_dim % len(s)
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
        swapped = {fn._saved_dim0, fn._saved_dim1}
    elif base == "Permute":
        dims = tuple(fn._saved_dims)
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


def _install_maps(graph: Graph, strict3d: bool) -> None:
    dg = graph.dg
    nodes = list(dg.module2node.values())
    ops: dict[Any, _OpMaps] = {n: _OpMaps() for n in nodes}
    for node in nodes:
        if _is_free(graph, node) or node.type == tp_ops.OPTYPE.OUTPUT:
            ops[node] = _classify(graph, node, strict3d)
    for node in nodes:
        if not _is_free(graph, node):
            continue
        chain = _shuffle(graph, node)
        native = _base(node.grad_fn) == "ChannelShuffle" and len(_shape(node.grad_fn) or ()) >= 4
        if chain or native:
            first = chain[0] if chain else node
            g, m = _shape(first.grad_fn)[1:3] if chain else (
                node.grad_fn._saved_groups, _shape(node.grad_fn)[1] // node.grad_fn._saved_groups)
            # Pre-shuffle channel i*m + j lands at j*g + i.
            perm = {i * m + j: j * g + i for i in range(g) for j in range(m)}
            for n in chain or ():
                ops[n] = _OpMaps()
            ops[node] = _OpMaps(in_fwd={0: _table(perm)}, in_bwd={0: _table({v: k for k, v in perm.items()})})
            # Where the ties are read: before the shuffle (the first view) or after (native op).
            graph.shuffles[first] = (g, m, not chain)

    node_of = {n.grad_fn: n for n in nodes if n.grad_fn is not None}

    def links(src: Any, dst: Any) -> list[tuple[int, int]]:
        """(output index of src, input position of dst) for each tensor src hands to dst."""
        return [(k, p) for p, (f, k) in enumerate(dst.grad_fn.next_functions)
                if f is not None and node_of.get(f) is src]

    def route(src: Any, dst: Any, forward: bool) -> list[IdxMap]:
        """The maps along the edge src -> dst (forward), or back from dst to src."""
        paths = []
        for k, p in links(src, dst) or [(0, 0)]:
            if forward:
                paths.append([f for f in (ops[src].out_fwd.get(k), ops[dst].in_fwd.get(p)) if f])
            else:
                paths.append([f for f in (ops[dst].in_bwd.get(p), ops[src].out_bwd.get(k)) if f])
        # A tensor used at several inputs (cat(x, x), cat(x2, x1) of one chunk): every place.
        return paths[0] if len(paths) == 1 else [_either(paths)]

    for node, op in ops.items():
        if op.reason:
            graph.barrier[node] = op.reason

    for node in nodes:
        for dep in node.dependencies:
            tgt = dep.target
            if node in graph.barrier:
                fns: list[IdxMap] = [_stop]  # a group may reach a barrier, never cross it
            elif tgt in node.outputs:
                fns = route(node, tgt, forward=True)
            else:
                fns = route(tgt, node, forward=False)
            dep.index_mapping = [DepMap(fns), None]
