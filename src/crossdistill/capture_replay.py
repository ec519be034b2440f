"""The student's layer inputs for a model without `forward_units()`: replayed from the input that
the layer's enclosing modules received, instead of a forward pass from the images per layer.

A layer's input under the student's current weights needs the forward up to it; from the images
for every layer that is O(L²) forward work over a network of L layers (a plain ResNet-50: two
thirds of its compression time). Layers are solved in forward order and a solve changes only the
solved layer, so what a module M received stays valid while the layers inside M are solved: it is
kept (cloned, since M's own forward may overwrite it in place), and a layer's input is got by
running only its innermost kept ancestor. Passing to the next block re-runs only its parent from
the parent's kept input, and so on up the tree.

A module is replayed only if one forward calls it exactly once, and only after a check on the
first batch: run from its kept input, it must give the layer the input the pass gave it, and
return what it returned in the pass (which, on the first batch, goes on until it has returned).
A module whose forward reads anything but its arguments (state its parent sets before each call,
a layer its parent applies outside it) fails the check and is never replayed again; its layers
then come from its nearest replayable ancestor, or the images. A module called on the images
themselves is not kept (replaying it is a pass from the images). The check costs about two runs
of the module on the first batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from crossdistill.capture_pass import copy_tensors, count_calls, inputs_and_outputs, inputs_until
from crossdistill.capture_points import capture_point
from crossdistill.errors import CrossDistillError

Call = tuple[tuple[Any, ...], dict[str, Any]]


def module_calls(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """How many times one forward pass calls each submodule (by name)."""
    return count_calls(model, example, [(m, n) for n, m in model.named_modules() if n])


@dataclass
class _Level:
    name: str
    calls: list[Call] = field(default_factory=list)  # what the module received, one entry per batch
    output: Any = None  # what it returned on the first batch, until checked
    transparent: bool = False  # called on the images themselves


class ModuleReplay:
    """Layer inputs of `model` over `batches`, asked for in forward order (see the module docstring)."""

    def __init__(self, model: nn.Module, batches: Sequence[torch.Tensor]) -> None:
        self.model = model
        self.batches = list(batches)
        self.modules = dict(model.named_modules())
        self.names = {id(m): n for n, m in self.modules.items()}
        once = module_calls(model, self.batches[0][:1])
        self.replayable = {n for n, c in once.items() if c == 1}
        self.kept: list[_Level] = []  # the kept chain, outermost first
        self.forward_passes = 0  # batches run from the images (for tests and benchmarks)

    def _chain(self, owner: str) -> list[str]:
        """The replayable strict ancestors of module `owner`, outermost first."""
        parts = owner.split(".")
        prefixes = [".".join(parts[:i]) for i in range(1, len(parts))]
        return [p for p in prefixes if p in self.replayable]

    def inputs(self, names: Sequence[str], where: str = "the forward pass") -> dict[str, list[torch.Tensor]]:
        """Per name, the layer's input for every batch. The names share one capture module (an
        attention's q/k/v) or are one layer."""
        names = list(names)
        owner = self.names.get(id(capture_point(self.model, names[0]).module), "")
        chain = self._chain(owner)
        depth = 0
        while depth < min(len(self.kept), len(chain)) and self.kept[depth].name == chain[depth]:
            depth += 1
        del self.kept[depth:]  # modules the forward has moved past
        new = [_Level(n) for n in chain[depth:]]
        start = self.kept[-1] if self.kept else None
        found = self._run(names, start, new, where)
        self.kept += new
        bad = self._unfaithful(new, names, found)
        if bad is not None:
            self.replayable.discard(bad.name)
            self.kept = self.kept[: self.kept.index(bad)]  # its deeper levels were kept after it
        return {n: [box[n] for box in found] for n in names}

    def _run(self, names: list[str], start: _Level | None, new: list[_Level], where: str) -> list[dict[str, torch.Tensor]]:
        """One pass per batch from `start` (None: the images), keeping what each `new` module
        received. On the first batch the pass goes on until the new modules have returned, for
        `_unfaithful`'s check."""
        handles = []
        current: list[torch.Tensor | None] = [None]  # the batch of images being run from
        for level in new:
            def keep(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], level: _Level = level) -> None:
                if start is None and any(a is current[0] for a in args):
                    level.transparent = True  # called on the images: nothing to gain by keeping it
                # The images themselves are the caller's (never written into): not copied.
                level.calls.append((copy_tensors(args, current[0]), copy_tensors(kwargs, current[0])))
            handles.append(self.modules[level.name].register_forward_pre_hook(keep, with_kwargs=True))

        def from_images(x: torch.Tensor) -> Any:
            current[0] = x
            return self.model(x)

        fn: Callable[[Any], Any] = from_images if start is None else _caller(self.modules[start.name])
        inputs: list[Any] = self.batches if start is None else start.calls
        if start is None:
            self.forward_passes += len(inputs)
        try:
            found: list[dict[str, torch.Tensor]] = []
            if new:
                first, outs = inputs_and_outputs(self.model, names, fn, inputs[0],
                                                 [self.modules[level.name] for level in new])
                if set(first) != set(names):
                    raise CrossDistillError(f"layer {names[0]!r} was not reached by {where}")
                found.append(first)
                for level, out in zip(new, outs):
                    level.output = out
            found += list(inputs_until(self.model, names, fn, inputs[len(found):], where))
        finally:
            for h in handles:
                h.remove()
        for level in new:
            if len(level.calls) != len(found):  # not called before the layers on some batch
                level.calls = []
        return found

    def _unfaithful(self, new: list[_Level], names: list[str], found: list[dict[str, torch.Tensor]]) -> _Level | None:
        """The first of the `new` levels that is not to be replayed (None if all are): one called
        on the images themselves, or one that, run from what it received on the first batch,
        does not give the layers the inputs the pass gave them and the output it gave then. The
        pass ran the first batch first: state a parent sets before each call is the last
        batch's now, as it would be in a later replay."""
        for level in new:
            if level.transparent or not level.calls or level.output is None:
                return level
            module = self.modules[level.name]
            again, (out,) = inputs_and_outputs(self.model, names, _caller(module), level.calls[0], [module])
            # The layers not reached inside it (a parent applies them outside), or other results.
            if set(again) != set(names) or not all(_same(again[n], found[0][n]) for n in names):
                return level
            if out is None or not _same(out, level.output):
                return level
            level.output = None  # checked: not needed any more
        return None


def _same(a: Any, b: Any) -> bool:
    """Equal structure and values (not bit for bit: a GPU may pick other kernels on a replay)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and (torch.equal(a, b) or torch.allclose(a, b, rtol=1e-5, atol=1e-6))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and (a is None or a == b)


def _caller(module: nn.Module) -> Callable[[Call], Any]:
    """Calls `module` on a kept input, copied: the module may write into its arguments."""
    return lambda call: module(*copy_tensors(call[0], None), **copy_tensors(call[1], None))
