"""Saving and loading compressed models without pickle.

One self-contained `.safetensors` file per model: the tensors, plus a JSON document in the
file's metadata header (key `crossdistill`) that says how to rebuild the module around them.
Nothing in the file is ever executed: the architecture comes from the model registry, the
JSON only picks constructor arguments (`model.spec()`) and names the layers that were
factorised, quantized or masked.

File layout (format version 1)
------------------------------
tensors
    the state dict of the model, except the float weights of quantized layers (their integer
    codes are the model; the float weight is recomputed from them, bit for bit);
    `__crossdistill__.quant.{layer}.{qcodes,qscale,qzero}`: int8/uint8 codes, float32 scales,
    int8/uint8 zero points of each quantized layer (`compression/quantization.py`);
    `__crossdistill__.mask.{layer}`: a bool mask of a sparse layer, stored only when it is not
    simply "the weight's non-zero entries" (then the JSON says `"nonzero"`).
metadata `crossdistill` (JSON)
    format, format_version, crossdistill_version, torch_version, model (registry name), spec,
    input_size (C, H, W), num_classes, mean, std (the normalisation the model expects),
    lowrank {layer: {rank, kind}}, quant {layer: {bits, scheme}}, masks {layer: encoding},
    omitted [state-dict keys rebuilt from quantization codes].
It is the header's only metadata entry: safetensors stores metadata in a hash map of random
order, and with a single entry the same model always gives the same bytes.

Loading builds the model on the `meta` device first and checks every shape against the file
before any memory is allocated, so a forged spec (say a billion channels) is refused instead of
exhausting memory, and loading consumes none of the caller's random numbers.
"""
from __future__ import annotations

import json
import math
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from crossdistill.errors import CrossDistillError

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

FORMAT = "crossdistill-model"
FORMAT_VERSION = 1
META_KEY = "crossdistill"
EXTRA_PREFIX = "__crossdistill__."
_QUANT_PREFIX = EXTRA_PREFIX + "quant."
_MASK_PREFIX = EXTRA_PREFIX + "mask."
_QUANT_SUFFIXES = ("qcodes", "qscale", "qzero")
# What `load(DIR)` looks for: a compress/baseline run directory writes student.safetensors.
DIR_CANDIDATES = ("student.safetensors", "model.safetensors")
_MASK_ENCODINGS = ("nonzero", "tensor")
_MAX_LISTED = 5


@dataclass
class SavedModelInfo:
    """The JSON document of a saved model, validated (see the module docstring)."""

    model: str
    spec: dict[str, Any]
    format_version: int = FORMAT_VERSION
    crossdistill_version: str = ""
    torch_version: str = ""
    input_size: tuple[int, int, int] | None = None
    num_classes: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    lowrank: dict[str, dict[str, Any]] = field(default_factory=dict)
    quant: dict[str, dict[str, Any]] = field(default_factory=dict)
    masks: dict[str, str] = field(default_factory=dict)
    omitted: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
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
            "lowrank": self.lowrank,
            "quant": self.quant,
            "masks": self.masks,
            "omitted": self.omitted,
        }


# ---------------------------------------------------------------------------------------------
# saving


