"""Sparsity masks (`compression/weight_sparsity.py`): which weights are pruned and stay zero.

A mask that is just "the weight's non-zero entries" (the usual case) costs nothing: the entry
says `"nonzero"` and the mask is recomputed on load. Any other mask (a kept weight that happens
to be 0) is stored as a bool tensor `{layer}` and the entry says `"tensor"`.
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping

import torch
from torch import nn

from crossdistill.errors import CrossDistillError, outside_stacklevel
from crossdistill.persistence.codecs.base import DocumentError, Encoded, LayerRecordCodec, str_dict, submodule

ENCODINGS = ("nonzero", "tensor")


class MaskCodec(LayerRecordCodec):
    """`masks: {layer: "nonzero" | "tensor"}` plus a bool tensor per "tensor" layer."""

    name = "masks"
    tensor_prefix = "mask"
    attr = "crossdistill_masks"  # compression.weight_sparsity.MASKS_ATTR
    always_written = True

    record = "the sparsity mask"

    def encode_layers(self, model: nn.Module, layers: list[tuple[str, Any, torch.Tensor]]) -> Encoded:
        meta: dict[str, Any] = {}
        tensors: dict[str, torch.Tensor] = {}
        filled: dict[str, int] = {}
        for layer, mask, weight in layers:
            mask = torch.as_tensor(mask).detach().cpu().to(torch.bool)
            if mask.shape != weight.shape:
                raise CrossDistillError(
                    f"mask of {layer!r} has shape {tuple(mask.shape)}, its weight {tuple(weight.shape)}"
                )
            nonzero = weight.detach().cpu() != 0
            n = int((~mask & nonzero).sum())
            if n:
                filled[layer] = n
            if torch.equal(mask, nonzero):
                meta[layer] = "nonzero"
            else:
                meta[layer] = "tensor"
                tensors[layer] = mask.contiguous()
        if filled:
            # A training loop of the user's own (crossdistill's fine-tune keeps them at zero).
            shown = ", ".join(f"{layer} ({n})" for layer, n in list(filled.items())[:4])
            warnings.warn(f"{sum(filled.values())} weights are non-zero where the sparsity masks prune them "
                          f"({shown}{', ...' if len(filled) > 4 else ''}; trained after compressing?): saved as "
                          "they are, so the model is no longer as sparse as its masks say; to make it so, "
                          "crossdistill.compression.weight_sparsity.apply_masks(model) before saving (and after "
                          "each step of a training loop)", stacklevel=outside_stacklevel())
        return meta, tensors

    def validate(self, metadata: Any) -> dict[str, Any]:
        if not (str_dict(metadata) and all(v in ENCODINGS for v in metadata.values())):
            raise DocumentError(f"'masks' must map layers to one of {ENCODINGS}")
        return dict(metadata)

    def tensor_keys(self, metadata: Mapping[str, Any]) -> set[str]:
        return {layer for layer, encoding in metadata.items() if encoding == "tensor"}

    def decode(self, model: nn.Module, metadata: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
        masks: dict[str, torch.Tensor] = {}
        for layer, encoding in metadata.items():
            weight = getattr(submodule(model, layer, "the sparsity record"), "weight", None)
            if not isinstance(weight, torch.Tensor):
                raise CrossDistillError(f"masked layer {layer!r} has no weight")
            if encoding == "nonzero":
                masks[layer] = weight.detach() != 0
            else:
                mask = tensors.get(layer)
                if mask is None or mask.dtype != torch.bool or mask.shape != weight.shape:
                    raise CrossDistillError(f"mask of {layer!r} is missing or not a bool tensor of the weight's shape")
                masks[layer] = mask
        if masks:
            setattr(model, self.attr, masks)
