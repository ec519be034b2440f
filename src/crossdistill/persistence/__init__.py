"""Saving and loading compressed models without pickle.

One self-contained `.safetensors` file per model: the tensors, plus a JSON document in the
file's metadata header (key `crossdistill`) that says how to rebuild the module around them.
Nothing in the file is ever executed: the architecture comes from the model registry, the
JSON only picks constructor arguments (`model.spec()`) and describes the compression artifacts
(factorised, quantized or masked layers), each kind through its registered codec (`codecs/`).

File layout (format versions 1-3: spec.py says what each added)
----------------------------------------------------------------
tensors
    the state dict of the model, except the keys a codec replaces (the float weights of
    quantized layers: their integer codes are the model, the float weight is recomputed from
    them bit for bit); a codec's own tensors as `__crossdistill__.{prefix}.{key}`:
    `quant.{layer}.{qcodes,qscale,qzero}` (codecs/quant.py), `mask.{layer}` (codecs/masks.py).
metadata `crossdistill` (JSON)
    format, format_version, crossdistill_version, torch_version, model (registry name), spec,
    input_size (C, H, W), num_classes, mean, std (the normalisation the model expects), one
    entry per codec, by codec name (lowrank {layer: {rank, kind}}, quant {layer: {bits,
    scheme, packed[, transposed_groups]}}: bit-packed codes, format version 2, a transposed
    conv's 3, masks {layer: encoding}, channel_groups {input_size, kept[, trace][, then]}: rules
    version 2 of the trace, format version 3), omitted [state-dict keys rebuilt from artifacts].
It is the header's only metadata entry: safetensors stores metadata in a hash map of random
order, and with a single entry the same model always gives the same bytes.

Modules: `spec` (the document), `files` (paths, headers, atomic writes), `writer` (save),
`reader` (load a crossdistill file), `dispatch` (load any weights file), `codecs` (artifacts).
"""
from __future__ import annotations

# Besides __all__ (unchanged by the split into modules), the names the old single module had at
# top level stay importable from here: EXTRA_PREFIX, DIR_CANDIDATES, META_KEY, temp_sibling,
# build_document.
from crossdistill.persistence.codecs import EXTRA_PREFIX
from crossdistill.persistence.dispatch import load
from crossdistill.persistence.files import (
    DIR_CANDIDATES,
    is_crossdistill_file,
    read_info,
    resolve_model_path,
    temp_sibling,
)
from crossdistill.persistence.spec import FORMAT, FORMAT_VERSION, META_KEY, SavedModelInfo, parse_info
from crossdistill.persistence.writer import build_document, save

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SavedModelInfo",
    "is_crossdistill_file",
    "load",
    "parse_info",
    "read_info",
    "resolve_model_path",
    "save",
]
