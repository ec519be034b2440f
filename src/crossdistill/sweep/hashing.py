"""Config hashes: what identifies a run in a results database.

A run is identified by the sha256 of its resolved config's canonical JSON. Every hash of a
config goes through `config_hash`, and a config read back from a database goes through
`canonical_config` first, so that a stored run and the same run described by the current
`CompressConfig` hash alike.
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from typing import Any, Mapping

from crossdistill.errors import CrossDistillError


def _normalise(obj: Any) -> Any:
    # 1 and 1.0 mean the same setting (YAML writes either), so they must hash the same.
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise CrossDistillError(f"config values must be finite numbers, got {obj}")
        return int(obj) if obj.is_integer() else obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): _normalise(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_normalise(v) for v in obj]
    raise CrossDistillError(f"config value {obj!r} of type {type(obj).__name__} cannot be stored")


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, integral floats written as integers: one text per meaning."""
    return json.dumps(_normalise(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def json_sha256(obj: Any) -> str:
    """sha256 of `canonical_json(obj)`: the one digest of structured values (configs, cache keys)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


# Run-level settings added after results were stored, each with the default that reproduces the
# behaviour from before it existed. At that default they are left out of the hash, so the hash of
# every run made before they existed stays what it was (stored config_hash columns match as
# written, not only after re-hashing).
_ADDED_AT_DEFAULT: dict[str, Any] = {"baseline": None, "output_key": None, "output_kind": "auto", "classes": None}


def config_hash(config: Mapping[str, Any] | Any) -> str:
    """sha256 of the canonical JSON of a full resolved config (a dict, or anything with `to_dict()`).

    Every field that has an effect counts (`config.run_identity`). Hash `CompressConfig(...).to_dict()` for a run to do, and
    `canonical_config(stored)` for a run read back from a database.
    """
    return json_sha256(config_identity(config))


def config_identity(config: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The settings that identify a run (what `config_hash` hashes): those with an effect."""
    # Duck-typed rather than an isinstance check: callers and older tests pass CompressConfig.
    from crossdistill.config import run_identity
    from crossdistill.config.sections import LOGIT_FINETUNE_BASELINES

    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    values = {k: v for k, v in values.items() if not (k in _ADDED_AT_DEFAULT and v == _ADDED_AT_DEFAULT[k])}
    identity = run_identity(values)
    # These baselines fine-tune whatever `finetune.epochs` says (crossdistill.baselines.l1: 200
    # epochs when it is 0), so their fine-tune settings always have an effect and identify the run.
    if values.get("baseline") in LOGIT_FINETUNE_BASELINES and "finetune" in values:
        identity["finetune"] = values["finetune"]
    return identity


def canonical_config(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A config as stored by any earlier version, resolved through the current `CompressConfig`.

    Fields added to the config since the row was written take their defaults (a new setting's
    default reproduces the behaviour from before it existed), and whatever shape `to_dict()`
    now writes is used, so re-hashing the result matches the hash of the same run made today.
    Raises CrossDistillError when the stored config no longer resolves (e.g. a removed key).
    No `validate()`: the row was validated when written, and validation also checks the
    machine (a CUDA device), which must not decide whether a recorded run counts as done.
    """
    from crossdistill.config import CompressConfig

    try:
        with warnings.catch_warnings():
            # A stored setting the config now ignores (it belongs to a plug-in the run did not
            # select) is warned about when a user writes it; for a row read back it is noise.
            warnings.simplefilter("ignore")
            return CompressConfig.from_dict(dict(stored), strict=False).to_dict()
    except CrossDistillError:
        raise
    except (TypeError, ValueError) as exc:  # a value the config's constructor refuses
        raise CrossDistillError(f"stored config does not resolve: {exc}") from None
