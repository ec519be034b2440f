"""Eval mode for the length of a block, each submodule's own train/eval flag given back after."""
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
def buffers_kept(model: nn.Module) -> Iterator[None]:
    """The model's buffers and plain attributes as they were, after a block that runs its forward many times: a
    forward that updates a buffer of its own (a call counter, a running statistic outside
    BatchNorm) would otherwise leave the caller's model changed by compressing it."""
    import torch

    saved = [(b, b.detach().clone()) for b in model.buffers()]
    # Plain attributes too: a forward that stores what it computed (`self.feat = x`, a counter)
    # would leave the caller's model holding one of the run's tensors, with its autograd graph.
    attributes = [(m, {k: v for k, v in vars(m).items() if not k.startswith("_")}) for m in model.modules()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                if b.shape == value.shape:
                    b.copy_(value)
        for m, before in attributes:
            for key in [k for k in vars(m) if not k.startswith("_") and k not in before]:
                delattr(m, key)
            for key, value in before.items():
                if vars(m).get(key, value) is not value:
                    object.__setattr__(m, key, value)
