"""Non-persistent buffers (`register_buffer(..., persistent=False)`): left out of the state dict
by torch, so a model rebuilt from its factory would get the constructor's values, not the saved
model's. An input mean and std set from data after the model was built came back as the
constructor's zeros and ones, and the loaded student scored 28 % where the saved one scored 98 %.

Stored as they are (values, shape and dtype) and put back after the state dict is loaded. A model
whose non-persistent buffers are only the constructor's (position ids, rotary tables) stores
them too: a little file size for the certainty that loading gives the saved outputs.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from crossdistill.errors import CrossDistillError
from crossdistill.persistence.codecs.base import ArtifactCodec, DocumentError, Encoded, str_dict


def non_persistent_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """{full name: tensor} of the buffers torch leaves out of `model.state_dict()`."""
    found: dict[str, torch.Tensor] = {}
    for prefix, module in model.named_modules():
        for attr in module._non_persistent_buffers_set:
            t = module._buffers.get(attr)
            if t is not None:
                found[f"{prefix}.{attr}" if prefix else attr] = t
    return found


class BufferCodec(ArtifactCodec):
    """`buffers: {name: "tensor"}` plus each buffer's tensor under its full name."""

    name = "buffers"
    tensor_prefix = "buffer"

    def encode(self, model: nn.Module) -> Encoded | None:
        found = non_persistent_buffers(model)
        if not found:
            return None
        return {k: "tensor" for k in found}, {k: t.detach().cpu().contiguous().clone() for k, t in found.items()}

    def validate(self, metadata: Any) -> dict[str, Any]:
        if not (str_dict(metadata) and all(v == "tensor" for v in metadata.values())):
            raise DocumentError("'buffers' must map buffer names to \"tensor\"")
        return dict(metadata)

    def tensor_keys(self, metadata: Mapping[str, Any]) -> set[str]:
        return set(metadata)

    def decode(self, model: nn.Module, metadata: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
        modules = dict(model.named_modules())
        for name in metadata:
            prefix, _, attr = name.rpartition(".")
            module = modules.get(prefix)
            if module is None or attr not in module._non_persistent_buffers_set:
                # The factory no longer registers it: its value would have nowhere to go.
                raise CrossDistillError(f"the saved non-persistent buffer {name!r} is not a non-persistent buffer "
                                        "of the model the factory builds")
            if name not in tensors:
                raise CrossDistillError(f"the non-persistent buffer {name!r} lacks its tensor")
            module._buffers[attr] = tensors[name]
