"""Weight quantization (`compression/quantization.py`): integer codes, scales and zero points.

The codes are the model: the float weight of a quantized layer is not stored (it is listed in
the document's `omitted`) and is recomputed from the codes on load, bit for bit. Tensors per
layer: `{layer}.qcodes` (int8/uint8, the weight's shape), `{layer}.qscale` (float32, one per
output channel), `{layer}.qzero` (the codes' dtype, one per output channel).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from crossdistill.errors import CrossDistillError
from crossdistill.persistence.codecs.base import DocumentError, Encoded, LayerRecordCodec, is_int, str_dict, submodule

# The names `quant_tensors` gives its flat tensors.
SUFFIXES = ("qcodes", "qscale", "qzero")


class QuantCodec(LayerRecordCodec):
    """`quant: {layer: {"bits": int, "scheme": str}}` plus three tensors per layer."""

    name = "quant"
    attr = "crossdistill_quant"  # compression.quantization.QUANT_ATTR
    always_written = True

    record = "the quantization record"

    def encode_layers(self, model: nn.Module, layers: list[tuple[str, Any, torch.Tensor]]) -> Encoded:
        from crossdistill.compression.quantization import dequantized_weight, quant_metadata, quant_tensors

        for layer, entry, weight in layers:
            # The codes replace the float weight in the file, so they must be exactly the model.
            if not torch.equal(dequantized_weight(entry).to(weight.dtype), weight):
                raise CrossDistillError(
                    f"the weight of quantized layer {layer!r} is off its integer grid "
                    "(changed after quantization?); call crossdistill.compression.quantization.dequantize_into(model) "
                    "to put it back on the grid, or drop model.crossdistill_quant"
                )
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in quant_tensors(model).items()}
        return quant_metadata(model), tensors

    def replaced_keys(self, metadata: Mapping[str, Any]) -> list[str]:
        return [f"{layer}.weight" for layer in metadata]

    def validate(self, metadata: Any) -> dict[str, Any]:
        if not str_dict(metadata):
            raise DocumentError("'quant' must be an object {layer: {bits, scheme}}")
        for layer, m in metadata.items():
            if not (isinstance(m, dict) and is_int(m.get("bits")) and isinstance(m.get("scheme"), str)):
                raise DocumentError(f"quant entry of {layer!r} needs integer bits and a scheme")
        return {k: dict(v) for k, v in metadata.items()}

    def tensor_keys(self, metadata: Mapping[str, Any]) -> set[str]:
        return {f"{layer}.{s}" for layer in metadata for s in SUFFIXES}

    def decode(self, model: nn.Module, metadata: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
        from crossdistill.compression.quantization import attach_quant

        flat: dict[str, torch.Tensor] = {}
        for layer in metadata:
            for suffix in SUFFIXES:
                key = f"{layer}.{suffix}"
                if key not in tensors:
                    raise CrossDistillError(f"quantized layer {layer!r} lacks its tensor {self.tensor_key(key)}")
                flat[key] = tensors[key]
            layer_mod = submodule(model, layer, "the quantization record")
            if not isinstance(getattr(layer_mod, "weight", None), torch.Tensor):
                raise CrossDistillError(f"quantized layer {layer!r} has no weight")
            codes = flat[f"{layer}.qcodes"]
            if tuple(codes.shape) != tuple(layer_mod.weight.shape):
                raise CrossDistillError(
                    f"codes of quantized layer {layer!r} have shape {tuple(codes.shape)}, "
                    f"the layer's weight {tuple(layer_mod.weight.shape)}"
                )
        # Validates bits, scheme, code range, scales; writes the dequantised weights.
        attach_quant(model, flat, metadata)
