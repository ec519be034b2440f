"""One forward pass run until named layers are reached, keeping what each received."""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from crossdistill.layer_lookup import find_layer
from crossdistill.capture_points import capture_mode, capture_point, fastpath_off
from crossdistill.errors import CrossDistillError
from crossdistill.model_outputs import dataclass_fields, is_dataclass_instance


class StopForward(Exception):
    """Raised from a hook: nothing after the captured layer needs computing."""


def on_input(model: nn.Module, names: list[str],
             received: Callable[[str, Callable[[], torch.Tensor]], None]) -> list[Any]:
    """Hooks calling `received(name, read)` whenever a named layer is about to run; `read()`
    gives what it receives (detached). Returns the handles, for the caller to remove."""
    handles = []
    for n in names:
        point = capture_point(model, n)

        def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], n: str = n,
                 read: Callable[..., torch.Tensor] = point.read) -> None:
            received(n, lambda: read(mod, args, kwargs).detach())
        handles.append(point.module.register_forward_pre_hook(hook, with_kwargs=True))
    return handles


def inputs_until(model: nn.Module, names: list[str], fn: Callable[[Any], Any],
                 inputs: Iterable[Any], where: str, calls: Mapping[str, int] | None = None
                 ) -> Iterator[dict[str, torch.Tensor]]:
    """Per input, run `fn` until every named layer of `model` has been reached (the forward
    stops there); yield what each received, by name. A layer that one pass runs several times
    (`calls`: shared weights) is waited for that many times, and what its calls received is
    joined into one tensor (merge_calls)."""
    count = {n: (calls or {}).get(n, 1) for n in names}
    box: dict[str, list[torch.Tensor]] = {}

    def received(n: str, read: Callable[[], torch.Tensor]) -> None:
        got = box.setdefault(n, [])
        if len(got) < count[n]:
            # The pass goes on to the later calls, which may write into this one's input.
            got.append(read().clone() if count[n] > 1 else read())
        if all(len(box.get(m, ())) >= count[m] for m in names):
            raise StopForward

    handles = on_input(model, names, received)
    try:
        for x in inputs:
            box.clear()
            try:
                with capture_mode():
                    fn(x)
            except StopForward:
                pass
            missing = [n for n in names if len(box.get(n, ())) < count[n]]
            if missing:
                what = f"layer {names[0]!r} was" if len(names) == 1 else f"layers {missing} were"
                raise CrossDistillError(f"{what} not reached by {where}")
            yield {n: merge_calls(model, n, box[n]) for n in names}
    finally:
        for h in handles:
            h.remove()


def merge_calls(model: nn.Module, name: str, received: list[torch.Tensor]) -> torch.Tensor:
    """What the calls of one layer in one pass received, as one input: its samples (images for a
    conv, rows for a linear) are the calls' samples together, so that the layer's moments sum
    its loss over every call. A conv's calls must see inputs of one size."""
    if len(received) == 1:
        return received[0]
    if isinstance(find_layer(model, name), nn.Linear):
        return torch.cat([x.reshape(-1, x.shape[-1]) for x in received])
    shapes = {tuple(x.shape[1:]) for x in received}
    if len(shapes) > 1:
        raise CrossDistillError(f"layer {name!r} runs {len(received)} times per forward pass on inputs of "
                                f"different sizes {sorted(shapes)}: not supported")
    return torch.cat(received)


