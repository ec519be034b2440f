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
