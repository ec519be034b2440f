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
    """The model's buffers as they were, after a block that runs its forward many times: a
    forward that updates a buffer of its own (a call counter, a running statistic outside
    BatchNorm) would otherwise leave the caller's model changed by compressing it."""
    import torch

    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                if b.shape == value.shape:
                    b.copy_(value)
