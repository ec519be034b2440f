"""Reading and writing weights safely.

Pickled checkpoints are opened with `weights_only=True` only: a checkpoint that needs
arbitrary unpickling can execute code, so it is refused rather than trusted.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from crossdistill.errors import CrossDistillError

__all__ = [
    "Checkpoint",
    "load_checkpoint",
    "load_state_dict_file",
    "load_weights",
    "save_model",
    "load_model",
]

PICKLE_SUFFIXES = (".th", ".pt", ".pth", ".tar", ".bin", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"
# Prefixes added by DataParallel/DistributedDataParallel and torch.compile; never part of the model.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Old checkpoints (PyTorch < 0.4, e.g. the shared CIFAR ResNets) have no BN step counters;
# the counter does not affect inference, so its absence or presence is never an error.
_IGNORED_SUFFIX = "num_batches_tracked"
_MAX_LISTED = 5


def tensors_sha256(tensors: Iterable[tuple[str, Any]]) -> str:
    """sha256 of named tensors' names and bytes: what a sweep keys a teacher's evaluation by, and
    what the processes of a distributed run compare."""
    h = hashlib.sha256()
    for name, t in tensors:
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class Checkpoint:
    """Tensors of a weights file plus the model name/spec when the file was written by `save_model`."""

    state_dict: dict[str, torch.Tensor]
    model_name: str | None = None
    spec: dict[str, Any] = field(default_factory=dict)


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _WRAPPER_PREFIXES:
            if key.startswith(p):
                key = key[len(p):]
                changed = True
    return key


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip holding the model's code (`<name>/code/`) beside its data."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            return any("/code/" in n or n.endswith("/constants.pkl") for n in zf.namelist())
    except Exception:  # noqa: BLE001 - damaged beyond the zip reader: torch.load below names it
        return False


def _read_pickle(path: Path) -> Any:
    if _is_torchscript(path):
        raise CrossDistillError(
            f"{path}: a TorchScript file (torch.jit.save), not a checkpoint of weights: give the weights of your "
            "nn.Module, torch.save(model.state_dict(), 'trained.pt') (a scripted model's own weights: "
            "torch.jit.load(f).state_dict(), if its parameter names are your module's)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch says "weights only load failed" both for a forbidden global (a class or function
        # the file wants imported: unsafe) and for bytes that are no pickle at all (corrupt);
        # only the first is a safety refusal.
        found = re.search(r"GLOBAL\s+([\w.]+)", str(exc))
        if found or "unsupported global" in str(exc).lower():
            what = f" (it references {found.group(1)})" if found else ""
            raise CrossDistillError(
                f"{path}: refused for safety: the checkpoint contains pickled objects other than "
                f"tensors and plain containers{what}, and loading it would require full unpickling "
                "(which can run arbitrary code). Re-save it as a plain state_dict "
                "(torch.save(model.state_dict(), ...)) or as .safetensors."
            ) from None
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        # torch's message is a paragraph of advice; the line that names the defect is enough.
        detail = next((ln for ln in lines[1:] if not ln.startswith(("Please", "Check", "Weights only"))),
                      lines[0] if lines else type(exc).__name__)
        raise CrossDistillError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {detail}") from None
    except Exception as exc:  # torch surfaces corruption as RuntimeError, EOFError, struct.error, KeyError...
        raise CrossDistillError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from None


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own SafetensorError (a plain Exception subclass)
        raise CrossDistillError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from None
    return tensors, meta


def _unwrap(obj: Any, path: Path) -> tuple[Mapping[str, Any], dict[str, Any]]:
    meta: dict[str, Any] = {}
    # Training scripts wrap the weights in {'state_dict': ..., 'epoch': ...} or {'model': ...}.
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        if isinstance(obj.get("crossdistill"), Mapping):
            meta = dict(obj["crossdistill"])
        inner = next((obj[k] for k in ("state_dict", "model", "model_state_dict") if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CrossDistillError(f"{path}: expected a state_dict (a dict of tensors), found {type(obj).__name__}")
    return obj, meta


def _clean(raw: Mapping[str, Any], path: Path | str) -> dict[str, torch.Tensor]:
    bad = [k for k, v in raw.items() if not isinstance(v, torch.Tensor)]
    if bad:
        nested = [k for k in bad if isinstance(raw[k], Mapping) and raw[k]
                  and all(isinstance(v, torch.Tensor) for v in raw[k].values())]
        # {'net': ..., 'ema': ...}: which of the state dicts is the model is the user's call.
        hint = (f"; it holds several state dicts ({', '.join(map(str, nested[:_MAX_LISTED]))}): save the one to "
                f"compress as a file of its own, e.g. torch.save(torch.load(f)[{str(nested[-1])!r}], 'weights.pt')"
                if nested else "")
        raise CrossDistillError(
            f"{path}: state_dict has non-tensor entries: {', '.join(map(str, bad[:_MAX_LISTED]))}{hint}"
        )
    out: dict[str, torch.Tensor] = {}
    for k, v in raw.items():
        key = _strip_prefixes(str(k))
        if key in out:
            raise CrossDistillError(f"{path}: key {key!r} appears twice after stripping wrapper prefixes")
        out[key] = v
    if not out:
        raise CrossDistillError(f"{path}: the checkpoint holds no tensors")
    return out


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a `.th/.pt/.pth` (weights_only) or `.safetensors` file into a Checkpoint."""
    path = Path(path)
    if path.is_dir():
        raise CrossDistillError(f"weights {path} is a folder; give the weights file (a .th/.pt/.pth state dict or a "
                                ".safetensors file)")
    if not path.is_file():
        raise CrossDistillError(f"weights file not found: {path}")
    if path.suffix == SAFETENSORS_SUFFIX:
        tensors, meta = _read_safetensors(path)
        if "crossdistill" in meta:
            # A model saved by crossdistill.save: quantized weights are stored as integer codes,
            # so the dense state dict is the rebuilt model's. The reader, not
            # crossdistill.persistence.load: that one falls back to this module for plain files.
            from crossdistill.persistence.reader import load_saved

            model = load_saved(path)
            return Checkpoint(dict(model.state_dict()), model.crossdistill_name, model.spec())
        name = meta.get("crossdistill_model")
        try:
            spec = json.loads(meta.get("crossdistill_spec", "{}"))
        except json.JSONDecodeError:
            spec = {}
        return Checkpoint(_clean(tensors, path), name, spec)
    if path.suffix not in PICKLE_SUFFIXES:
        raise CrossDistillError(
            f"{path}: unknown weights format {path.suffix!r}; expected one of "
            f"{', '.join(PICKLE_SUFFIXES + (SAFETENSORS_SUFFIX,))}"
        )
    raw, meta = _unwrap(_read_pickle(path), path)
    name = meta.get("model") if isinstance(meta.get("model"), str) else None
    spec = dict(meta["spec"]) if isinstance(meta.get("spec"), Mapping) else {}
    return Checkpoint(_clean(raw, path), name, spec)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped from {'state_dict'|'model': ...}, `module.` stripped."""
    return load_checkpoint(path).state_dict


def _fmt_shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def _listing(keys: list[str]) -> str:
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def _prefix_hint(missing: Sequence[str], unexpected: Sequence[str]) -> str:
    """How to fix keys that differ only by a leading name (a training wrapper's `model.`)."""
    if not missing or len(missing) != len(unexpected):
        return ""
    for extra, short in ((unexpected, set(missing)), (missing, set(unexpected))):
        heads = {k.partition(".")[0] for k in extra}
        if len(heads) == 1 and "." in extra[0] and {k.partition(".")[2] for k in extra} == short:
            prefix = f"{heads.pop()}."
            if extra is unexpected:
                return (f"; the file's keys carry the prefix {prefix!r}: save {{k.removeprefix({prefix!r}): v for k, v "
                        "in state_dict.items()}, or the weights of the inner module")
            return f"; the model's keys carry the prefix {prefix!r} that the file's lack: load them into model.{prefix[:-1]}"
    return ""


def load_weights(model: nn.Module, source: str | Path | Mapping[str, torch.Tensor]) -> nn.Module:
    """Load weights into `model` after checking keys, shapes and finiteness; returns `model`.

    Raises CrossDistillError naming the first missing/unexpected keys and, for shape
    mismatches, the expected (model) vs got (file) shapes.
    """
    if isinstance(source, Mapping):
        label: str | Path = "state_dict"
        sd = _clean(source, label)
    else:
        label = Path(source)
        sd = load_state_dict_file(label)
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith(_IGNORED_SUFFIX)]
    unexpected = [k for k in sd if k not in own and not k.endswith(_IGNORED_SUFFIX)]
    mismatched = [k for k in own if k in sd and own[k].shape != sd[k].shape]
    problems = []
    if mismatched:
        problems.append(
            "shape mismatch: "
            + "; ".join(f"{k}: expected {_fmt_shape(own[k])}, got {_fmt_shape(sd[k])}" for k in mismatched[:_MAX_LISTED])
            + (f" (+{len(mismatched) - _MAX_LISTED} more)" if len(mismatched) > _MAX_LISTED else "")
        )
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    if problems:
        name = getattr(model, "crossdistill_name", type(model).__name__)
        raise CrossDistillError(f"{label} does not fit model {name}: " + "; ".join(problems) + _prefix_hint(missing,
                                                                                                          unexpected))
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CrossDistillError(f"{label}: non-finite values (NaN/inf) in {_listing(bad)}")
    usable = {k: v for k, v in sd.items() if k in own}
    model.load_state_dict(usable, strict=False)
    return model


