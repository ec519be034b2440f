"""One forward pass run until named layers are reached, keeping what each received."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from crossdistill.attention_projections import find_layer
from crossdistill.capture_points import capture_mode, capture_point
from crossdistill.errors import CrossDistillError


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
    if isinstance(value, (tuple, list)):
        return type(value)(copy_tensors(v, keep) for v in value)
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


def count_calls(model: nn.Module, example: Any, watched: Iterable[tuple[nn.Module, str]],
                input_readers: list[str] | None = None,
                input_shapes: dict[str, set[tuple[int, ...]]] | None = None) -> dict[str, int]:
    """One forward pass of `model` on `example`: how many times each watched (module, name)
    returned, by name, in the order they first returned (absent: never ran). `input_readers`,
    when given, receives the names whose input was `example` itself, and `input_shapes` each
    name's input shapes (without the batch), in the same pass."""
    calls: dict[str, int] = {}

    def count(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, args: Any, _o: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            if input_shapes is not None and args and isinstance(args[0], torch.Tensor):
                input_shapes.setdefault(name, set()).add(tuple(args[0].shape[1:]))
            if input_readers is not None and args and args[0] is example and name not in input_readers:
                input_readers.append(name)
        return hook

    handles = [module.register_forward_hook(count(name)) for module, name in watched]
    try:
        with capture_mode():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return calls

