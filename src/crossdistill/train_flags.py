"""What a block that runs the caller's model leaves as it found: each submodule's train/eval flag,
the model's buffers and attributes, torch's global random state and grad mode."""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    # Each submodule's flag, not the root's: callers may deliberately keep parts in train mode.
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def global_state_kept() -> Iterator[None]:
    """torch's global random state and grad mode as they were after the block: the caller's own
    seeding goes on where it was (new layers' default init, Dropout in a training-mode check and
    random timing inputs draw from it), and an interrupt that lands inside a `no_grad` block
    does not leave gradients off for the rest of the session. Inside, gradients are on and
    inference mode off, whatever the caller's context: the fine-tune trains, and the channel
    trace and copies of the model need ordinary tensors."""
    import torch

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    # enable_grad gives back, on any exit, the grad mode it found: the caller's.
    with torch.random.fork_rng(devices=devices), torch.inference_mode(False), torch.enable_grad():
        yield


@contextlib.contextmanager
def buffers_kept(model: nn.Module) -> Iterator[None]:
    """The model's buffers and plain attributes as they were, after a block that runs its forward many times: a
    forward that updates a buffer of its own (a call counter, a running statistic outside
    BatchNorm) would otherwise leave the caller's model changed by compressing it."""
    import torch

    # Each module's own buffer objects with their values: a forward may update one in place
    # (`self.n += 1`), assign a new tensor to it (`self.n = self.n + 1`, or one of another size)
    # or register a new one; the caller's model gets back the very tensors it had.
    buffers = [(m, dict(m._buffers), {k: b.detach().clone() for k, b in m._buffers.items() if b is not None})
               for m in model.modules()]
    # Plain attributes too: a forward that stores what it computed (`self.feat = x`, a counter)
    # would leave the caller's model holding one of the run's tensors, with its autograd graph;
    # a list, dict or set it fills in place (`self.history.append(...)`) is given its items back.
    attributes = [(m, {k: v for k, v in vars(m).items() if not k.startswith("_")}) for m in model.modules()]
    contents = {id(v): v.copy() for _, attrs in attributes for v in attrs.values() if isinstance(v, (list, dict, set))}
    try:
        yield
    finally:
        with torch.no_grad():
            for m, objects, values in buffers:
                for key in [k for k in m._buffers if k not in objects]:
                    del m._buffers[key]
                for key, obj in objects.items():
                    m._buffers[key] = obj
                    if obj is None:
                        continue
                    if obj.shape == values[key].shape:
                        obj.copy_(values[key])
                    else:  # resized in place
                        obj.set_(values[key])
        for m, before in attributes:
            for key in [k for k in vars(m) if not k.startswith("_") and k not in before]:
                delattr(m, key)
            for key, value in before.items():
                if vars(m).get(key, value) is not value:
                    object.__setattr__(m, key, value)
                if id(value) in contents:
                    _refill(value, contents[id(value)])


def _refill(container: list | dict | set, items: list | dict | set) -> None:
    # No comparison first: items may be tensors, whose == is elementwise.
    if isinstance(container, list):
        container[:] = items  # type: ignore[index]
    else:
        container.clear()
        container.update(items)  # type: ignore[arg-type]


def drop_compiled_forwards(model: nn.Module) -> list[tuple[nn.Module, object]]:
    """Set every module's in-place compiled forward (`module.compile()`) aside; returns them."""
    saved = [(m, m._compiled_call_impl) for m in model.modules() if getattr(m, "_compiled_call_impl", None) is not None]
    for m, _ in saved:
        m._compiled_call_impl = None
    return saved


@contextlib.contextmanager
def uncompiled(model: nn.Module) -> Iterator[None]:
    """The model's forwards eager inside the block: `module.compile()` (in place, unlike
    torch.compile(module), which crossdistill unwraps) recompiles at every forward that a new hook
    changes, a hundred times slower than the compression itself (121 s against 6 s on a ResNet-20);
    and a student copied inside the block is plain. Each module's compiled forward comes back."""
    saved = drop_compiled_forwards(model)
    try:
        yield
    finally:
        for m, impl in saved:
            m._compiled_call_impl = impl
