"""Loading a file written by `save`: rebuild the module, check every tensor, then fill it.

Only the crossdistill format is read here; `crossdistill.persistence.load` also takes plain
weight files (through `crossdistill.models.checkpoint`, which in turn uses this module for
crossdistill files, so this module must not import it).

The model is built on the `meta` device first and every shape is checked against the file
before any memory is allocated, so a forged spec (say a billion channels) is refused instead of
exhausting memory, and loading consumes none of the caller's random numbers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossdistill.errors import CrossDistillError
from crossdistill.persistence import codecs
from crossdistill.persistence.codecs import EXTRA_PREFIX, ArtifactCodec
from crossdistill.persistence.files import read_header, read_tensors, resolve_model_path
from crossdistill.persistence.spec import META_KEY, SAVED_DTYPES, SavedModelInfo, parse_info

__all__ = ["load_saved", "rebuild"]

_MAX_LISTED = 5


def _listing(keys: list[str]) -> str:
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def _used(info: SavedModelInfo) -> list[tuple[ArtifactCodec, dict[str, Any]]]:
    """(codec, entry) of the codecs whose artifact the file holds, in registry order."""
    return [(c, info.artifacts[c.name]) for c in codecs.CODECS if info.artifacts.get(c.name)]


def _build(info: SavedModelInfo, source: str, device: str = "meta") -> nn.Module:
    model = _build_structure(info, source, device)
    # A model saved in another floating dtype (a student cast with .half()) is cast before it is
    # checked against the file and filled: the codecs then write into tensors of that dtype.
    if info.dtype in SAVED_DTYPES:
        model = model.to(SAVED_DTYPES[info.dtype])
    for key, name in info.dtypes.items():  # the tensors kept in another dtype (BatchNorm in float32)
        prefix, _, attr = key.rpartition(".")
        try:
            module = model.get_submodule(prefix)
        except AttributeError:
            module = None
        dtype = SAVED_DTYPES.get(name, torch.float32)
        if module is not None and isinstance(module._parameters.get(attr), torch.Tensor):
            module._parameters[attr].data = module._parameters[attr].data.to(dtype)
        elif module is not None and isinstance(module._buffers.get(attr), torch.Tensor):
            module._buffers[attr] = module._buffers[attr].to(dtype)
        else:
            raise CrossDistillError(f"{source}: 'dtypes' names {key!r}, which the model does not have")
    return model


def _build_structure(info: SavedModelInfo, source: str, device: str) -> nn.Module:
    from crossdistill.models.registry import create_model, model_info

    if "factory" in info.spec:
        return _build_from_factory(info, source)
    model_info(info.model)  # unknown names get the registry's message, with the known names
    try:
        with torch.device(device):
            model = create_model(info.model, **info.spec)
            for codec, entry in _used(info):
                codec.restructure(model, entry)
    except CrossDistillError as exc:
        raise CrossDistillError(f"{source}: {exc}") from None
    except Exception as exc:  # the spec comes from the file: any constructor failure is a bad file
        raise CrossDistillError(
            f"{source}: cannot build {info.model} from the saved spec {info.spec} ({type(exc).__name__}: {exc})"
        ) from exc
    return model


def _build_from_factory(info: SavedModelInfo, source: str) -> nn.Module:
    """A user's model: its factory (the file must still be where it was, or be given again as
    `load(..., factory=...)`) builds the full model on the CPU, then the codecs slim it. This
    runs the user's own code, as training it did; the weights still come from safetensors."""
    from crossdistill.models.user import build_user_model

    try:
        model = build_user_model(info.spec["factory"])
    except CrossDistillError as exc:
        # The file moved or changed since the student was saved: the way out is to name it again.
        raise CrossDistillError(f"{source}: {exc}; this student was saved from the factory {info.spec['factory']!r}: "
                                "give it where it is now (command line: --model FILE.py:FUNCTION; Python: "
                                "crossdistill.load(path, factory='FILE.py:FUNCTION'))") from None
    try:
        for codec, entry in _used(info):
            codec.restructure(model, entry)
    except CrossDistillError as exc:
        raise CrossDistillError(f"{source}: {exc}") from None
    return model


def rebuild(path: Path, document: str, model: str | None = None, factory: str | None = None) -> nn.Module:
    """The model of the crossdistill file `path`, whose header document is `document`.

    `model`, when given, is the registry name the caller expects; another one is refused. A
    factory given there (`path/to/file.py:function`, the form `--model` takes everywhere) is
    read as `factory`: the CLI's evaluate and export take it to rebuild a model whose file moved.
    """
    from crossdistill.models.user import is_factory_spec

    source = str(path)
    info = parse_info(document, source)
    if model is not None and factory is None and is_factory_spec(model):
        model, factory = None, model
    if factory is not None:
        if "factory" not in info.spec:
            raise CrossDistillError(f"{source} holds the registered model {info.model}; it needs no factory")
        info.spec = {**info.spec, "factory": factory}
    if model is not None and model != info.model:
        from crossdistill.models.registry import model_info

        model_info(model)  # an unknown name is reported as such
        raise CrossDistillError(f"{source} holds a {info.model} model, not {model}")
    net = _build(info, source)
    tensors = read_tensors(path)

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
    if "factory" in info.spec:
        pass  # built on the CPU already
    elif any(name not in own for name, _ in net.named_buffers()):
        # A non-persistent buffer is not in the file: it needs the constructor's own values.
        with torch.random.fork_rng(devices=[]):
            net = _build(info, source, "cpu")
    else:
        net = net.to_empty(device="cpu")
    for key in omitted:
        state[key] = torch.zeros(own[key].shape, dtype=own[key].dtype)  # rebuilt by its codec below
    net.load_state_dict(state, strict=True)

    known: set[str] = set()
    for codec, entry in _used(info):
        prefix = codec.prefix
        mine = {k[len(prefix):]: v for k, v in extras.items() if k.startswith(prefix)}
        try:
            codec.decode(net, entry, mine)
        except CrossDistillError as exc:
            raise CrossDistillError(f"{source}: {exc}") from None
        known |= {prefix + k for k in codec.tensor_keys(entry)}
    stray = sorted(set(extras) - known)
    if stray:
        raise CrossDistillError(f"{source}: unexpected tensors {_listing(stray)}")
    if info.memory_format == "channels_last":
        net = net.to(memory_format=torch.channels_last)
    net.crossdistill_saved_info = info  # type: ignore[assignment]
    if info.class_names is not None:
        net.crossdistill_class_names = list(info.class_names)
    return net.eval()


def load_saved(path: str | Path, *, model: str | None = None, factory: str | None = None) -> nn.Module:
    """Rebuild a model saved by `save` (a crossdistill `.safetensors` file or a run directory).

    Unlike `crossdistill.persistence.load`, a file without a crossdistill document is refused
    rather than read as plain weights.
    """
    path = resolve_model_path(path)
    header = read_header(path) if path.suffix == ".safetensors" else {}
    if META_KEY not in header:
        raise CrossDistillError(f"{path}: not a model saved by crossdistill.save (no '{META_KEY}' metadata)")
    return rebuild(path, header[META_KEY], model, factory)
