"""torch's FlopCounterMode set up to see every matmul of a forward pass.

Two things hide work from a plain FlopCounterMode: the fused attention/transformer fast path
(taken in eval mode without grad, or for a frozen model) runs a whole `nn.TransformerEncoderLayer`
as one kernel the counter has no formula for, so its linears count nothing; and on the CPU
`scaled_dot_product_attention` dispatches to a kernel the counter does not know either, so the
attention's score and value products count nothing. Counting with the fast path off and a
formula for that kernel gives the same FLOPs on every device. An LSTM on the CPU runs as one
oneDNN kernel too (`mkldnn_rnn_layer`), counted here by its gate matrix products.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator

import torch
from torch.utils import flop_counter as _torch_flop_counter
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from crossdistill.capture_points import fastpath_off


def _sdpa_cpu_flop(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None,
                   **kwargs: Any) -> int:
    # The same count torch uses for its GPU attention kernels (QK^T and the product with V).
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _rnn_layer_flop(input_shape: Any, w_ih_shape: Any, w_hh_shape: Any, *args: Any, out_shape: Any = None,
                    **kwargs: Any) -> int:
    # One recurrent layer and direction on the CPU (an LSTM runs as oneDNN's kernel there): the
    # input and the hidden state through their gate matrices at every step, 2 FLOPs per MAC.
    steps_times_batch = int(input_shape[0]) * int(input_shape[1])
    return 2 * steps_times_batch * int(w_ih_shape[0]) * (int(w_ih_shape[1]) + int(w_hh_shape[1]))


def _extra_formulas() -> dict[Any, Any]:
    formulas: dict[Any, Any] = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        formulas[op] = _sdpa_cpu_flop
    rnn = getattr(torch.ops.aten, "mkldnn_rnn_layer", None)
    if rnn is not None:
        formulas[rnn] = _rnn_layer_flop
    return formulas


def _eager_mode_class() -> type | None:
    """torch's dispatch mode of the counter without its torch.compile guard, or None where this
    torch's internals differ. Every TorchDispatchMode's __torch_dispatch__ is wrapped so that
    dynamo skips it, and that wrapper imports torch._dynamo on the first op it sees: 3-4 s of a
    CPU run, most of counting a small model's FLOPs (a whole CIFAR compress ran 1.15x faster
    without it, the same FLOPs). The guard matters only while dynamo traces, so it is dropped
    only while dynamo was never imported (nothing can be compiling)."""
    base = getattr(_torch_flop_counter, "_FlopCounterMode", None)
    dispatch = getattr(getattr(base, "__torch_dispatch__", None), "__wrapped__", None)
    if base is None or dispatch is None:
        return None

    class EagerFlopMode(base):  # type: ignore[misc, valid-type]
        @classmethod
        def _should_skip_dynamo(cls) -> bool:
            return False

        __torch_dispatch__ = dispatch

    return EagerFlopMode


_EAGER_MODE = _eager_mode_class()


class _Counter(FlopCounterMode):
    def __enter__(self) -> "_Counter":
        if _EAGER_MODE is None or "torch._dynamo" in sys.modules:
            return super().__enter__()
        # FlopCounterMode.__enter__ with the eager mode in place of torch's (its __exit__ is kept).
        self.flop_counts.clear()
        self.mod_tracker.__enter__()
        self.mode = _EAGER_MODE(self)
        self.mode.__enter__()
        return self


@contextlib.contextmanager
def counting_flops() -> Iterator[FlopCounterMode]:
    """A FlopCounterMode (display off) with the fast path off and grad enabled: under no_grad a
    view of a parameter (a learned query, `self.query.expand(...)`) still requires grad but has
    no grad_fn, and the counter's module tracker fails on it. Run one image: the graph is
    dropped at once."""
    counter = _Counter(display=False, custom_mapping=_extra_formulas())
    with fastpath_off(), torch.enable_grad(), counter:
        yield counter
