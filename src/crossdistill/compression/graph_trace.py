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

The work is split by job: graph_maps holds the index maps, graph_ops the op tables, the
record of a traced pass (`Graph`) and the per-op classification; this module traces and
installs the maps. Their names stay importable from here.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops as tp_ops

from crossdistill.compression.graph_maps import (  # noqa: F401 - re-exported: this module's old names
    DepMap, IdxMap, Shape, _either, _gather, _offset, _spread, _stop, _table, _window,
)
from crossdistill.compression.graph_ops import (  # noqa: F401 - re-exported: this module's old names
    DUMMY, POINTWISE, REDUCE, RESHAPE, SPATIAL, Graph, _axis, _base, _classify, _is_free, _OpMaps, _shape,
    _shuffle, tensors,
)
from crossdistill.compression.graph_rules import current_rules
from crossdistill.capture import tied_weights
from crossdistill.errors import CrossDistillError

# Modules Torch-Pruning hooks; ops run inside them belong to them (e.g. the views of a Linear
# on a 3-d input, or everything MultiheadAttention computes).
HOOKED = (tp_ops.TORCH_CONV, tp_ops.TORCH_BATCHNORM, tp_ops.TORCH_LAYERNORM, tp_ops.TORCH_GROUPNORM,
          tp_ops.TORCH_INSTANCENORM, tp_ops.TORCH_PRELU, tp_ops.TORCH_LINEAR, tp_ops.TORCH_EMBED,
          tp_ops.TORCH_MHA, tp_ops.TORCH_LSTM)


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
    with torch.enable_grad():  # also inside a `torch.no_grad()` block of the model's forward
        return torch.zeros((), requires_grad=True).clone().grad_fn._sequence_nr()


def _row_major(t: torch.Tensor) -> bool:
    # Stricter than is_contiguous(), which also passes a 1×1 conv weight in channels_last strides:
    # a conv decides its output layout from the strides themselves.
    expected, step = [], 1
    for size in reversed(t.shape):
        expected.append(step)
        step *= size
    return tuple(reversed(expected)) == t.stride()


def trace(model: nn.Module, example: torch.Tensor) -> Graph:
    """Build Torch-Pruning's graph of `model` on `example` and install checked index maps."""
    names: dict[Any, str] = {m: n for n, m in model.named_modules()}
    names.update({p: n for n, p in model.named_parameters()})
    order: list[nn.Module] = []
    calls: Counter = Counter()
    owner: dict[Any, nn.Module] = {}
    outputs: set = set()
    starts: dict[nn.Module, list[int]] = {}
    layouts: set[int] = set()  # channel axes of the 3-d tensors the layers read

    def pre(mod: nn.Module, args: Any) -> None:
        starts.setdefault(mod, []).append(_seq_now())
        x = next(tensors(args), None)
        if x is not None and x.dim() == 3:
            layouts.add(_channel_axis_3d(mod))

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
        # Only outputs computed from the parameters: one that passes the input (or a constant)
        # through has no node to trace from, and Torch-Pruning stops on it.
        return [t for t in tensors(out) if t.grad_fn is not None]

    modes = [(m, m.training) for m in model.modules()]
    # Channels-last strides (images permuted from N×H×W×C, a model moved to channels_last) make
    # autograd record as_strided views, which no index map can follow: the trace runs in the
    # default layout, the model's own tensors put back afterwards.
    strided = [(t, t.data) for t in [*model.parameters(), *model.buffers()] if not _row_major(t)]
    # Autograd records nothing from a frozen parameter (requires_grad=False: a frozen backbone,
    # or a whole model frozen before compressing): its layers would be missing from the graph.
    frozen = [p for p in model.parameters() if not p.requires_grad and p.is_floating_point()]
    try:
        for t, data in strided:
            t.data = data.clone(memory_format=torch.contiguous_format)
        for p in frozen:
            p.requires_grad_(True)
        # Torch-Pruning traces through autograd; it also switches the model to eval mode.
        with torch.inference_mode(False), torch.enable_grad():
            dg = _DependencyGraph().build_dependency(model, example.clone(memory_format=torch.contiguous_format),
                                                     forward_fn=forward, verbose=False)
    except Exception as exc:  # noqa: BLE001 - any tracing failure is the model's, not ours
        raise CrossDistillError(f"cannot trace {type(model).__name__} for channel groups: {exc}") from exc
    finally:
        for m, mode in modes:  # per module: some may be frozen in eval on purpose
            m.training = mode
        for t, data in strided:
            t.data = data
        for p in frozen:
            p.requires_grad_(False)
    graph = Graph(dg, names, order, calls, owner, outputs, tied=tied_weights(model.named_modules()))
    if any(isinstance(m, nn.Embedding) for m in model.modules()):
        layouts.add(2)  # its output is (batch, tokens, features)
    # A 3-d tensor's channel axis is known when every layer reading one agrees: 1 for Conv1d
    # models (N, C, L), 2 for token models (N, L, C); in a model with both, or where no layer
    # reads one (a conv net's x.flatten(2), channels still at dim 1), each op's comes from the
    # layers its tensors come from (_local_axis_3d), and is a barrier where that is unclear.
    legacy = not layouts and current_rules() < 2  # graph_rules: records traced before this rule
    _install_maps(graph, axis3d=layouts.pop() if len(layouts) == 1 else 2 if legacy else None)
    return graph


def _channel_axis_3d(mod: nn.Module) -> int:
    """Which axis of a 3-d input `mod` treats as channels: convs, batch/instance/group norms and
    PReLU read (N, C, L); linears, layer norms, attention and LSTMs read features last."""
    first = (tp_ops.TORCH_CONV, tp_ops.TORCH_BATCHNORM, tp_ops.TORCH_GROUPNORM, tp_ops.TORCH_INSTANCENORM,
             tp_ops.TORCH_PRELU)
    return 1 if isinstance(mod, first) else 2


def _local_axis_3d(graph: Graph, node: Any) -> int | None:
    """In a model with both 3-d layouts, the channel axis of one op's 3-d tensors from the layers
    they come from: back through the ops in between to the nearest layers, all of one layout
    (a Conv1d's or BatchNorm1d's output: 1; a Linear's, an LSTM's, an Embedding's: 2); None
    when they disagree, when none is reached, or past a transpose or permute (which moves it)."""
    kinds: set[int] = set()
    seen: set = set()
    todo = [node]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n is not node and not _is_free(graph, n):
            owner = n.module if not isinstance(n.module, DUMMY) else graph.owner.get(n.grad_fn)
            if isinstance(owner, nn.Module):
                kinds.add(_channel_axis_3d(owner))
            continue
        if n.grad_fn is not None and _base(n.grad_fn) in ("Transpose", "Permute"):
            return None
        todo.extend(n.inputs)
    return kinds.pop() if len(kinds) == 1 else None


# -- installing the maps --------------------------------------------------------------------------

# The maps are looked up in this module's namespace when installed (e.g. `_table` for a
# shuffle), so that replacing one here (as a test does, to fake a wrong map) still takes effect.
def _install_maps(graph: Graph, axis3d: int | None) -> None:
    dg = graph.dg
    nodes = list(dg.module2node.values())
    ops: dict[Any, _OpMaps] = {n: _OpMaps() for n in nodes}
    for node in nodes:
        if _is_free(graph, node) or node.type == tp_ops.OPTYPE.OUTPUT:
            ops[node] = _classify(graph, node, axis3d if axis3d is not None else _local_axis_3d(graph, node))
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
