"""Channel groups removed from a model the registry does not know (`compression/graph_plan.py`):
the registry rebuilds a slimmed registered model from its spec, but a user's factory builds the
full model, so the file records which units of which channel group were kept and the loader
slims the freshly built model the same way before the weights load. No tensors.

Each stage records the version of the rules its groups were traced with (`trace`,
compression/graph_rules.py; a stage without it was traced with version 1) and is replayed under
them: a rule that follows channels further can renumber the groups."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from crossdistill.compression.graph_rules import LEGACY_RULES, TRACE_RULES, trace_rules
from crossdistill.model_inputs import FLOAT, TOKENS, example
from crossdistill.persistence.codecs.base import ArtifactCodec, DocumentError, Encoded, is_int, str_dict

ATTR = "crossdistill_slim"


class SlimCodec(ArtifactCodec):
    """`channel_groups: {"input_size": [C, H, W], "kept": {group id: [kept units]}}`, with
    `"then": [{"input_size", "kept"}, ...]` for a student pruned again (each stage numbered on the
    model the earlier stages left)."""

    name = "channel_groups"
    attr = ATTR

    def encode(self, model: nn.Module) -> Encoded | None:
        record = getattr(model, self.attr, None)
        if not record:
            return None
        # input_dtype only for token ids and `then` only for a student pruned again, so that
        # other files stay as they were.
        return {"input_size": list(record["input_size"]),
                **({"input_dtype": record["input_dtype"]} if record.get("input_dtype", FLOAT) != FLOAT else {}),
                "kept": _kept_json(record["kept"]), **_trace(record),
                **({"then": [_stage(st, as_json=True) for st in record["then"]]} if record.get("then") else {})}, {}

    def validate(self, metadata: Any) -> dict[str, Any]:
        if metadata in (None, {}):
            return {}  # a model that was not slimmed this way
        stages = [metadata or {}]
        then = (metadata or {}).get("then", [])
        if not isinstance(then, list) or not all(str_dict(st) for st in then):
            raise DocumentError("'channel_groups.then' must be a list of {input_size, kept} objects")
        for st in stages + then:
            _check_stage(st)
        dtype = metadata.get("input_dtype", FLOAT)
        if dtype not in (FLOAT, TOKENS):
            raise DocumentError(f"'channel_groups.input_dtype' must be {FLOAT!r} or {TOKENS!r}")
        return {"input_size": metadata["input_size"], "kept": metadata["kept"], **_trace(metadata),
                **({"input_dtype": dtype} if dtype != FLOAT else {}),
                **({"then": [_stage(st, as_json=True) for st in then]} if then else {})}

    def restructure(self, model: nn.Module, metadata: Mapping[str, Any]) -> None:
        from crossdistill.compression.graph_channels import slim_groups

        dtype = metadata.get("input_dtype", FLOAT)
        stages = [metadata, *metadata.get("then", [])]
        for st in stages:  # each stage's group ids are those of the model the stages before left
            with trace_rules(st.get("trace", LEGACY_RULES)):
                slim_groups(model, example(st["input_size"], 1, dtype, model=model),
                            {int(g): v for g, v in st["kept"].items()}, check=False)
        setattr(model, self.attr, {**_stage(metadata), **({"input_dtype": dtype} if dtype != FLOAT else {}),
                                   **({"then": [_stage(st) for st in stages[1:]]} if len(stages) > 1 else {})})

    def decode(self, model: nn.Module, metadata: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
        pass  # `restructure` did the work before the weights were loaded


def _kept_json(kept: Mapping[Any, Any]) -> dict[str, list[int]]:
    return {str(g): [int(u) for u in units] for g, units in kept.items()}


def _stage(stage: Mapping[str, Any], as_json: bool = False) -> dict[str, Any]:
    """One stage's input size and kept units, group ids as strings (the document) or ints (the model)."""
    kept = _kept_json(stage["kept"])
    return {"input_size": [int(v) for v in stage["input_size"]],
            "kept": kept if as_json else {int(g): units for g, units in kept.items()}, **_trace(stage)}


def _trace(stage: Mapping[str, Any]) -> dict[str, int]:
    """The stage's `trace` entry, absent for version 1 so that files of before stay as they were."""
    version = stage.get("trace", LEGACY_RULES)
    return {} if version == LEGACY_RULES else {"trace": int(version)}


def _check_stage(stage: Mapping[str, Any]) -> None:
    size, kept = stage.get("input_size"), stage.get("kept")
    if not (isinstance(size, list) and len(size) >= 1 and all(is_int(v) and v >= 1 for v in size)):
        raise DocumentError("'channel_groups.input_size' must be a list of positive integers")
    if not (str_dict(kept) and all(k.isdigit() and isinstance(v, list) and all(is_int(u) for u in v)
                                   for k, v in kept.items())):
        raise DocumentError("'channel_groups.kept' must map group ids to lists of kept units")
    trace = stage.get("trace", LEGACY_RULES)
    if not (is_int(trace) and trace >= LEGACY_RULES):
        raise DocumentError("'channel_groups.trace' must be a positive integer")
    if trace > TRACE_RULES:
        raise DocumentError(f"'channel_groups' was traced with rules version {trace}; this crossdistill knows up to "
                            f"{TRACE_RULES}: upgrade it")
