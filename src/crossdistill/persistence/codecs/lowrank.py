"""Low-rank factorisation (`compression/low_rank.py`): which layers are factorised, at which rank.

The factors themselves are ordinary parameters (`{layer}.0.weight`, `{layer}.1.weight`, ...), so
the codec stores no tensors: it only swaps the dense layers of the rebuilt model for factor
modules of the saved ranks before the state dict is loaded.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from crossdistill.persistence.codecs.base import ArtifactCodec, DocumentError, Encoded, is_int, str_dict

_KINDS = ("conv", "linear")


class LowRankCodec(ArtifactCodec):
    """`lowrank: {layer: {"rank": r, "kind": "conv" | "linear"}}`, no tensors."""

    name = "lowrank"
    attr = "crossdistill_lowrank"  # compression.low_rank.LOWRANK_ATTR
    always_written = True

    def encode(self, model: nn.Module) -> Encoded | None:
        if not getattr(model, self.attr, None):
            return None
        # Imported here: the compression stack is needed only by models that use it.
        from crossdistill.compression.low_rank import lowrank_metadata

        return lowrank_metadata(model), {}

    def validate(self, metadata: Any) -> dict[str, Any]:
        if not str_dict(metadata):
            raise DocumentError("'lowrank' must be an object {layer: {rank, kind}}")
        for layer, m in metadata.items():
            if not (isinstance(m, dict) and is_int(m.get("rank")) and m["rank"] >= 1 and m.get("kind") in _KINDS):
                raise DocumentError(f"lowrank entry of {layer!r} needs rank >= 1 and kind conv|linear")
        return {k: dict(v) for k, v in metadata.items()}

    def restructure(self, model: nn.Module, metadata: Mapping[str, Any]) -> None:
        from crossdistill.compression.low_rank import restore_lowrank

        restore_lowrank(model, metadata)

    def decode(self, model: nn.Module, metadata: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
        # `restructure` already recorded the ranks on the model; the factors came with the state dict.
        pass
