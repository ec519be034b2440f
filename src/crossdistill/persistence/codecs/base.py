"""What an artifact codec is: how one kind of compression artifact goes into a saved file and
comes back out of it.

A compression method that leaves something on the model besides its state dict (integer codes,
factorised layers, masks) owns a codec. The codec turns that artifact into a JSON entry of the
model document (`{layer: metadata}` under the codec's `name`) plus tensors (stored as
`__crossdistill__.{tensor_prefix}.{key}`), and back. Persistence knows no codec by name: it
loops over `crossdistill.persistence.codecs.CODECS`.

This module imports nothing of crossdistill but the error type and the attention projections
(which import nothing of it), so that every codec, and the document parser, can use it without an
import circle.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from crossdistill.layer_lookup import find_layer
from crossdistill.errors import CrossDistillError

__all__ = ["EXTRA_PREFIX", "ArtifactCodec", "DocumentError", "Encoded", "is_int", "str_dict", "submodule"]

# Every tensor that is not part of the state dict lives under this prefix, so it can never
# collide with a parameter name.
EXTRA_PREFIX = "__crossdistill__."

# What `encode` returns: (JSON-serialisable {layer: metadata}, {key: tensor}); the tensor keys
# are relative to the codec's namespace.
Encoded = tuple[dict[str, Any], dict[str, torch.Tensor]]


class DocumentError(CrossDistillError):
    """A defect of the JSON entry of a file. Raised by `ArtifactCodec.validate` with just the
    defect; the parser adds the file name and "invalid crossdistill model document"."""


class ArtifactCodec:
    """Base of the codecs: how one artifact kind is written and read.

    A codec only has to set `name` and implement `encode` and `decode`; the other hooks have
    defaults for an artifact that adds tensors and changes nothing else. Codecs are stateless
    (one instance serves every file), and every method may raise CrossDistillError with a
    message that names the layer: the caller prefixes the file name (or the model name when
    saving).
    """

    # Key of the codec's entry in the JSON document.
    name: str = ""
    # Namespace of its tensors in the file (`__crossdistill__.{tensor_prefix}.`); defaults to name.
    tensor_prefix: str = ""
    # The model attribute where the compression method records the artifact; the codec's own
    # cheap test of "does this model have any" (importing the method itself would drag the whole
    # compression stack into every save).
    attr: str = ""
    # Format version 1 always wrote the entries of its three codecs, even empty; they keep doing
    # so, so that files stay byte-identical. A new codec writes its entry only when it has one.
    always_written: bool = False

    @property
    def prefix(self) -> str:
        """Full name prefix of this codec's tensors in the file."""
        return f"{EXTRA_PREFIX}{self.tensor_prefix or self.name}."

    def tensor_key(self, key: str) -> str:
        """The file's name of the codec tensor `key` (for messages)."""
        return self.prefix + key

    # -- saving -------------------------------------------------------------------------------

    def encode(self, model: nn.Module) -> Encoded | None:
        """The artifact of `model` as (metadata, tensors), or None when the model has none.

        Must refuse (CrossDistillError) an artifact that would not rebuild the model exactly.
        """
        raise NotImplementedError

    def replaced_keys(self, metadata: Mapping[str, Any]) -> list[str]:
        """State-dict keys that the codec's tensors replace: they are left out of the file and
        rebuilt by `decode` (the float weights of quantized layers)."""
        return []

    # -- reading ------------------------------------------------------------------------------

    def validate(self, metadata: Any) -> dict[str, Any]:
        """Check the entry read from a file (untrusted JSON; `{}` when absent) and return it as
        a fresh dict. Raise DocumentError naming the defect."""
        if not str_dict(metadata):
            raise DocumentError(f"{self.name!r} must be an object {{layer: ...}}")
        return dict(metadata)

    def restructure(self, model: nn.Module, metadata: Mapping[str, Any]) -> None:
        """Change the freshly built model's modules so that the saved state dict fits (e.g. swap
        a dense layer for its factors). Runs on the `meta` device, before any tensor is read."""

    def tensor_keys(self, metadata: Mapping[str, Any]) -> set[str]:
        """Relative keys of the tensors a file with this entry holds; any other tensor in the
        codec's namespace is refused as stray."""
        return set()

    def decode(self, model: nn.Module, metadata: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
        """Attach the artifact to `model`, whose state dict is loaded (replaced keys are zeros
        until here). `tensors` are the codec's tensors by relative key; missing or malformed
        ones are the codec's to refuse."""
        raise NotImplementedError


# -- helpers the codecs share ---------------------------------------------------------------------


def is_int(v: Any) -> bool:
    """A JSON integer (bool is an int subclass in Python, not in the format)."""
    return isinstance(v, int) and not isinstance(v, bool)


def str_dict(v: Any) -> bool:
    """A JSON object (keys are strings)."""
    return isinstance(v, dict) and all(isinstance(k, str) for k in v)


def submodule(model: nn.Module, name: str, what: str) -> nn.Module:
    """The layer `name` (a submodule or an attention's q/k/v projection, as capture.get_module), with
    a message saying which record named a missing layer."""
    layer = find_layer(model, name)
    if layer is None:
        raise CrossDistillError(f"{what} names layer {name!r}, which the model does not have")
    return layer


def recorded_layers(model: nn.Module, attr: str, what: str) -> list[tuple[str, Any, torch.Tensor]]:
    """(layer, record, current weight on the CPU) for each entry of the model's `attr` record:
    every codec checks its record against the weights it describes before writing it."""
    records = getattr(model, attr, None) or {}
    return [(layer, rec, submodule(model, layer, what).weight.detach().cpu()) for layer, rec in records.items()]


class LayerRecordCodec(ArtifactCodec):
    """A codec of a per-layer record kept in `model.<attr>` ({layer: entry}), checked against
    each layer's current weight when written."""

    # How messages name the record when it names a layer the model does not have.
    record: str = ""

    def encode(self, model: nn.Module) -> Encoded | None:
        layers = recorded_layers(model, self.attr, self.record)
        return self.encode_layers(model, layers) if layers else None

    def encode_layers(self, model: nn.Module, layers: list[tuple[str, Any, torch.Tensor]]) -> Encoded:
        raise NotImplementedError