def save_model(model: nn.Module, path: str | Path) -> Path:
    """Save weights plus model name and spec so `load_model(path)` can rebuild a slimmed model.

    `.safetensors` stores name/spec as metadata; other suffixes write a weights_only-loadable
    {'state_dict': ..., 'crossdistill': {'model': name, 'spec': spec}}.
    """
    path = Path(path)
    name = getattr(model, "crossdistill_name", None)
    factory = getattr(model, "crossdistill_factory", None)
    if path.suffix == SAFETENSORS_SUFFIX and ((name and hasattr(model, "spec")) or factory):
        # The full format (masks, quantization codes, low-rank structure); see crossdistill.persistence.
        from crossdistill.persistence.writer import save

        return save(model, path)
    spec = model.spec() if hasattr(model, "spec") else {}  # type: ignore[operator]
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == SAFETENSORS_SUFFIX:
        from safetensors.torch import save_file

        meta = {"crossdistill_spec": json.dumps(spec)}
        if name:
            meta["crossdistill_model"] = name
        save_file(sd, str(path), metadata=meta)
    else:
        torch.save({"state_dict": sd, "crossdistill": {"model": name, "spec": spec}}, path)
    return path


def load_model(path: str | Path, name: str | None = None) -> nn.Module:
    """Build and load a model from a weights file.

    The architecture comes from the file's saved spec when present, otherwise it is inferred
    from the tensor shapes, so a slimmed student loads given only its base model name.
    """
    from crossdistill.models.registry import create_model, spec_from_state_dict
    from crossdistill.persistence.files import is_crossdistill_file
    from crossdistill.persistence.reader import load_saved

    if is_crossdistill_file(path):
        return load_saved(path, model=name)
    ckpt = load_checkpoint(path)
    model_name = name or ckpt.model_name
    if model_name is None:
        raise CrossDistillError(f"{path}: the file does not record its model; name it with --model: a registry name "
                                "(crossdistill models) or path/to/file.py:function for a model of your own")
    try:
        spec = ckpt.spec if (ckpt.spec and ckpt.model_name == model_name) else spec_from_state_dict(model_name, ckpt.state_dict)
        model = create_model(model_name, **spec)
        load_weights(model, ckpt.state_dict)
    except CrossDistillError as exc:
        raise CrossDistillError(f"{path}: {exc}") from None  # name the file: the message alone may not
    return model
