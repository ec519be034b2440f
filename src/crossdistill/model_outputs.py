"""What a model returns, and which part of it holds the predictions.

A model may return one tensor, or a tuple, list or dict of them (a classifier's logits beside
auxiliary outputs or features, a segmentation model's {'out': ..., 'aux': ...}, a Hugging
Face-style output object, which is a dict). The layer solves never look at outputs. Three
things do: the evaluation (the *predictions*: the output that top-1 is scored on), the
fine-tune (every output is distilled) and the checks that compare two models (every output).

The predictions are picked by a key or an index (the `output` setting); by default the tensor
itself, a dict's 'logits' entry, else the first entry. Their shape gives the kind of task:

- ``classes``: (batch, C) logits, C ≥ 2; a label per sample, top-1 by argmax;
- ``binary``:  (batch,) or (batch, 1), one logit per sample; a 0/1 label, predicted 1 when > 0;
- ``dense``:   (batch, C, ...) logits per position (segmentation, C ≥ 2); a label per position
               (a (batch, ...) map), top-1 per position;
- ``sequence``: (batch, L, C) logits per token, classes last (token classification, a language
               model's next-token logits); a label per token, top-1 per token. Read so by default
               when the input is L token ids and the predictions are (batch, L, C);
- ``values``:  anything else (regression targets, embeddings of one channel per position):
               no labels; the report compares the student with the teacher only.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Iterator

import torch
from torch import nn

from crossdistill.errors import CrossDistillError

KINDS = ("classes", "binary", "dense", "sequence", "values")
# A label map's "no class here" (void, object borders): the value VOC and Cityscapes masks use;
# negative labels (-100, Hugging Face's ignored tokens) are not scored either.
IGNORE = 255


def scored_positions(labels: torch.Tensor) -> torch.Tensor:
    """Which per-position labels count (not IGNORE, not negative)."""
    return (labels != IGNORE) & (labels >= 0)


def flat(out: Any) -> list[torch.Tensor]:
    """Every tensor of `out`, in order (dicts in their own order, nested containers included)."""
    return list(_walk(out))


def _walk(x: Any) -> Iterator[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        yield x
    elif _is_named_tuple(x):
        yield from _walk(x._asdict())
    elif is_dataclass_instance(x):
        yield from _walk(dataclass_fields(x))
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _walk(v)
    elif isinstance(x, Mapping):
        for v in x.values():
            yield from _walk(v)


def _is_named_tuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields") and hasattr(x, "_asdict")


def is_dataclass_instance(x: Any) -> bool:
    """An output of a @dataclass (not the class itself): read by its fields, like a dict. Not a
    mapping that is also a dataclass (Hugging Face's ModelOutput): that is read as the dict it is,
    whose unset (None) fields are not entries."""
    return dataclasses.is_dataclass(x) and not isinstance(x, (type, Mapping))


def dataclass_fields(x: Any) -> dict[str, Any]:
    """A dataclass instance's fields by name, in their declared order (not copied: asdict would
    deep-copy every tensor)."""
    return {f.name: getattr(x, f.name) for f in dataclasses.fields(x)}


def describe(out: Any) -> str:
    """`out` in a few words, for messages: 'a tuple of 2 ((1, 10), (1, 64))'."""
    if isinstance(out, torch.Tensor):
        return f"a tensor {tuple(out.shape)}"
    if _is_named_tuple(out):
        parts = ", ".join(f"{k}: {_shape(v)}" for k, v in out._asdict().items())
        return f"a named tuple {type(out).__name__}({parts})"
    if isinstance(out, Mapping):
        parts = ", ".join(f"{k!r}: {_shape(v)}" for k, v in out.items())
        return f"a {type(out).__name__} {{{parts}}}"
    if is_dataclass_instance(out):
        parts = ", ".join(f"{k}: {_shape(v)}" for k, v in dataclass_fields(out).items())
        return f"a dataclass {type(out).__name__}({parts})"
    if isinstance(out, (list, tuple)):
        return f"a {type(out).__name__} of {len(out)} ({', '.join(_shape(v) for v in out)})"
    return f"a {type(out).__name__}"


def _shape(v: Any) -> str:
    return str(tuple(v.shape)) if isinstance(v, torch.Tensor) else type(v).__name__


def predictions(out: Any, output: str | None = None) -> torch.Tensor:
    """The tensor of `out` that holds the predictions: `output` names a dict key or a tuple/list
    index (given as digits); None takes the tensor itself, a dict's 'logits', else the first entry."""
    return flat(out)[position(out, output)]


def position(out: Any, output: str | None = None) -> int:
    """Where the predictions sit in `flat(out)` (the same for every batch of one model)."""
    target = _target(out, output)
    for i, t in enumerate(flat(out)):
        if t is target:
            return i
    raise CrossDistillError(f"output_key {output!r} is not a tensor of the model's outputs")  # unreachable


