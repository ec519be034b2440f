"""The model document: the JSON in a saved file's header that says how to rebuild the model.

`SavedModelInfo` is the document in memory; `parse_info` validates untrusted JSON into one. The
compression artifacts' entries are the registered codecs' business (`codecs/`): this module
only hands each codec its entry.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from crossdistill.errors import CrossDistillError
from crossdistill.model_outputs import KINDS
from crossdistill.persistence import codecs
from crossdistill.persistence.codecs import DocumentError, check_registry
from crossdistill.persistence.codecs.base import is_int, str_dict

__all__ = ["CHECKSUM_FIELD", "FORMAT", "FORMAT_VERSION", "META_KEY", "SavedModelInfo", "parse_info"]

FORMAT = "crossdistill-model"
# The newest format this code reads and writes. 2: quantization codes bit-packed (a file of
# version 1 holds a byte a code). 3: a quantized transposed conv, whose scales run along dim 1 of
# its codes (`transposed_groups` in its entry): a reader of version 2 would apply them along dim 0;
# or channel groups traced with rules 2 (`trace` in channel_groups, compression/graph_rules.py),
# which a reader of version 2 would number by the rules of 1 (a stage that pruned attention heads
# records rules 2 for that reason: readers before head pruning refused its groups as unknown). A file is written at the lowest
# version that holds it, so that every other file stays what it was and older readers refuse a
# newer one by its version.
# Version 4: a model's non-persistent buffers (the `buffers` entry), which a reader of version 3
# would leave at the constructor's values, or floating parameters of another dtype than float32
# (`dtype`), which it would refuse as not fitting.
FORMAT_VERSION = 4
PACKED_CODES_VERSION = 2
TRANSPOSED_CODES_VERSION = 3
TRACED_GROUPS_VERSION = 3
BUFFERS_VERSION = 4
DTYPE_VERSION = 4
# The floating dtypes a model may be saved in beside float32 (a student cast after compressing).
SAVED_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
# The safetensors metadata key of the document (its only metadata entry: see the package docs).
META_KEY = "crossdistill"
# The document's field holding the sha256 of the tensors (names, dtypes, shapes, bytes): a file
# changed or damaged after saving would otherwise load and run, only with other numbers
# (safetensors checks the layout, not the values). In the one document rather than a second
# metadata entry: safetensors writes metadata entries in no fixed order, and a file's bytes must not
# depend on chance.
CHECKSUM_FIELD = "sha256"

# The document's own keys. `to_json` writes the codecs' entries between std and omitted: where
# format version 1 wrote lowrank, quant and masks, so that files stay byte-identical.
_HEAD_KEYS = ("format", "format_version", "crossdistill_version", "torch_version", "model", "spec",
              "input_size", "num_classes", "mean", "std", "class_names", "output", "kind", "input_dtype",
              "memory_format", "dtype", "dtypes")
_TAIL_KEYS = ("omitted",)
# Names no codec may take.
DOCUMENT_KEYS = frozenset(_HEAD_KEYS + _TAIL_KEYS)
check_registry(codecs.CODECS, DOCUMENT_KEYS)


@dataclass
class SavedModelInfo:
    """The JSON document of a saved model, validated (see the package docstring).

    `artifacts` holds every registered codec's entry by codec name (`{}` when the model has
    none of that artifact); `info.lowrank`, `info.quant`, `info.masks` (any codec's name) read
    the same entry.
    """

    model: str
    spec: dict[str, Any]
    format_version: int = FORMAT_VERSION
    crossdistill_version: str = ""
    torch_version: str = ""
    input_size: tuple[int, ...] | None = None
    num_classes: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    class_names: list[str] | None = None  # the training data's, when it named its classes
    # Which output holds the predictions and their kind (crossdistill.model_outputs); written
    # only when not a plain classifier's, so that such files stay as they were.
    output: str | None = None
    kind: str = "classes"
    input_dtype: str = "float32"  # "int64": token ids
    # "channels_last" for a model kept in that layout (written only then): loading restores it, so
    # the loaded model computes exactly what the saved one did (the layout changes float sums).
    memory_format: str = "contiguous"
    # The model's floating dtype when not float32 (one of SAVED_DTYPES; written only then): loading
    # casts the rebuilt model to it before filling it.
    dtype: str = "float32"
    # Tensors of a floating dtype other than `dtype` ({state key: dtype name}; written only when
    # some are): a model cast to float16 with its BatchNorms kept in float32.
    dtypes: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    omitted: list[str] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not fields. Reads __dict__ directly: during copy or
        # unpickling `artifacts` may not exist yet, and self.artifacts would recurse here.
        if any(c.name == name for c in codecs.CODECS):
            return self.__dict__.setdefault("artifacts", {}).setdefault(name, {})
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "format_version": self.format_version,
            "crossdistill_version": self.crossdistill_version,
            "torch_version": self.torch_version,
            "model": self.model,
            "spec": self.spec,
            "input_size": list(self.input_size) if self.input_size else None,
            "num_classes": self.num_classes,
            "mean": list(self.mean) if self.mean else None,
            "std": list(self.std) if self.std else None,
        }
        if self.class_names is not None:
            doc["class_names"] = list(self.class_names)
        if self.output is not None:
            doc["output"] = self.output
        if self.kind != "classes":
            doc["kind"] = self.kind
        if self.input_dtype != "float32":
            doc["input_dtype"] = self.input_dtype
        if self.memory_format != "contiguous":
            doc["memory_format"] = self.memory_format
        if self.dtype != "float32":
            doc["dtype"] = self.dtype
        if self.dtypes:
            doc["dtypes"] = dict(self.dtypes)
        for codec in codecs.CODECS:
            entry = self.artifacts.get(codec.name) or {}
            if entry or codec.always_written:
                doc[codec.name] = entry
        doc["omitted"] = self.omitted
        return doc


def _expect(cond: bool, source: str, what: str) -> None:
    if not cond:
        raise CrossDistillError(f"{source}: invalid crossdistill model document: {what}")


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def parse_info(text: str | bytes, source: str = "model document") -> SavedModelInfo:
    """Validate the JSON document of a saved model; every defect is a CrossDistillError."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise CrossDistillError(f"{source}: the crossdistill model document is not valid JSON ({exc})") from None
    _expect(isinstance(doc, dict), source, "expected a JSON object")
    _expect(doc.get("format") == FORMAT, source, f"'format' must be {FORMAT!r}")
    version = doc.get("format_version")
    _expect(is_int(version), source, "'format_version' must be an integer")
    if version > FORMAT_VERSION:
        raise CrossDistillError(
            f"{source}: written in model format version {version} by crossdistill "
            f"{doc.get('crossdistill_version', '?')}; this crossdistill reads up to version {FORMAT_VERSION}: upgrade it"
        )
    _expect(version >= 1, source, f"unknown format version {version}")
    model = doc.get("model")
    _expect(isinstance(model, str) and bool(model), source, "'model' must be a model name")
    spec = doc.get("spec")
    _expect(str_dict(spec), source, "'spec' must be an object of constructor arguments")
    info = SavedModelInfo(model=model, spec=spec, format_version=version)
    for key in ("crossdistill_version", "torch_version"):
        v = doc.get(key, "")
        _expect(isinstance(v, str), source, f"'{key}' must be a string")
        setattr(info, key, v)
    size = doc.get("input_size")
    if size is not None:
        # (C, H, W) for images; a user's model may take any shape (tokens × features, a vector).
        _expect(isinstance(size, list) and len(size) > 0 and all(is_int(s) and s > 0 for s in size),
                source, "'input_size' must be a list of positive integers (C, H, W for images)")
        info.input_size = tuple(size)  # type: ignore[assignment]
    n = doc.get("num_classes")
    if n is not None:
        _expect(is_int(n) and n > 0, source, "'num_classes' must be a positive integer")
        info.num_classes = n
    for key in ("mean", "std"):
        v = doc.get(key)
        if v is not None:
            _expect(isinstance(v, list) and len(v) > 0 and all(_is_number(x) for x in v),
                    source, f"'{key}' must be a list of finite numbers")
            setattr(info, key, tuple(float(x) for x in v))
    if info.std is not None:
        _expect(all(s > 0 for s in info.std), source, "'std' must be positive")
    names = doc.get("class_names")
    if names is not None:
        _expect(isinstance(names, list) and all(isinstance(x, str) for x in names)
                and (info.num_classes is None or len(names) == info.num_classes),
                source, "'class_names' must be a list of strings, one per class")
        info.class_names = list(names)
    output = doc.get("output")
    _expect(output is None or (isinstance(output, str) and bool(output)), source, "'output' must be a key or an index")
    info.output = output
    kind = doc.get("kind", "classes")
    _expect(kind in KINDS, source, f"'kind' must be one of {', '.join(KINDS)}")
    _expect(kind != "values" or info.num_classes is None, source, "predictions of kind 'values' have no 'num_classes'")
    info.kind = kind
    dtype = doc.get("input_dtype", "float32")
    _expect(dtype in ("float32", "int64"), source, "'input_dtype' must be 'float32' or 'int64' (token ids)")
    info.input_dtype = dtype
    layout = doc.get("memory_format", "contiguous")
    _expect(layout in ("contiguous", "channels_last"), source, "'memory_format' must be 'contiguous' or 'channels_last'")
    info.memory_format = layout
    dtype = doc.get("dtype", "float32")
    _expect(dtype == "float32" or dtype in SAVED_DTYPES, source,
            f"'dtype' must be float32 or one of {', '.join(SAVED_DTYPES)}")
    info.dtype = dtype
    dtypes = doc.get("dtypes") or {}
    _expect(str_dict(dtypes) and all(v == "float32" or v in SAVED_DTYPES for v in dtypes.values()), source,
            f"'dtypes' must map tensor names to float32 or one of {', '.join(SAVED_DTYPES)}")
    info.dtypes = dict(dtypes)

    for codec in codecs.CODECS:
        try:
            # An absent (or null, or empty) entry means the model has none of that artifact.
            info.artifacts[codec.name] = codec.validate(doc.get(codec.name) or {})
        except DocumentError as exc:
            raise CrossDistillError(f"{source}: invalid crossdistill model document: {exc}") from None

    omitted = doc.get("omitted") or []
    _expect(isinstance(omitted, list) and all(isinstance(k, str) for k in omitted), source, "'omitted' must be a list of keys")
    # Exactly these: a key left out that no codec rebuilds would load as zeros.
    expected = {k for codec in codecs.CODECS for k in codec.replaced_keys(info.artifacts[codec.name])}
    _expect(set(omitted) == expected, source,
            "'omitted' must list exactly the weights rebuilt from artifacts (such as those of the quantized layers)")
    info.omitted = list(omitted)
    return info
