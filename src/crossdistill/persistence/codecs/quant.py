"""Weight quantization (`compression/quantization.py`): integer codes, scales and zero points.

The codes are the model: the float weight of a quantized layer is not stored (it is listed in
the document's `omitted`) and is recomputed from the codes on load, bit for bit. Tensors per
layer: `{layer}.qcodes`, `{layer}.qscale` (float32, one per output channel), `{layer}.qzero`
(int8 symmetric / uint8 asymmetric, one per output channel). The codes are bit-packed
(`packed: true` in the layer's entry; persistence/bitpack.py): a 1-d uint8 tensor of
⌈n·bits/8⌉ bytes holding each code minus the scheme's lowest code, in the weight's row-major
order; such a file is of format version 2 (spec.py). An entry without `packed` (format
version 1) holds them unpacked (int8/uint8, the weight's shape) and still loads. A transposed
conv's entry has `transposed_groups` (its groups): its output channels, and so its scales, run
along dim 1 of its codes (format version 3).

An attention's q/k/v projection (attention_projections.py) and a recurrent module's gate map
(recurrent_weights.py) have no `{layer}.weight`: the entry names the parameter that holds it
(`param`) and how many layers share that parameter (`parts`: 3 in a packed in_proj_weight, else 1). The parameter is omitted only when every one of its
parts is quantized; otherwise it is stored as floats and the codes overwrite their rows.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from crossdistill.errors import CrossDistillError
from crossdistill.persistence import bitpack
from crossdistill.persistence.codecs.base import DocumentError, Encoded, LayerRecordCodec, is_int, str_dict, submodule
from crossdistill.weight_views import WeightView

# The names `quant_tensors` gives its flat tensors.
SUFFIXES = ("qcodes", "qscale", "qzero")


class QuantCodec(LayerRecordCodec):
    """`quant: {layer: {"bits": int, "scheme": str}}` plus three tensors per layer."""

    name = "quant"
    attr = "crossdistill_quant"  # compression.quantization.QUANT_ATTR
    always_written = True

    record = "the quantization record"

    def encode_layers(self, model: nn.Module, layers: list[tuple[str, Any, torch.Tensor]]) -> Encoded:
        from crossdistill.compression.quantization import (
            check_layer_kind,
            code_range,
            dequantized_weight,
            quant_metadata,
            quant_tensors,
        )

        for layer, entry, weight in layers:
            check_layer_kind(layer, entry, submodule(model, layer, self.record))
            # The codes replace the float weight in the file, so they must be exactly the model.
            if not torch.equal(dequantized_weight(entry).to(weight.dtype), weight):
                raise CrossDistillError(
                    f"the weight of quantized layer {layer!r} is off its integer grid (changed after quantization, "
                    "e.g. trained?): to keep the change as a float model, del model.crossdistill_quant; to keep "
                    "the model quantized, quantize it again (crossdistill.compress(model, data, method='quant')); "
                    "crossdistill.compression.quantization.dequantize_into(model) puts back the weights it was "
                    "quantized to, undoing the change"
                )
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in quant_tensors(model).items()}
        metadata: dict[str, dict[str, Any]] = quant_metadata(model)
        for layer, m in metadata.items():
            key = f"{layer}.qcodes"
            tensors[key] = bitpack.pack(tensors[key], m["bits"], code_range(m["bits"], m["scheme"])[0])
            m["packed"] = True
            mod = submodule(model, layer, self.record)
            if isinstance(mod, WeightView):
                metadata[layer].update(param=mod.storage_key(layer), parts=mod.parts)
        return metadata, tensors

    def replaced_keys(self, metadata: Mapping[str, Any]) -> list[str]:
        keys = [f"{layer}.weight" for layer, m in metadata.items() if "param" not in m]
        shared: dict[str, list[int]] = {}
        for m in metadata.values():
            if "param" in m:
                shared.setdefault(m["param"], []).append(m["parts"])
        return keys + [key for key, parts in shared.items() if len(parts) == parts[0]]

    def validate(self, metadata: Any) -> dict[str, Any]:
        if not str_dict(metadata):
            raise DocumentError("'quant' must be an object {layer: {bits, scheme}}")
        for layer, m in metadata.items():
            if not (isinstance(m, dict) and is_int(m.get("bits")) and isinstance(m.get("scheme"), str)):
                raise DocumentError(f"quant entry of {layer!r} needs integer bits and a scheme")
            if ("param" in m or "parts" in m) and not (isinstance(m.get("param"), str) and m.get("parts") in (1, 3)):
                raise DocumentError(f"quant entry of {layer!r}: 'param' must name a parameter and 'parts' be 1 or 3")
            if not isinstance(m.get("packed", False), bool):
                raise DocumentError(f"quant entry of {layer!r}: 'packed' must be true or false")
            if "transposed_groups" in m and not (is_int(m["transposed_groups"]) and m["transposed_groups"] >= 1):
                raise DocumentError(f"quant entry of {layer!r}: 'transposed_groups' must be a positive integer")
        return {k: dict(v) for k, v in metadata.items()}

    def tensor_keys(self, metadata: Mapping[str, Any]) -> set[str]:
        return {f"{layer}.{s}" for layer in metadata for s in SUFFIXES}

    def decode(self, model: nn.Module, metadata: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
        from crossdistill.compression.quantization import attach_quant, check_bits, check_scheme, code_dtype, code_range

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
            packed = isinstance(layer_mod, WeightView)
            if packed != ("param" in metadata[layer]) or (
                    packed and (metadata[layer]["param"], metadata[layer]["parts"]) != (layer_mod.storage_key(layer), layer_mod.parts)):
                # Else an omitted parameter could be rebuilt only in part, the rest left at zero.
                raise CrossDistillError(f"quantized layer {layer!r}: its record does not match the parameter of the model that holds it")
            codes = flat[f"{layer}.qcodes"]
            if metadata[layer].get("packed"):
                bits, scheme = check_bits(metadata[layer]["bits"]), check_scheme(metadata[layer]["scheme"])
                try:
                    codes = bitpack.unpack(codes, bits, code_range(bits, scheme)[0], tuple(layer_mod.weight.shape),
                                           code_dtype(scheme))
                except CrossDistillError as exc:
                    raise CrossDistillError(f"quantized layer {layer!r}: {exc}") from None
                flat[f"{layer}.qcodes"] = codes
            if tuple(codes.shape) != tuple(layer_mod.weight.shape):
                raise CrossDistillError(
                    f"codes of quantized layer {layer!r} have shape {tuple(codes.shape)}, "
                    f"the layer's weight {tuple(layer_mod.weight.shape)}"
                )
        # Validates bits, scheme, code range, scales; writes the dequantised weights.
        attach_quant(model, flat, metadata)