def copy_tensors(value: Any, keep: torch.Tensor | None = None) -> Any:
    """`value` with every tensor in it (through tuples, lists and dicts) copied, but `keep`
    itself, which is passed through as it is."""
    if isinstance(value, torch.Tensor):
        return value if value is keep else value.detach().clone()
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple takes its fields one by one
        return type(value)(*(copy_tensors(v, keep) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(copy_tensors(v, keep) for v in value)
    if is_dataclass_instance(value):
        # Field by field on a shallow copy: dataclasses.replace would re-run __init__ and
        # __post_init__ and reset fields declared init=False.
        copied = copy.copy(value)
        for k, v in dataclass_fields(value).items():
            object.__setattr__(copied, k, copy_tensors(v, keep))
        return copied
    if isinstance(value, dict):
        return {k: copy_tensors(v, keep) for k, v in value.items()}
    return value


def inputs_and_outputs(model: nn.Module, names: list[str], fn: Callable[[Any], Any], x: Any,
                       modules: list[nn.Module]) -> tuple[dict[str, torch.Tensor], list[Any]]:
    """Run `fn(x)` until the first of `modules` (the outermost) has returned: what each named
    layer received, and what each module returned (None for one that did not run). Both are
    copies: the pass goes on after them and may write into the tensors in place."""
    box: dict[str, torch.Tensor] = {}
    outputs: list[Any] = [None] * len(modules)

    def received(n: str, read: Callable[[], torch.Tensor]) -> None:
        if n not in box:
            box[n] = read().clone()

    handles = on_input(model, names, received)
    for i, module in enumerate(modules):
        def done(_m: nn.Module, _a: Any, out: Any, i: int = i) -> None:
            outputs[i] = copy_tensors(out)
            if i == 0:
                raise StopForward
        handles.append(module.register_forward_hook(done))
    try:
        with capture_mode():
            fn(x)
    except StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return box, outputs


def count_calls(model: nn.Module, example: Any, watched: Sequence[tuple[nn.Module, str]],
                input_readers: list[str] | None = None,
                input_shapes: dict[str, set[tuple[int, ...]]] | None = None,
                output_layers: list[str] | None = None, output: str | None = None) -> dict[str, int]:
    """One forward pass of `model` on `example`: how many times each watched (module, name)
    returned, by name, in the order they first returned (absent: never ran). `input_readers`,
    when given, receives the names whose input comes from `example` through no watched layer
    (the input itself, or normalised, sliced, padded in the forward: `_reads_input`), and
    `input_shapes` each name's input shapes (without the batch), and `output_layers` the names
    whose output reaches the predictions (`output`: model_outputs.predictions) through no other
    watched layer, in the same pass (float inputs only: they are found through autograd)."""
    traced = input_readers is not None and isinstance(example, torch.Tensor) and example.is_floating_point()
    if traced:
        # Float inputs are followed through autograd (token ids cannot be: for them, the ids
        # themselves). A forward that autograd refuses (an in-place op on its input) is run
        # again the plain way.
        try:
            readers: list[str] = []
            shapes: dict[str, set[tuple[int, ...]]] = {}
            heads: list[str] = []
            calls = _count_calls(model, example.detach().clone().requires_grad_(True), watched, readers, shapes,
                                 traced=True, heads=heads, output=output)
        except Exception:  # noqa: BLE001 - the plain pass below raises whatever is the model's own fault
            pass
        else:
            input_readers.extend(readers)  # type: ignore[union-attr]
            if input_shapes is not None:
                input_shapes.update(shapes)
            if output_layers is not None:
                output_layers.extend(heads)
            return calls
    return _count_calls(model, example, watched, input_readers, input_shapes, traced=False)


def _count_calls(model: nn.Module, example: Any, watched: Sequence[tuple[nn.Module, str]],
                 input_readers: list[str] | None, input_shapes: dict[str, set[tuple[int, ...]]] | None,
                 traced: bool, heads: list[str] | None = None, output: str | None = None) -> dict[str, int]:
    calls: dict[str, int] = {}
    layer_outputs: dict[Any, str] = {}  # grad_fn of a watched layer's output -> its name
    untraced: list[str] = []  # layers whose output has no graph (run under no_grad, a checkpoint)

    def count(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, args: Any, out: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            if input_shapes is not None and args and isinstance(args[0], torch.Tensor):
                input_shapes.setdefault(name, set()).add(tuple(args[0].shape[1:]))
            if input_readers is not None and args and name not in input_readers and (
                    args[0] is example or (traced and _reads_input(args[0], example, layer_outputs))):
                input_readers.append(name)
            # A tuple's first entry: an attention's output (its second, the weights, come from q and k).
            t = out[0] if isinstance(out, (tuple, list)) and out else out
            if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                layer_outputs[t.grad_fn] = name
            elif traced:
                untraced.append(name)
        return hook

    handles = [module.register_forward_hook(count(name)) for module, name in watched]
    try:
        with (_traced_mode() if traced else capture_mode()):
            out = model(example)
            if heads is not None:
                from crossdistill.model_outputs import predictions

                # A layer the graph does not see would be walked past, to a layer before it: then
                # none is named (the caller's rule for no output layers applies).
                if not untraced:
                    heads.extend(_last_layers(predictions(out, output), layer_outputs))
    finally:
        for h in handles:
            h.remove()
    return calls


def _last_layers(pred: torch.Tensor, layer_outputs: Mapping[Any, str]) -> list[str]:
    """The watched layers whose outputs `pred` is computed from through no other watched layer:
    back through its autograd graph, stopping at the first layer output on each path."""
    found: list[str] = []
    seen: set[Any] = set()
    todo = [pred.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in layer_outputs:
            if layer_outputs[fn] not in found:
                found.append(layer_outputs[fn])
            continue
        todo.extend(f for f, _ in fn.next_functions)
    return found


@contextlib.contextmanager
def _traced_mode() -> Iterator[None]:
    """capture_mode, but with autograd on: `_reads_input` follows the graph it records. Only the
    graph's structure is read, so no activation is kept for a backward (a volume net's pass kept
    five times the memory of the plain one)."""
    with fastpath_off(), torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(_drop, _drop):
        yield


def _drop(_: Any) -> None:
    return None


def _reads_input(x: Any, example: torch.Tensor, layer_outputs: Mapping[Any, str]) -> bool:
    """Whether `x` is computed from the model's input alone, through no watched layer: back
    through its autograd graph, the input reached and no layer's output on any path. A stem conv
    after the forward's own normalisation (`(x - mean) / std`) or a slice of stacked inputs reads
    the input; a conv after a residual from the input (`x + c1(x)`) or a concatenation of the
    input with features does not."""
    if x is example:
        return True
    if not isinstance(x, torch.Tensor) or x.grad_fn is None:
        return False
    seen: set[Any] = set()
    todo = [x.grad_fn]
    reached = False
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        if fn in layer_outputs:
            return False
        seen.add(fn)
        if getattr(fn, "variable", None) is example:  # the input's AccumulateGrad
            reached = True
            continue
        todo.extend(f for f, _ in fn.next_functions)
    return reached