def temp_sibling(path: Path) -> Path:
    """An unused name beside `path`. Not created here, so the writer creates the file with the
    user's umask (mkstemp would make it private)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")


def _atomic_write(path: Path, write: Any) -> None:
    # A reader (or a crash) never sees half a weights file: write beside, then rename.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(temp_sibling(path))
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _module(model: nn.Module, name: str, what: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise CrossDistillError(f"{what} names layer {name!r}, which the model does not have") from None


def build_document(model: nn.Module) -> tuple[dict[str, torch.Tensor], SavedModelInfo]:
    """Tensors and JSON info that describe `model` completely (what `save` writes)."""
    from crossdistill import __version__
    from crossdistill.models.registry import model_info

    name = getattr(model, "crossdistill_name", None)
    if not isinstance(name, str) or not hasattr(model, "spec"):
        raise CrossDistillError(
            f"cannot save a {type(model).__name__}: only models built by crossdistill.models.create_model "
            "(which record their registry name and spec()) can be rebuilt without pickle"
        )
    spec = model.spec()  # type: ignore[operator]
    try:
        spec = json.loads(json.dumps(spec))  # what load will see: tuples become lists
    except (TypeError, ValueError) as exc:
        raise CrossDistillError(f"{name}: spec() is not JSON-serialisable ({exc})") from None
    info = model_info(name)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CrossDistillError(f"cannot save {name}: non-finite values (NaN/inf) in {', '.join(bad[:_MAX_LISTED])}")
    tensors = dict(state)
    doc = SavedModelInfo(
        model=name, spec=spec, crossdistill_version=__version__, torch_version=torch.__version__,
        input_size=tuple(info.input_size), num_classes=_num_classes(spec, info.num_classes),
        mean=tuple(info.mean), std=tuple(info.std),
    )

    lowrank = getattr(model, "crossdistill_lowrank", None) or {}
    if lowrank:
        from crossdistill.compression.low_rank import lowrank_metadata

        doc.lowrank = json.loads(json.dumps(lowrank_metadata(model)))

    quant = getattr(model, "crossdistill_quant", None) or {}
    if quant:
        from crossdistill.compression.quantization import dequantized_weight, quant_metadata, quant_tensors

        for layer, entry in quant.items():
            weight = _module(model, layer, "the quantization record").weight.detach().cpu()
            # The codes replace the float weight in the file, so they must be exactly the model.
            if not torch.equal(dequantized_weight(entry).to(weight.dtype), weight):
                raise CrossDistillError(
                    f"cannot save {name}: the weight of quantized layer {layer!r} is off its integer grid "
                    "(changed after quantization?); call crossdistill.compression.quantization.dequantize_into(model) "
                    "to put it back on the grid, or drop model.crossdistill_quant"
                )
            key = f"{layer}.weight"
            tensors.pop(key, None)
            doc.omitted.append(key)
        doc.quant = json.loads(json.dumps(quant_metadata(model)))
        tensors.update({_QUANT_PREFIX + k: v.detach().cpu().contiguous().clone() for k, v in quant_tensors(model).items()})

    masks = getattr(model, "crossdistill_masks", None) or {}
    for layer, mask in masks.items():
        weight = _module(model, layer, "the sparsity mask").weight.detach().cpu()
        mask = torch.as_tensor(mask).detach().cpu().to(torch.bool)
        if mask.shape != weight.shape:
            raise CrossDistillError(
                f"cannot save {name}: mask of {layer!r} has shape {tuple(mask.shape)}, its weight {tuple(weight.shape)}"
            )
        # Usually the mask is just "where the weight is non-zero": then it costs nothing to store.
        if torch.equal(mask, weight != 0):
            doc.masks[layer] = "nonzero"
        else:
            doc.masks[layer] = "tensor"
            tensors[_MASK_PREFIX + layer] = mask.contiguous()
    return tensors, doc


def _num_classes(spec: Mapping[str, Any], default: int) -> int:
    n = spec.get("num_classes", default)
    return int(n) if isinstance(n, int) else int(default)


def save(model: nn.Module, path: str | Path) -> Path:
    """Write `model` (slimmed, sparse, quantized and/or low-rank) to one `.safetensors` file.

    No pickle is involved; `load(path)` rebuilds a model whose outputs equal this one's bit for
    bit. The file appears atomically. Returns the path.
    """
    from safetensors.torch import save as to_bytes

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CrossDistillError(f"{path}: a saved model is a .safetensors file; give a path ending in .safetensors")
    if path.is_dir():
        raise CrossDistillError(f"{path} is a directory; give a file path ending in .safetensors")
    tensors, doc = build_document(model)
    meta = {META_KEY: json.dumps(doc.to_json())}
    try:
        # Serialised in memory and written by Python: safetensors' own save_file creates the file
        # private (0600) whatever the umask, and a saved model is meant to be shared.
        data = to_bytes(tensors, metadata=meta)
        _atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    except OSError as exc:
        raise CrossDistillError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


# ---------------------------------------------------------------------------------------------
# reading the header


def resolve_model_path(path: str | Path) -> Path:
    """The weights file of `path`: the file itself, or the model file inside a run directory."""
    path = Path(path)
    if path.is_dir():
        for cand in DIR_CANDIDATES:
            if (path / cand).is_file():
                return path / cand
        raise CrossDistillError(
            f"{path}: directory holds no saved model (expected {' or '.join(DIR_CANDIDATES)}, "
            "as written by `crossdistill compress` or crossdistill.save)"
        )
    if not path.exists():
        raise CrossDistillError(f"{path}: no such file or directory")
    if not path.is_file():
        raise CrossDistillError(f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise CrossDistillError(f"{path}: not readable (permission denied)")
    return path


def _read_header(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except BaseException as exc:  # SafetensorError, OSError; a Rust panic surfaces as a BaseException
        if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        raise CrossDistillError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from None


def is_crossdistill_file(path: str | Path) -> bool:
    """True when `path` is a `.safetensors` file with a crossdistill model document."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        return META_KEY in _read_header(path)
    except CrossDistillError:
        return False


