"""The registry of artifact codecs: each compression artifact kind is one file and one entry here.

To store a new kind of artifact, write `codecs/NAME.py` with an `ArtifactCodec` subclass (see
`base.py`; `masks.py` is a small example), import it below and add its instance to CODECS.
Persistence needs no other change: it reads `codecs.CODECS` each time it saves or loads.

Order matters: it is the order of the entries in the JSON document, of encoding and of
decoding; a codec that changes module structure (low rank) comes before the codecs that name
layers inside it, and masks read weights only after quantization has written them.

Compatibility: a reader without a codec ignores its JSON entry but refuses its tensors as
stray. A codec that stores no tensors would therefore be dropped silently by an older reader:
such a codec should come with a FORMAT_VERSION bump (`spec.py`).
"""
from __future__ import annotations

from crossdistill.persistence.codecs.base import EXTRA_PREFIX, ArtifactCodec, DocumentError, Encoded
from crossdistill.persistence.codecs.buffers import BufferCodec
from crossdistill.persistence.codecs.lowrank import LowRankCodec
from crossdistill.persistence.codecs.masks import MaskCodec
from crossdistill.persistence.codecs.quant import QuantCodec
from crossdistill.persistence.codecs.slim import SlimCodec

CODECS: tuple[ArtifactCodec, ...] = (
    SlimCodec(),  # first: the other codecs name layers of the slimmed model
    LowRankCodec(),
    QuantCodec(),
    MaskCodec(),
    BufferCodec(),  # values the state dict leaves out, put back last
)


def check_registry(codecs: tuple[ArtifactCodec, ...], reserved: frozenset[str] = frozenset()) -> None:
    """Refuse a registry where two codecs would claim the same JSON key (or one of the document's
    own `reserved` keys) or the same tensor names: a tensor prefix that begins another one would
    make a file's tensors ambiguous. Called by the document module, which knows its keys."""
    names = [c.name for c in codecs]
    prefixes = [c.prefix for c in codecs]
    if not all(names) or len(set(names)) != len(names) or reserved & set(names):
        raise ValueError(f"artifact codecs need distinct names outside the document's own keys: {names}")
    for i, a in enumerate(prefixes):
        for b in prefixes[i + 1:]:
            if a.startswith(b) or b.startswith(a):
                raise ValueError(f"artifact codecs' tensor prefixes {a!r} and {b!r} overlap")


__all__ = ["CODECS", "EXTRA_PREFIX", "ArtifactCodec", "DocumentError", "Encoded", "check_registry"]
