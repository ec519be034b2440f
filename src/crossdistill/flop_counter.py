"""torch's FlopCounterMode set up to see every matmul of a forward pass.

Two things hide work from a plain FlopCounterMode: the fused attention/transformer fast path
(taken in eval mode without grad, or for a frozen model) runs a whole `nn.TransformerEncoderLayer`
as one kernel the counter has no formula for, so its linears count nothing; and on the CPU
`scaled_dot_product_attention` dispatches to a kernel the counter does not know either, so the
attention's score and value products count nothing. Counting with the fast path off and a
formula for that kernel gives the same FLOPs on every device.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from crossdistill.capture_points import fastpath_off


def _sdpa_cpu_flop(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None,
                   **kwargs: Any) -> int:
    # The same count torch uses for its GPU attention kernels (QK^T and the product with V).
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _extra_formulas() -> dict[Any, Any]:
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {} if op is None else {op: _sdpa_cpu_flop}


@contextlib.contextmanager
def counting_flops() -> Iterator[FlopCounterMode]:
    """A FlopCounterMode (display off) with the fast path off and grad enabled: under no_grad a
    view of a parameter (a learned query, `self.query.expand(...)`) still requires grad but has
    no grad_fn, and the counter's module tracker fails on it. Run one image: the graph is
    dropped at once."""
    counter = FlopCounterMode(display=False, custom_mapping=_extra_formulas())
    with fastpath_off(), torch.enable_grad(), counter:
        yield counter
