"""Counting a model: parameters, nonzero parameters and FLOPs of one forward pass.

Static measures, unlike accuracy and latency (evaluation): they need no data and no timing.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from crossdistill.device import module_device
from crossdistill.model_inputs import example
from crossdistill.flop_counter import counting_flops
from crossdistill.train_flags import eval_mode


def count_params(model: nn.Module) -> int:
    """Number of parameter entries (buffers such as BN running stats are not counted)."""
    return sum(p.numel() for p in model.parameters())


def count_nonzero_params(model: nn.Module) -> int:
    """Parameter entries that are not exactly zero: the size that matters for sparse (unstructured) pruning."""
    return sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())


def count_flops(model: nn.Module, input_size: Sequence[int], input_dtype: str = "float32") -> int:
    """FLOPs of one forward pass on ONE image of shape (C, H, W), via torch's FlopCounterMode.

    Counts 2 FLOPs per multiply-accumulate (so a conv's FLOPs are 2 x its MACs) and only the
    operations FlopCounterMode knows (convolutions, matmuls/linear layers, attention: also
    inside a fused transformer layer and on the CPU, crossdistill.flop_counter);
    BatchNorm, ReLU, pooling and additions are not counted. Zero weights still count: this
    measures dense compute, which is what channel pruning reduces.
    """
    x = example(input_size, 1, input_dtype, model=model, device=module_device(model))
    with eval_mode(model), counting_flops() as counter:
        model(x)
    return int(counter.get_total_flops())
