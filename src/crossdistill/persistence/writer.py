"""Saving: a model becomes one `.safetensors` file (tensors + the JSON document)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from crossdistill._version import __version__
from crossdistill.checks import unwrapped
from crossdistill.device import is_channels_last
from crossdistill.errors import CrossDistillError
from crossdistill.models.user import absolute_factory, info_of
from crossdistill.persistence import codecs
from crossdistill.persistence.files import atomic_write, tensors_checksum
from crossdistill.persistence.spec import (
    CHECKSUM_FIELD,
    META_KEY,
    PACKED_CODES_VERSION,
    BUFFERS_VERSION,
    DTYPE_VERSION,
    SAVED_DTYPES,
    TRACED_GROUPS_VERSION,
    TRANSPOSED_CODES_VERSION,
    SavedModelInfo,
)

__all__ = ["build_document", "save"]

_MAX_LISTED = 5


def _num_classes(spec: Mapping[str, Any], default: int) -> int:
    n = spec.get("num_classes", default)
    return int(n) if isinstance(n, int) else int(default)


def _known(model: nn.Module) -> bool:
    try:
        info_of(model)
    except CrossDistillError:
        return False
    return True


def build_document(model: nn.Module, factory: str | None = None) -> tuple[dict[str, torch.Tensor], SavedModelInfo]:
    """Tensors and JSON info that describe `model` completely (what `save` writes); `factory`
    (else `model.crossdistill_factory`) rebuilds a user's model."""
    from crossdistill.models.registry import model_info

    name = getattr(model, "crossdistill_name", None)
    if factory is not None and not (isinstance(factory, str) and ":" in factory):
        raise CrossDistillError(f"factory must be 'path/to/file.py:function' (or 'module:function'), got {factory!r}")
    if factory is not None and isinstance(name, str) and hasattr(model, "spec"):
        warnings.warn(f"factory={factory!r} is not used: {name} is a registered model, rebuilt from the registry",
                      stacklevel=3)
    factory = factory or getattr(model, "crossdistill_factory", None)
    if isinstance(name, str) and hasattr(model, "spec"):
        spec = model.spec()  # type: ignore[operator]
        info = model_info(name)
    elif isinstance(factory, str) and _known(model):
        # A user's model: rebuilt by calling its factory again (crossdistill.models.user).
        # Absolute: the file must load from any folder, not only the one it was written from.
        factory = absolute_factory(factory)
        name, spec, info = factory, {"factory": factory}, info_of(model)
    else:
        raise CrossDistillError(
            f"cannot save a {type(model).__name__}: give a registered model (crossdistill.models.create_model), "
            "or say how to rebuild it: save(model, path, factory='path/to/file.py:function') (or "
            "`--model path/to/file.py:function` on the command line)"
        )
    try:
        spec = json.loads(json.dumps(spec))  # what load will see: tuples become lists
    except (TypeError, ValueError) as exc:
        raise CrossDistillError(f"{name}: spec() is not JSON-serialisable ({exc})") from None
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CrossDistillError(f"cannot save {name}: non-finite values (NaN/inf) in {', '.join(bad[:_MAX_LISTED])}")
    tensors = dict(state)
    n_classes = _num_classes(spec, info.num_classes) or None  # None: predictions of no classes
    doc = SavedModelInfo(
        model=name, spec=spec, crossdistill_version=__version__, torch_version=torch.__version__,
        input_size=tuple(info.input_size), num_classes=n_classes, mean=tuple(info.mean), std=tuple(info.std),
        class_names=_class_names(model, n_classes or 0), output=info.output, kind=info.kind,
        input_dtype=info.input_dtype, memory_format="channels_last" if is_channels_last(model) else "contiguous",
        dtype=_saved_dtype(model),
    )
    base = SAVED_DTYPES.get(doc.dtype, torch.float32)
    names = {v: k for k, v in SAVED_DTYPES.items()}
    doc.dtypes = {k: names.get(v.dtype, "float32") for k, v in state.items()
                  if v.is_floating_point() and v.dtype != base and v.dtype in (*names, torch.float32)}
    for codec in codecs.CODECS:
        try:
            encoded = codec.encode(model)
        except CrossDistillError as exc:
            raise CrossDistillError(f"cannot save {name}: {exc}") from None
        if encoded is None:
            doc.artifacts[codec.name] = {}
            continue
        metadata, extra = encoded
        doc.artifacts[codec.name] = json.loads(json.dumps(metadata))  # what load will see
        for key in codec.replaced_keys(metadata):
            # The codec's tensors stand in for this entry of the state dict.
            tensors.pop(key, None)
            doc.omitted.append(key)
        tensors.update({codec.prefix + k: v for k, v in extra.items()})
    quant = doc.artifacts.get("quant", {}).values()
    slim = doc.artifacts.get("channel_groups") or {}
    if doc.artifacts.get("buffers") or doc.dtype != "float32" or doc.dtypes:
        doc.format_version = max(BUFFERS_VERSION, DTYPE_VERSION)
    elif any(m.get("transposed_groups") for m in quant):
        doc.format_version = TRANSPOSED_CODES_VERSION
    elif any(st.get("trace", 1) > 1 for st in ([slim, *slim.get("then", [])] if slim else [])):
        doc.format_version = TRACED_GROUPS_VERSION
    else:
        doc.format_version = PACKED_CODES_VERSION if any(m.get("packed") for m in quant) else 1
    return tensors, doc