def _expect(cond: bool, source: str, what: str) -> None:
    if not cond:
        raise CrossDistillError(f"{source}: invalid crossdistill model document: {what}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _str_dict(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) for k in v)


def parse_info(text: str | bytes, source: str = "model document") -> SavedModelInfo:
    """Validate the JSON document of a saved model; every defect is a CrossDistillError."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise CrossDistillError(f"{source}: the crossdistill model document is not valid JSON ({exc})") from None
    _expect(isinstance(doc, dict), source, "expected a JSON object")
    _expect(doc.get("format") == FORMAT, source, f"'format' must be {FORMAT!r}")
    version = doc.get("format_version")
    _expect(_is_int(version), source, "'format_version' must be an integer")
    if version > FORMAT_VERSION:
        raise CrossDistillError(
            f"{source}: written in model format version {version} by crossdistill "
            f"{doc.get('crossdistill_version', '?')}; this crossdistill reads up to version {FORMAT_VERSION}: upgrade it"
        )
    _expect(version >= 1, source, f"unknown format version {version}")
    model = doc.get("model")
    _expect(isinstance(model, str) and bool(model), source, "'model' must be a model name")
    spec = doc.get("spec")
    _expect(_str_dict(spec), source, "'spec' must be an object of constructor arguments")
    info = SavedModelInfo(model=model, spec=spec, format_version=version)
    for key in ("crossdistill_version", "torch_version"):
        v = doc.get(key, "")
        _expect(isinstance(v, str), source, f"'{key}' must be a string")
        setattr(info, key, v)
    size = doc.get("input_size")
    if size is not None:
        _expect(isinstance(size, list) and len(size) == 3 and all(_is_int(s) and s > 0 for s in size),
                source, "'input_size' must be three positive integers (C, H, W)")
        info.input_size = tuple(size)  # type: ignore[assignment]
    n = doc.get("num_classes")
    if n is not None:
        _expect(_is_int(n) and n > 0, source, "'num_classes' must be a positive integer")
        info.num_classes = n
    for key in ("mean", "std"):
        v = doc.get(key)
        if v is not None:
            _expect(isinstance(v, list) and len(v) > 0 and all(_is_number(x) for x in v),
                    source, f"'{key}' must be a list of finite numbers")
            setattr(info, key, tuple(float(x) for x in v))
    if info.std is not None:
        _expect(all(s > 0 for s in info.std), source, "'std' must be positive")

    lowrank = doc.get("lowrank") or {}
    _expect(_str_dict(lowrank), source, "'lowrank' must be an object {layer: {rank, kind}}")
    for layer, m in lowrank.items():
        _expect(isinstance(m, dict) and _is_int(m.get("rank")) and m["rank"] >= 1
                and m.get("kind") in ("conv", "linear"), source, f"lowrank entry of {layer!r} needs rank >= 1 and kind conv|linear")
    info.lowrank = {k: dict(v) for k, v in lowrank.items()}

    quant = doc.get("quant") or {}
    _expect(_str_dict(quant), source, "'quant' must be an object {layer: {bits, scheme}}")
    for layer, m in quant.items():
        _expect(isinstance(m, dict) and _is_int(m.get("bits")) and isinstance(m.get("scheme"), str),
                source, f"quant entry of {layer!r} needs integer bits and a scheme")
    info.quant = {k: dict(v) for k, v in quant.items()}

    masks = doc.get("masks") or {}
    _expect(_str_dict(masks) and all(v in _MASK_ENCODINGS for v in masks.values()),
            source, f"'masks' must map layers to one of {_MASK_ENCODINGS}")
    info.masks = dict(masks)

    omitted = doc.get("omitted") or []
    _expect(isinstance(omitted, list) and all(isinstance(k, str) for k in omitted), source, "'omitted' must be a list of keys")
    expected_omitted = {f"{layer}.weight" for layer in info.quant}
    _expect(set(omitted) == expected_omitted, source, "'omitted' must list exactly the weights of the quantized layers")
    info.omitted = list(omitted)
    return info


def read_info(path: str | Path) -> SavedModelInfo:
    """The validated JSON document of a saved model (file or run directory), without its tensors."""
    path = resolve_model_path(path)
    meta = _read_header(path)
    if META_KEY not in meta:
        raise CrossDistillError(
            f"{path}: not a model saved by crossdistill.save (no '{META_KEY}' metadata); "
            "plain weight files load with crossdistill.models.load_model(path, name)"
        )
    return parse_info(meta[META_KEY], str(path))


# ---------------------------------------------------------------------------------------------
# loading


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        raise CrossDistillError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from None


def _listing(keys: list[str]) -> str:
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def _build(info: SavedModelInfo, source: str, device: str = "meta") -> nn.Module:
    from crossdistill.models.registry import create_model, model_info

    model_info(info.model)  # unknown names get the registry's message, with the known names
    try:
        with torch.device(device):
            model = create_model(info.model, **info.spec)
            if info.lowrank:
                from crossdistill.compression.low_rank import restore_lowrank

                restore_lowrank(model, info.lowrank)
    except CrossDistillError as exc:
        raise CrossDistillError(f"{source}: {exc}") from None
    except Exception as exc:  # the spec comes from the file: any constructor failure is a bad file
        raise CrossDistillError(
            f"{source}: cannot build {info.model} from the saved spec {info.spec} ({type(exc).__name__}: {exc})"
        ) from exc
    return model


def load(path: str | Path, *, model: str | None = None) -> nn.Module:
    """Rebuild a model saved by `save` (or by `crossdistill compress`: give the run directory).

    Returns the model in eval mode, with the sparsity masks, quantization codes and low-rank
    structure it was saved with. Files without a crossdistill document (plain state dicts,
    `.th/.pt/.pth` read with weights_only) are loaded by `crossdistill.models.load_model`, which
    needs the model name when the file does not record it. Any defect of the file raises
    CrossDistillError.
    """
    path = resolve_model_path(path)
    header = _read_header(path) if path.suffix == ".safetensors" else {}
    if META_KEY not in header:
        from crossdistill.models.checkpoint import load_model

        return load_model(path, model).eval()
    source = str(path)
    info = parse_info(header[META_KEY], source)
    if model is not None and model != info.model:
        from crossdistill.models.registry import model_info

        model_info(model)  # an unknown name is reported as such
        raise CrossDistillError(f"{source} holds a {info.model} model, not {model}")
    net = _build(info, source)
    tensors = _read_tensors(path)

    extras = {k: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}
    state = {k: v for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)}
    own = net.state_dict()
    omitted = set(info.omitted)
    missing = [k for k in own if k not in state and k not in omitted]
    unexpected = [k for k in state if k not in own or k in omitted]
    mismatched = [k for k in own if k in state and (own[k].shape != state[k].shape or own[k].dtype != state[k].dtype)]
    problems = []
    if mismatched:
        problems.append("shape/dtype mismatch: " + "; ".join(
            f"{k}: model {tuple(own[k].shape)} {own[k].dtype}, file {tuple(state[k].shape)} {state[k].dtype}"
            for k in mismatched[:_MAX_LISTED]))
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors ({len(unexpected)}): {_listing(unexpected)}")
    if problems:
        raise CrossDistillError(f"{source}: tensors do not fit the saved {info.model} spec: " + "; ".join(problems))
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CrossDistillError(f"{source}: non-finite values (NaN/inf) in {_listing(bad)}")

    # Every shape is known to match: only now is real memory allocated (exactly the file's size).
    if any(name not in own for name, _ in net.named_buffers()):
        # A non-persistent buffer is not in the file: it needs the constructor's own values.
        with torch.random.fork_rng(devices=[]):
            net = _build(info, source, "cpu")
    else:
        net = net.to_empty(device="cpu")
    for key in omitted:
        state[key] = torch.zeros(own[key].shape, dtype=own[key].dtype)  # overwritten from the codes below
    net.load_state_dict(state, strict=True)

    if info.quant:
        from crossdistill.compression.quantization import attach_quant

        flat = {}
        for layer in info.quant:
            for suffix in _QUANT_SUFFIXES:
                key = f"{_QUANT_PREFIX}{layer}.{suffix}"
                if key not in extras:
                    raise CrossDistillError(f"{source}: quantized layer {layer!r} lacks its tensor {key}")
                flat[f"{layer}.{suffix}"] = extras[key]
            layer_mod = _module(net, layer, f"{source}: the quantization record")
            if not isinstance(getattr(layer_mod, "weight", None), torch.Tensor):
                raise CrossDistillError(f"{source}: quantized layer {layer!r} has no weight")
            codes = flat[f"{layer}.qcodes"]
            if tuple(codes.shape) != tuple(layer_mod.weight.shape):
                raise CrossDistillError(
                    f"{source}: codes of quantized layer {layer!r} have shape {tuple(codes.shape)}, "
                    f"the layer's weight {tuple(layer_mod.weight.shape)}"
                )
        try:
            attach_quant(net, flat, info.quant)
        except CrossDistillError as exc:
            raise CrossDistillError(f"{source}: {exc}") from None

    masks: dict[str, torch.Tensor] = {}
    for layer, encoding in info.masks.items():
        weight = getattr(_module(net, layer, f"{source}: the sparsity record"), "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise CrossDistillError(f"{source}: masked layer {layer!r} has no weight")
        if encoding == "nonzero":
            masks[layer] = weight.detach() != 0
        else:
            mask = extras.get(_MASK_PREFIX + layer)
            if mask is None or mask.dtype != torch.bool or mask.shape != weight.shape:
                raise CrossDistillError(f"{source}: mask of {layer!r} is missing or not a bool tensor of the weight's shape")
            masks[layer] = mask
    if masks:
        net.crossdistill_masks = masks  # type: ignore[assignment]
    known = {f"{_QUANT_PREFIX}{layer}.{s}" for layer in info.quant for s in _QUANT_SUFFIXES}
    known |= {_MASK_PREFIX + layer for layer, enc in info.masks.items() if enc == "tensor"}
    stray = sorted(set(extras) - known)
    if stray:
        raise CrossDistillError(f"{source}: unexpected tensors {_listing(stray)}")
    net.crossdistill_saved_info = info  # type: ignore[assignment]
    return net.eval()
