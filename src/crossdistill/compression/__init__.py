"""Compression methods: each file one method, each a line in METHODS."""
from __future__ import annotations

from typing import Any

from crossdistill.compression.base import CompressionMethod
from crossdistill.compression.channel_pruning import ChannelPruning
from crossdistill.compression.composite import ChannelsThenQuant, LowRankThenQuant
from crossdistill.compression.low_rank import LowRank
from crossdistill.compression.quantization import Quantization
from crossdistill.compression.weight_sparsity import WeightSparsity
from crossdistill.params import Registry

METHODS: Registry = Registry("compression method", {
    "channels": ChannelPruning,
    "sparsity": WeightSparsity,
    "quant": Quantization,
    "lowrank": LowRank,
    "channels+quant": ChannelsThenQuant,
    "lowrank+quant": LowRankThenQuant,
})


def create_method(name: str, **kwargs: Any) -> CompressionMethod:
    return METHODS.build(name, kwargs)


__all__ = ["METHODS", "CompressionMethod", "create_method"]