def _saved_dtype(model: nn.Module) -> str:
    """The floating dtype of most of the model's parameters when it is not float32 (a student cast
    with .half() after compressing); float32 otherwise. Tensors of another dtype are listed in
    the document's `dtypes`."""
    from collections import Counter

    names = {v: k for k, v in SAVED_DTYPES.items()}
    counts = Counter(p.dtype for p in model.parameters() if p.is_floating_point())
    return names.get(counts.most_common(1)[0][0], "float32") if counts else "float32"


def _warn_unsaved_hooks(model: nn.Module, doc: SavedModelInfo) -> None:
    """Hooks are code, not tensors: the file cannot hold them. A hook that computes part of the
    model (an input normalisation as a forward pre-hook) is missing from the loaded model unless
    the factory registers it; a saved student scored 98 % and loaded 28 % without a word."""
    import warnings

    from crossdistill.checks import HookWarning, hooked_modules
    from crossdistill.errors import outside_stacklevel

    hooked = hooked_modules(model)
    if hooked:
        builder = "its factory" if "factory" in doc.spec else "create_model"
        warnings.warn(f"hooks registered on {hooked} are not saved: the loaded model runs without them unless "
                      f"{builder} registers them; register them again after crossdistill.load, or make them part of "
                      "the module's forward", HookWarning, stacklevel=outside_stacklevel())


def _class_names(model: nn.Module, num_classes: int) -> list[str] | None:
    """The names compress recorded from the training data (`crossdistill_class_names`), kept
    when there is one per class: `evaluate` numbers a test folder by them."""
    names = getattr(model, "crossdistill_class_names", None)
    if isinstance(names, (list, tuple)) and len(names) == num_classes and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def save(model: nn.Module, path: str | Path, *, factory: str | None = None) -> Path:
    """Write `model` (slimmed, sparse, quantized and/or low-rank) to one `.safetensors` file.

    No pickle is involved; `load(path)` rebuilds a model whose outputs equal this one's bit for
    bit. The file appears atomically. Returns the path. A model the registry does not know is
    rebuilt on load by calling `factory` ('path/to/file.py:function' or 'module:function', which
    returns the uncompressed model), given here or set earlier as `model.crossdistill_factory`.
    """
    from safetensors.torch import save as to_bytes

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CrossDistillError(f"{path}: a saved model is a .safetensors file; give a path ending in .safetensors")
    if path.is_dir():
        raise CrossDistillError(f"{path} is a directory; give a file path ending in .safetensors")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:  # mkdir would only say "File exists"
        raise CrossDistillError(f"cannot write {path}: {blocking} is a file, not a folder")
    # A wrapper's keys carry its prefix (_orig_mod., module.): the file would not load into the model.
    inner, found = unwrapped(model)
    if factory is None and inner is not model and getattr(inner, "crossdistill_name", None) is None:
        factory = found  # perhaps set on a wrapper
    model = inner
    tensors, doc = build_document(model, factory)
    _warn_unsaved_hooks(model, doc)
    meta = {META_KEY: json.dumps({**doc.to_json(), CHECKSUM_FIELD: tensors_checksum(tensors)})}
    try:
        # Serialised in memory and written by Python: safetensors' own save_file creates the file
        # private (0600) whatever the umask, and a saved model is meant to be shared.
        data = to_bytes(tensors, metadata=meta)
        atomic_write(path, lambda tmp: _write_checked(Path(tmp), path, data, meta[META_KEY], doc))
    except OSError as exc:
        raise CrossDistillError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def _write_checked(tmp: Path, path: Path, data: bytes, document: str, doc: SavedModelInfo) -> None:
    """Write the file, and for a model that a user's factory rebuilds, rebuild it from the file
    before it takes its name: a factory that builds another model (a plain one for a
    parametrized student, float16 layers for a float32 one) failed only at load, when the
    student's run was long gone."""
    tmp.write_bytes(data)
    factory = doc.spec.get("factory")
    if not factory:
        return
    from crossdistill.persistence.reader import rebuild

    try:
        # The factory's layers initialise from the global generator: the caller's seeding goes on
        # where it was, as after load() (reader.py).
        with torch.random.fork_rng(devices=[]):
            rebuild(tmp, document)
    except CrossDistillError as exc:
        raise CrossDistillError(f"{path} not written: the factory {factory!r} cannot rebuild this model from it "
                                f"({str(exc).replace(str(tmp), str(path))}); give the factory that builds the model "
                                "it was compressed from (crossdistill.save(student, path, factory='file.py:function'))"
                                ) from None