def _target(out: Any, output: str | None) -> Any:
    if isinstance(out, torch.Tensor):
        if output is not None:
            raise CrossDistillError(f"output_key {output!r}: the model returns one tensor; leave output_key unset")
        return out
    shown = describe(out)
    if _is_named_tuple(out) and (output is None or not str(output).lstrip("-").isdigit()):
        out = out._asdict()  # its fields by name, 'logits' first as for a dict
    elif is_dataclass_instance(out):
        out = dataclass_fields(out)
    if isinstance(out, Mapping):
        if output is None:
            key = "logits" if "logits" in out else next(iter(out), None)
        else:
            # A dict keyed by numbers (per feature level) is named by digits, as on the command line.
            key = int(output) if output not in out and str(output).lstrip("-").isdigit() else output
        if key not in out:
            raise CrossDistillError(f"output_key {output!r}: the model returns {shown}; give one of its keys")
        found = out[key]
    elif isinstance(out, (list, tuple)) and len(out):
        if output is None:
            found = out[0]
        else:
            if not str(output).lstrip("-").isdigit() or not -len(out) <= int(output) < len(out):
                raise CrossDistillError(f"output_key {output!r}: the model returns {describe(out)}; give an index "
                                        f"0 ... {len(out) - 1}")
            found = out[int(output)]
    else:
        raise CrossDistillError(f"the model returns {describe(out)}; it must return a tensor, or a tuple, list, "
                                "dict or dataclass of tensors")
    if isinstance(found, torch.Tensor):
        return found
    if isinstance(found, (list, tuple, Mapping)) or is_dataclass_instance(found):
        return _target(found, None)  # nested: its own default entry
    raise CrossDistillError(f"output_key {output!r}: that output of the model is {describe(found)}, not a tensor")


def kind_of(pred: torch.Tensor, tokens: int | None = None) -> str:
    """The kind of task a predictions tensor (with its batch dimension) belongs to (see the module);
    `tokens`: the length of a token-id input, whose (batch, L, C) predictions are per token."""
    if pred.dim() == 1 or (pred.dim() == 2 and pred.shape[1] == 1):
        return "binary"
    if tokens is not None and pred.dim() == 3 and pred.shape[1] == tokens and pred.shape[2] >= 2:
        return "sequence"
    if pred.dim() == 2:
        return "classes"
    if pred.dim() >= 3 and pred.shape[1] >= 2:
        return "dense"
    return "values"


def check_kind(pred: torch.Tensor, kind: str, name: str = "the model") -> str:
    """`kind` when predictions of this shape (batch first) can be read so, else a CrossDistillError."""
    fits = {"classes": pred.dim() == 2 and pred.shape[1] >= 2,
            "binary": pred.dim() == 1 or (pred.dim() == 2 and pred.shape[1] == 1),
            "dense": pred.dim() >= 3 and pred.shape[1] >= 2,
            "sequence": pred.dim() == 3 and pred.shape[2] >= 2,
            "values": pred.dim() >= 1}
    if kind not in fits:
        raise CrossDistillError(f"output_kind {kind!r}: choose one of {', '.join(KINDS)} (or auto)")
    if not fits[kind]:
        need = {"classes": "(batch, C) with C ≥ 2", "binary": "(batch,) or (batch, 1)",
                "dense": "(batch, C, ...) with C ≥ 2", "sequence": "(batch, L, C) with C ≥ 2",
                "values": "a batch dimension"}[kind]
        raise CrossDistillError(f"{name}: predictions of shape {tuple(pred.shape)} (for {pred.shape[0] if pred.dim() else 0} "
                                f"inputs) cannot be read as {kind}, which needs {need}")
    return kind


def n_classes(pred: torch.Tensor, kind: str) -> int | None:
    """Classes the predictions score (None for 'values')."""
    if kind == "binary":
        return 2
    if kind in ("classes", "dense"):
        return int(pred.shape[1])
    if kind == "sequence":
        return int(pred.shape[2])
    return None


def label_shape(pred: torch.Tensor, kind: str) -> tuple[int, ...] | None:
    """A label's shape (per sample) for predictions of this per-sample shape: () for one label a
    sample, the positions for 'dense', None where labels have no meaning."""
    if kind in ("classes", "binary"):
        return ()
    if kind == "dense":
        return tuple(pred.shape[2:])
    if kind == "sequence":
        return (int(pred.shape[1]),)
    return None


def predicted(pred: torch.Tensor, kind: str) -> torch.Tensor:
    """The predicted classes (argmax over the class dimension; 1 where a binary logit is > 0)."""
    if kind == "binary":
        return (pred.reshape(-1) > 0).long()  # (batch,), (batch, 1), or a squeezed single one
    if kind == "sequence":
        return pred.argmax(-1)
    return pred.argmax(1)


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Slices of `batch_size` over n samples, a last single sample joined to the batch before it:
    a model that squeezes its output (`.squeeze()` on (batch, 1) logits) would return a tensor
    without a batch dimension for it (and BatchNorm refuses one sample in training mode)."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [slice(a, b) for a, b in zip(starts, starts[1:] + [n])]


def per_sample(t: torch.Tensor | None, batch: int) -> bool:
    """Whether an output has one row per input (a scalar such as an auxiliary loss has not)."""
    return t is not None and t.dim() > 0 and t.shape[0] == batch


@torch.no_grad()
def batched(model: nn.Module, images: torch.Tensor, batch_size: int) -> list[torch.Tensor | None]:
    """Every output tensor of `model` on all images, `batch_size` at a time (concatenated along
    the batch), in the model's current mode; None in the place of an output that is not one row
    per input (a scalar loss, a shared constant)."""
    parts = [(flat(model(images[s])), s.stop - s.start) for s in batch_slices(images.shape[0], batch_size)]
    outs: list[torch.Tensor | None] = []
    for k in range(len(parts[0][0])):
        if all(per_sample(p[k], n) for p, n in parts):
            outs.append(torch.cat([p[k] for p, _ in parts]))
        else:
            outs.append(None)
    return outs
